"""The plain-PyTorch VincieMMDiT computes what the Megatron MMDiT computes (fp32, CPU, one process),
and imports no Megatron-Core."""
import subprocess
import sys

import pytest
import torch

from convert_helpers import fixed_batch, randomize_, tiny_dict
from vincie_mcore.config import build
from vincie_mcore.hf.modeling import VincieMMDiT

TOL = 1e-5


def _megatron(d):
    from vincie_mcore.model import MMDiTConfig, build_model
    torch.manual_seed(0)
    m = build_model(build(MMDiTConfig, d, "model"), device="cpu")
    randomize_(m)
    return m.eval()


@pytest.mark.parametrize("over,mask", [
    ({}, "block_causal"),
    # the demo's options (docs: configs/experiment/demo.yaml) and the DiT-style per-layer adaLN
    (dict(text_adaln=True, image_abs_pos_grid=4, softmax_scale=0.35), "full"),
    (dict(adaln="per_layer", mm_layers=1), "block_causal"),
])
def test_plain_model_matches_megatron(megatron_cpu, over, mask):
    d = tiny_dict(**over)
    ref = _megatron(d)
    plain = VincieMMDiT(**d)
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("_extra_state")}
    plain.load_state_dict(sd, strict=True)                  # same names, same shapes: nothing left over
    batch, x_t, _ = fixed_batch(mask)
    with torch.no_grad():
        want, got = ref(x_t, batch), plain(x_t, batch)
    assert want.abs().max() > 0.1                           # a non-trivial output
    err = float((got - want).abs().max() / want.abs().max())
    assert err <= TOL, f"plain vs Megatron: max rel diff {err:.3g}"


def test_unimplemented_config_is_refused():
    with pytest.raises(ValueError, match=r"^model\.moe_experts: unknown key"):
        VincieMMDiT(**tiny_dict(moe_experts=8))


def test_no_megatron_import():
    code = ("import sys, vincie_mcore.hf.modeling, vincie_mcore.hf.pipeline; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('megatron', 'transformer_engine')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_pipeline_edits_turn_after_turn(megatron_cpu, tmp_path):
    """An export with pipeline settings edits 2 turns via infer/editor.py; a seed fixes the result."""
    import numpy as np
    from omegaconf import OmegaConf

    from vincie_mcore.config import load_config
    from vincie_mcore.hf import VincieEditPipeline
    from vincie_mcore.hf.pipeline import pipeline_section

    d = tiny_dict()
    model = VincieMMDiT(**d)
    randomize_(model)
    cfg = load_config(["experiment=demo", "model.image_abs_pos_grid=0", "model.text_adaln=false",
                       "model.softmax_scale=null"])
    model.save_pretrained(tmp_path, extra={"pipeline": pipeline_section(cfg)})
    pipe = VincieEditPipeline.from_pretrained(tmp_path)
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    out = pipe(image, ["add a red square", "make it blue"], steps=2, guidance=2.0, seed=5)
    again = pipe(image, ["add a red square", "make it blue"], steps=2, guidance=2.0, seed=5)
    assert len(out) == 2 and out[0].shape == (16, 16, 3) and out[0].dtype == np.uint8
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    assert not np.array_equal(out[0], image)
    assert OmegaConf.to_container(cfg.sampler)["steps"] == 20


def _random_export(folder, *overrides):
    """A random tiny model exported with the demo's pipeline settings (+ overrides) -> its pipeline."""
    from vincie_mcore.config import load_config
    from vincie_mcore.hf import VincieEditPipeline
    from vincie_mcore.hf.pipeline import pipeline_section

    model = VincieMMDiT(**tiny_dict())
    randomize_(model)
    cfg = load_config(["experiment=demo", "model.image_abs_pos_grid=0", "model.text_adaln=false",
                       "model.softmax_scale=null", *overrides])
    model.save_pretrained(folder, extra={"pipeline": pipeline_section(cfg)})
    return VincieEditPipeline.from_pretrained(folder)


def test_pipeline_draws_from_captions(megatron_cpu, tmp_path):
    """``text_to_image``: several captions in one batch give what each gives alone with its seed; the
    default seed is the sampler's for every caption; the image can then be edited. ``text_to_video``: a clip."""
    import numpy as np

    pipe = _random_export(tmp_path, "data.recipe.t2i_prob=0.5")
    caps = ["a large red square at the top left", "an empty scene"]
    both = pipe.text_to_image(caps, (16, 24), seeds=[3, 4], steps=2)
    assert [im.shape for im in both] == [(16, 24, 3)] * 2 and both[0].dtype == np.uint8
    for c, s, im in zip(caps, [3, 4], both):
        (alone,) = pipe.text_to_image(c, (16, 24), seeds=[s], steps=2)
        assert np.abs(alone.astype(int) - im.astype(int)).max() <= 1
    same = pipe.text_to_image(caps, (16, 24), steps=2, seed=3)
    assert np.abs(same[0].astype(int) - both[0].astype(int)).max() <= 1
    assert len(pipe(both[0], ["make the red square blue"], steps=2)) == 1
    # text-to-video: a clip of one frame more than texts, the sampler's seed by default, as the editor draws it
    texts = ["make the red square blue", "remove the blue square"]
    clip = pipe.text_to_video(caps[0], texts, (16, 24), steps=2)
    assert [im.shape for im in clip] == [(16, 24, 3)] * 3
    (direct,) = pipe.editor(steps=2).text_to_video([caps[0]], [texts], (16, 24), seeds=[pipe.sampler.seed])
    assert all(np.array_equal(a, b) for a, b in zip(clip, direct))


def test_pipeline_edits_several_images_at_once(megatron_cpu, tmp_path):
    """A list of images with a prompt list each (2 and 3 turns, two sizes): one batch per turn, each image's
    results those of a one-image call with the same seed; mismatched lists refused in one line."""
    import numpy as np

    pipe = _random_export(tmp_path, "data.pack.pad_multiple=4")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)]
    prompts = [["add a red square", "make it blue"], ["remove the tree", "zoom out", "brighten it"]]
    got = pipe(images, prompts, steps=2, guidance=2.0, seed=5)
    assert [len(g) for g in got] == [2, 3]
    for im, ps, outs in zip(images, prompts, got):
        alone = pipe(im, ps, steps=2, guidance=2.0, seed=5)
        assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(alone, outs))
    with pytest.raises(ValueError, match=r"^prompts: expected one list of prompts per image \(2 images\), got 1$"):
        pipe(images, [["x"]])
    with pytest.raises(ValueError, match=r"^prompts: expected a non-empty list of strings, one per turn \(for each image\)$"):
        pipe(images, [["x"], "y"])
