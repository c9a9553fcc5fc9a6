"""The 3B/7B presets against what the released models and the paper fix (issue 17, part 1).

- A 20-frame session (the paper's maximum) packs and runs forward under both masks with the
  presets' turn table: with 16 rows its text turns (18 and more) raised in the text embedder.
- The camera tag comes before the instruction (paper Table 9 and D.4; the release's CAMERA_PREFIX).
- The FFN width is the release's int(2 * 4 * hidden / 3) rounded up to a multiple of 256.
- Every README / slurm example that names a text encoder names one of the preset's width.
"""
import re
from pathlib import Path

import pytest
import torch
import yaml

from vincie_mcore.config import build
from vincie_mcore.data.packing import EncodedSession, PackConfig, pack
from vincie_mcore.data.recipe import RecipeConfig, SessionPlan, build_sample, camera_prompt

ROOT = Path(__file__).resolve().parents[2]
PRESETS = {n: yaml.safe_load((ROOT / "configs" / "model" / f"{n}.yaml").read_text()) for n in ("3b", "7b")}


class WordText:
    dim = 32

    def encode(self, texts):
        return [torch.randn(len(t.split()), self.dim) for t in texts]


@pytest.mark.parametrize("mask_type", ["full", "block_causal"])
@pytest.mark.parametrize("preset", ["3b", "7b"])
def test_a_20_frame_session_runs_with_the_preset_turn_table(preset, mask_type, megatron_cpu):
    from vincie_mcore.model import MMDiTConfig, build_model

    K = 20
    g = torch.Generator().manual_seed(0)
    sess = EncodedSession(frames=torch.randn(K, 3, 8, 8, generator=g), texts=[f"edit {j}" for j in range(K - 1)],
                          cameras=["None"] * (K - 1), roe_src=torch.randn(K - 1, 3, 8, 8, generator=g),
                          roe_tgt=torch.randn(K - 1, 3, 8, 8, generator=g))
    cfg = RecipeConfig(mask_type=mask_type)
    plan = SessionPlan(num_turns=K - 1, use_roe=True, task="nip", target_turn=K - 2)   # the whole session
    sample = build_sample(sess.texts, sess.cameras, plan, cfg)
    batch = pack([(sample, sess)], WordText().encode, PackConfig(patch_size=8), mask_type)
    assert int(batch.txt_turn.max()) >= 18                   # what a 16-row table could not hold
    model = build_model(build(MMDiTConfig, dict(
        hidden_size=32, num_layers=2, mm_layers=1, num_heads=2, ffn_hidden_size=64, text_dim=WordText.dim,
        patch_dim=192, max_turns=PRESETS[preset]["max_turns"], rope_axes_dim=[4, 6, 6], attention_backend="torch"), "model"),
        device="cpu").eval()
    with torch.no_grad():
        out = model(torch.randn(batch.img_x0.shape), batch)
    assert out.shape == batch.img_x0.shape and torch.isfinite(out).all()


def test_camera_tag_comes_first():
    assert camera_prompt("add a hat", "pan left") == "[###CAMERA: pan left###] add a hat"
    assert camera_prompt("add a hat", None) == "[###CAMERA: None###] add a hat"


@pytest.mark.parametrize("preset", ["3b", "7b"])
def test_ffn_width_is_the_release_s_rule(preset):
    d = PRESETS[preset]["hidden_size"]
    want = -(-int(2 * 4 * d / 3) // 256) * 256
    assert PRESETS[preset]["ffn_hidden_size"] == want == {"3b": 6912, "7b": 9728}[preset]


# Published encoder widths (model cards): what a text_encoder.path named after one of them returns.
ENCODER_WIDTH = {"flan-t5-small": 512, "flan-t5-base": 768, "flan-t5-large": 1024, "flan-t5-xl": 2048,
                 "flan-t5-xxl": 4096, "flan-ul2": 4096}


def _examples():
    for f in [ROOT / "README.md", *(ROOT / "slurm").glob("*"), *(ROOT / "docs").glob("*.md")]:
        for line in f.read_text().splitlines():
            m = re.search(r"data\.text_encoder\.path=\S*?/(flan-[\w-]+)", line)
            if m:
                preset = "7b" if ("7b" in line) else ("3b" if "3b" in line else None)
                yield f.name, line.strip(), m.group(1), preset


def test_every_example_names_an_encoder_of_the_preset_s_width():
    found = list(_examples())
    assert found                                              # the README has such examples
    for name, line, encoder, preset in found:
        assert encoder in ENCODER_WIDTH, (name, line)
        if preset:
            assert ENCODER_WIDTH[encoder] == PRESETS[preset]["text_dim"], (name, line)
