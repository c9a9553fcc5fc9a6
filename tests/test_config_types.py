"""One typed config: every section is built by ``vincie_mcore.config.build`` (types checked by pydantic,
strict), errors are one line naming the full key, precision is decided once, warmup is never rewritten."""
from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vincie_mcore.build import build_run_config, make_model, make_trainer
from vincie_mcore.config import ConfigError, build, load_config
from vincie_mcore.data.world import Obj, Scene
from vincie_mcore.model.fp8 import FP8Config
from vincie_mcore.train.trainer import TrainConfig, precision

PACKAGE = Path(__file__).resolve().parent.parent / "vincie_mcore"
# data_configs' names -> their config keys
DATA_KEYS = {"world": "data.world", "corpus": "data.corpus", "recipe": "data.recipe", "pack": "data.pack",
             "text": "data.text_encoder", "image": "data.image_encoder"}
WRONG = {int: "abc", float: "abc", str: 3, bool: 3}


@pytest.fixture(scope="module")
def demo():
    return OmegaConf.to_container(load_config(["experiment=demo"]), resolve=True)


def _sections(run):
    yield from (("model", run.model), ("train", run.train), ("train.fp8", run.train.fp8), ("flow", run.flow),
                ("sampler", run.sampler))
    yield from ((DATA_KEYS[k], v) for k, v in run.data.items())


def _set(d: dict, key: str, value):
    *path, last = key.split(".")
    for p in path:
        d = d[p]
    d[last] = value


def _error(d: dict) -> str:
    with pytest.raises(ConfigError) as e:
        build_run_config(OmegaConf.create(d))
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_a_wrong_type_in_every_field_of_every_section_is_one_line_naming_the_key(demo):
    run = build_run_config(OmegaConf.create(demo))
    checked = set()
    for section, obj in _sections(run):
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            tp = hints[f.name]
            if tp not in WRONG:
                continue
            d = OmegaConf.to_container(OmegaConf.create(demo))
            _set(d, f"{section}.{f.name}", WRONG[tp])
            want = f"{section}.{f.name}: expected {tp.__name__}, got {WRONG[tp]!r}"
            assert _error(d) == want
            checked.add(section)
    assert checked == {"model", "train", "train.fp8", "flow", "sampler", *DATA_KEYS.values()}


@pytest.mark.parametrize("override,message", [
    ("train.steps=true", "train.steps: expected int, got True"),                  # no bool for an int
    ("model.num_layers=abc", "model.num_layers: expected int, got 'abc'"),
    ("train.fp8.backend=bogus", "train.fp8.backend: expected Literal['te', 'torchao'], got 'bogus'"),
    ("train.fp8.recipe=bogus", "train.fp8.recipe: must be one of ('delayed', 'current'), got 'bogus'"),
    ("model.num_layers=0", "model.num_layers: expected a positive int, got 0"),   # __post_init__, renamed
    ("model.rope_axes_dim=[8,12]", "model.rope_axes_dim: expected tuple[int, int, int] | None, got (8, 12)"),
    ("data.world.num_objects=[1,x]", "data.world.num_objects: must be [min, max] ints with 0 <= min <= max, "
                                     "got (1, 'x')"),
    ("data.pack.rope_mode=text_then_image", "data.pack.rope_mode: text_then_image needs data.recipe.mask_type=full, "
                                            "got 'block_causal' (an image's position counts its session's later text)"),
    ("+train.fp8.recipie=delayed", "train.fp8.recipie: unknown key (known: amax_compute_algo, amax_history_len, "
                                   "backend, enabled, fp8_format, margin, recipe)"),
])
def test_overrides_are_named_with_the_full_key(override, message):
    from omegaconf import open_dict
    cfg = load_config(["experiment=demo"] if override.startswith("+") else ["experiment=demo", override])
    if override.startswith("+"):                 # Hydra's struct mode refuses unknown keys itself: set it past it
        key, value = override[1:].split("=")
        with open_dict(cfg):
            OmegaConf.update(cfg, key, value)
    with pytest.raises(ConfigError) as e:
        build_run_config(cfg)
    assert str(e.value) == message


