"""Two methods' MSE-Bench result folders, as `vincie-benchmark mse --generated` writes them, judged by a local
server on the OpenAI protocol whose scores depend on the prompt ("BAD": 3/9, else 8/7): the human
evaluation's tests read them (tests/eval/test_human_eval.py, tests/app/test_rate_page.py)."""
from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))      # the shared fake server
from fake_vlm import MODEL, FakeVLM  # noqa: E402

PROMPTS = {"a": ["GOOD add a hat", "GOOD make it red", "GOOD add a cat", "GOOD zoom in", "GOOD crop it"],
           "b": ["GOOD one", "BAD two", "GOOD three", "GOOD four", "GOOD five"],
           "c": ["BAD first", "GOOD second", "GOOD third", "GOOD fourth", "GOOD fifth"]}


def png(seed, h=40, w=56) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def responder(text, images, attempt):
    last = re.findall(r"Turn \d+: '([^']*)'", text)[-1]
    pf, c = (3, 9) if last.startswith("BAD") else (8, 7)
    return 200, json.dumps({"reason": f"judged {last}", "prompt_following": pf, "consistency": c})


SIZES = {"ours": (24, 24), "other": (32, 40)}      # (H, W) of each method's results: other sizes, other aspects


def write_study(root: Path) -> Path:
    """The benchmark (parquet, the release's layout) and two methods, "ours" and "other", each judged by
    `vincie-benchmark mse --generated`; the second's images then moved into its folder as generated.parquet
    (the layout of a run edited by vincie-benchmark itself). -> root"""
    from vincie_tools.benchmark import main

    pq.write_table(pa.table({"index": list(PROMPTS),
                             "image": [{"bytes": png(i), "path": f"{k}.png"} for i, k in enumerate(PROMPTS)],
                             "context": list(PROMPTS.values())}), root / "bench.parquet")
    server = FakeVLM(delay=0.0, responder=responder)
    conf = root / "judge.yaml"
    conf.write_text(yaml.safe_dump({"base_urls": [server.url], "model": MODEL, "backoff_s": 0.01}))
    try:
        for m, base in (("ours", 100), ("other", 200)):
            gen = {"index": list(PROMPTS)}
            for t in range(1, 6):
                gen[f"turn_{t}_image"] = [{"bytes": png(base + 10 * t + i, *SIZES[m]), "path": None}
                                          for i in range(len(PROMPTS))]
            pq.write_table(pa.table(gen), root / f"{m}_gen.parquet")
            assert main(["mse", "--data", str(root / "bench.parquet"), "--generated", str(root / f"{m}_gen.parquet"),
                         "--judge", str(conf), "--out", str(root / m), "--quiet"]) == 0
    finally:
        server.close()
    (root / "other_gen.parquet").rename(root / "other" / "generated.parquet")
    return root


def methods(root: Path) -> dict:
    return {"ours": root / "ours", "other": root / "other"}


def frame(seed, h=24, w=32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_annotated_store(root: Path, sessions: int = 12) -> Path:
    """A session store of ``sessions`` sessions of 2 to 5 frames (session i's frame k: ``frame(100 * i + k)``),
    transition j's text ``"session {i}: change {j}"``; camera "pan left" on session 0's transitions."""
    from vincie_mcore.data.store import RawSession, SessionWriter

    def enc(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")
        return buf.getvalue()
    mask = enc(np.zeros((24, 32), np.uint8))
    with SessionWriter(root, shard_size=5) as w:
        for i in range(sessions):
            k = 2 + i % 4
            w.add(RawSession(f"v{i}", [enc(frame(100 * i + f)) for f in range(k)], [mask] * (k - 1), [mask] * (k - 1),
                             [f"session {i}: change {j}" for j in range(k - 1)],
                             ["pan left" if i == 0 else "None"] * (k - 1)))
    return root


def _tag(url: str) -> str:
    import hashlib
    return hashlib.sha256(url.encode()).hexdigest()[:8]


def pair_reply(text, images, attempt):
    """A VLM's reply that names each frame by the hash of the image it was sent (``frame_tag``), so a test can
    tell which pair a stored text and its notes came from; the scene's description carries markup that a
    page must show as text."""
    a, b = (_tag(u) for u in images)
    return 200, json.dumps({"frame1_caption": {"scene": "a <b>grid</b> of cells", "obj1": f"shape {a}"},
                            "frame2_caption": {"scene": "a <b>grid</b> of cells", "obj1": f"shape {b}",
                                               "obj2": "a new square"},
                            "character_change": "none", "object_change": {"obj1": "none", "obj2": "appears"},
                            "global_change": "none", "camera_change": "static", "other_change": "none",
                            "summary_change": f"change {a} into {b}"})


def frame_tag(frame_png: bytes) -> str:
    """The tag ``pair_reply`` gave a stored frame: the hash of the data URL the annotator sent for it."""
    from vincie_mcore.data.chat_client import data_url, encode_jpeg
    from vincie_mcore.data.vlm import VLMConfig

    cfg = VLMConfig(base_urls=("http://x/v1",), model=MODEL)
    rgb = np.asarray(Image.open(io.BytesIO(frame_png)).convert("RGB"))
    return _tag(data_url(encode_jpeg(rgb, cfg.image_max_side, cfg.jpeg_quality))["image_url"]["url"])


def write_vlm_store(root: Path, videos: int = 4) -> Path:
    """A session store built from synthetic videos as a real corpus is: transition texts (and notes) from a
    VLM (``pair_reply`` on a local server), RoE maps from the world's exact segmenter."""
    from vincie_mcore.config import build
    from vincie_mcore.data.build import build_sessions
    from vincie_mcore.data.video import write_synthetic_corpus
    from vincie_mcore.data.vlm import VLMAnnotator, VLMConfig
    from vincie_mcore.data.world import demo_config

    server = FakeVLM(delay=0.0, responder=pair_reply)
    try:
        write_synthetic_corpus(root / "videos", videos, demo_config(), seed=0)
        ann = VLMAnnotator(build(VLMConfig, {"base_urls": [server.url], "model": MODEL, "max_retries": 0},
                                 "annotator"), env={})
        s = build_sessions(root / "videos", root / "sessions", annotator=ann, progress=False)
        assert s["written"] == videos and not s["failed"], s
    finally:
        server.close()
    return root / "sessions"
