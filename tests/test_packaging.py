"""The install a fresh machine gets: our import names all start with ``vincie``, nothing of ours
shadows a generic name (Hugging Face's ``kernels``, which new ``transformers`` imports), and every
command-line tool is a console script.

Each check runs in a fresh interpreter from the repo root, the way ``make demo`` and a user's
``python -c`` run, so the repo root is on ``sys.path`` as it is for them.
"""
import json
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_wheel_s_top_level_names_all_start_with_vincie(tmp_path):
    """What a non-editable install puts into site-packages: build the wheel and list its top level."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("vincie_mcore-*.whl")
    with zipfile.ZipFile(wheel) as z:
        top = {n.split("/", 1)[0] for n in z.namelist()}
        modules = [n for n in z.namelist() if n.endswith(".py")]
    top = {n for n in top if not n.endswith((".dist-info", ".data"))}
    assert top == {"vincie_mcore", "vincie_kernels", "vincie_tools"}, top
    # the kernels and the tools travel inside their vincie_ packages
    assert "vincie_kernels/masked_attention.py" in modules and "vincie_tools/train.py" in modules


def test_kernels_from_the_repo_root_is_hugging_face_s_and_t5_loads(tmp_path):
    """`import kernels` from the repo root must not find our kernels/ folder (it once did, and
    transformers died with "cannot import name 'CUDAProperties' from 'kernels'")."""
    try:
        metadata.version("kernels")                             # the PyPI distribution, not a folder of ours
    except metadata.PackageNotFoundError:
        pytest.fail("Hugging Face's `kernels` is not installed: it is in the test extra and the lock")
    r = _py("import json, kernels; print(json.dumps([kernels.__file__, getattr(kernels, '__version__', None)]))")
    assert r.returncode == 0, r.stderr[-2000:]
    path, _ = json.loads(r.stdout.strip().splitlines()[-1])
    assert path and "site-packages" in path and not path.startswith(str(ROOT / "kernels")), path
    # T5 through transformers, from a local folder, from the repo root (the demo's text-encoder path)
    code = f"""
from transformers import T5Config, T5EncoderModel
import torch
cfg = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
T5EncoderModel(cfg).save_pretrained({str(tmp_path)!r})
m = T5EncoderModel.from_pretrained({str(tmp_path)!r})
print(tuple(m(torch.tensor([[1, 2, 3]])).last_hidden_state.shape))
"""
    r = _py(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "(1, 3, 16)"


def test_generic_names_from_the_repo_root_are_not_ours():
    r = _py("import importlib.util as u, json\n"
            "out = {}\n"
            "for n in ('kernels', 'tools'):\n"
            "    s = u.find_spec(n)\n"
            "    out[n] = None if s is None else [s.origin, list(s.submodule_search_locations or [])]\n"
            "print(json.dumps(out))")
    assert r.returncode == 0, r.stderr[-2000:]
    found = json.loads(r.stdout.strip().splitlines()[-1])
    for name, spec in found.items():
        if spec is None:
            continue
        origin, _ = spec
        # a regular package or module of ours would have an origin inside the repo; an empty namespace
        # (a folder with no __init__.py and nothing importable) has none and loses to any real package
        ours = [ROOT / d for d in ("kernels", "tools", "tests", "vincie_mcore")]
        assert origin is None or not any(Path(origin).is_relative_to(d) for d in ours), (name, spec)
    assert not (ROOT / "kernels" / "__init__.py").exists() and not (ROOT / "tools" / "__init__.py").exists()


def test_every_tool_is_a_console_script_that_answers_help():
    scripts = PYPROJECT["project"]["scripts"]
    tools = sorted(p.stem for p in (ROOT / "tools" / "vincie_tools").glob("*.py") if p.stem != "__init__")
    declared = {target.split(":")[0].rsplit(".", 1)[1] for target in scripts.values()}
    assert set(tools) == declared, set(tools) ^ declared
    assert all(name.startswith("vincie-") for name in scripts)
    bindir = Path(sys.executable).parent
    for name in ("vincie-train", "vincie-plan-parallel"):
        r = subprocess.run([str(bindir / name), "--help"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "usage" in (r.stdout + r.stderr).lower(), (name, r.stderr[-1000:])