def test_lists_become_tuples_and_mappings_dataclasses():
    t = build(TrainConfig, {"steps": 4, "lr": 1, "betas": [0.5, 0.75], "fp8": {"margin": 0}}, "train")
    assert t.betas == (0.5, 0.75) and isinstance(t.fp8, FP8Config) and t.lr == 1.0
    s = Scene((Obj(3, "square", "red", "small", 1, 2), Obj(4, "circle", "blue", "large", 0, 0)), (1, -1))
    assert build(Scene, s.to_dict(), "scene") == s
    with pytest.raises(ConfigError, match=r"^scene\.objects\.1\.row: expected int, got '0'$"):
        d = s.to_dict()
        d["objects"][1]["row"] = "0"
        build(Scene, d, "scene")


def test_no_bespoke_from_dict_in_the_package():
    """Every config dataclass is made by config.build: no class in vincie_mcore defines its own from_dict."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                found += [f"{path.relative_to(PACKAGE)}:{node.name}.{f.name}" for f in node.body
                          if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name == "from_dict"]
    assert not found, found


def test_precision_is_decided_once(demo, megatron_cpu):
    cuda = torch.cuda.is_available()
    assert precision("fp32") == torch.float32
    assert precision("auto") == (torch.bfloat16 if cuda else torch.float32)
    assert TrainConfig(steps=2).params_dtype == precision("auto")
    with pytest.raises(ConfigError, match=r"^train\.dtype: must be one of \('auto', 'fp32', 'bf16'\), got 'fp16'$"):
        precision("fp16")
    d = OmegaConf.to_container(OmegaConf.create(demo))
    d["model"].update(num_layers=1, mm_layers=1, hidden_size=32, num_heads=2, rope_axes_dim=None, ffn_hidden_size=None)
    d["train"]["dtype"] = "fp32"
    model = make_model(OmegaConf.create(d))
    assert {p.dtype for p in model.parameters()} == {precision("fp32")}


def test_make_trainer_does_not_rewrite_warmup(demo, tmp_path):
    cfg = OmegaConf.create(demo)                 # the demo: warmup 20
    with pytest.raises(ConfigError, match=r"^train\.warmup: must be < steps \(20\), got 20$"):
        make_trainer(cfg, None, None, tmp_path, steps=20)


def test_a_runs_overrides_must_name_its_keys(tmp_path):
    """``run_config`` (vincie-evaluate, -edit, -benchmark --set): a key the saved config lacks was merged
    silently (``eval.trns=2`` changed nothing); now it must be a key of the saved or of the default config
    (newer than the run), or be written ``+key=value``."""
    from vincie_mcore.build import run_config

    cfg = OmegaConf.create(OmegaConf.to_container(load_config(["experiment=demo"])))
    del cfg.sampler["release_io"]                          # a run saved before the key existed
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    assert run_config(tmp_path, ["eval.turns=2"]).eval.turns == 2
    assert run_config(tmp_path, ["sampler.release_io=true"]).sampler.release_io is True
    assert run_config(tmp_path, ["+eval.note=x"]).eval.note == "x"
    assert run_config(tmp_path, ["train.ckpt_dir=/elsewhere"]).train.ckpt_dir == "/elsewhere"   # a field no YAML sets
    with pytest.raises(ValueError, match=r"^eval.trns: not a key of .*config.yaml nor of the default config "
                                         r"\(a typo\? \+eval.trns=\.\.\. adds it anyway\)$"):
        run_config(tmp_path, ["eval.trns=2"])
    with pytest.raises(ValueError, match=r"^override 'eval.turns': expected key=value$"):
        run_config(tmp_path, ["eval.turns"])
