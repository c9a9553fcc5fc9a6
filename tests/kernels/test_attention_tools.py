"""The attention tools on a machine without CUDA: a "skipped" JSON record, written and printed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA path only")
@pytest.mark.parametrize("tool", ["bench_attention", "tune_attention"])
def test_without_cuda_the_tool_records_why_it_skipped(tool, tmp_path):
    out = tmp_path / "sub" / f"{tool}.json"
    r = subprocess.run([str(Path(sys.executable).parent / f"vincie-{tool.replace('_', '-')}"), "--out", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    written = json.loads(out.read_text())
    assert written == json.loads(r.stdout.strip().splitlines()[-1])
    assert written["tool"] == tool and written["skipped"].startswith("no CUDA device")
