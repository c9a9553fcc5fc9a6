"""Trainer hooks: a counting hook sees every step, every complete save and the end of the run; the
evaluation hook (``train.eval_every``) writes eval_<step>.json on a tiny run, and its last one equals
what ``vincie-evaluate`` gives on the run folder afterwards (config + last checkpoint, loaded anew)."""
import json
import os
import warnings

import pytest
from _train_tiny import TinyStream, build_tiny, tiny_loss

from vincie_mcore.train import checkpoint as ckpt
from vincie_mcore.train.hooks import EvalHook, Hook
from vincie_mcore.train.trainer import Trainer, TrainConfig

warnings.filterwarnings("ignore")


class Count(Hook):
    def __init__(self):
        self.steps, self.saves, self.ends = [], [], []

    def on_step_end(self, trainer, metrics):
        self.steps.append((trainer.step, metrics["loss"]))

    def on_save(self, trainer, path):
        self.saves.append((trainer.step, path, os.path.isdir(path)))

    def on_train_end(self, trainer):
        self.ends.append(trainer.step)


class EndOnly:                         # a plain object with one of the events is a hook too
    def __init__(self):
        self.ends = 0

    def on_train_end(self, trainer):
        self.ends += 1


def test_hooks_see_every_step_save_and_end(dist1, tmp_path):
    cfg = TrainConfig(steps=5, lr=1e-2, save_every=2, log_every=100, ckpt_dir=str(tmp_path), progress=False)
    count, end = Count(), EndOnly()
    t = Trainer(cfg, build_tiny(seed=1), tiny_loss, TinyStream(), hooks=[count, end])
    losses = t.train(until=3)                        # each train() call ends with its save, then the hook
    assert count.ends == [3] and end.ends == 1
    losses += t.train()
    assert count.steps == list(zip(range(1, 6), losses))
    assert count.saves == [(s, ckpt.step_dir(str(tmp_path), s), True) for s in (2, 3, 4, 5)]
    assert count.ends == [3, 5] and end.ends == 2


def test_eval_hook_every_n_steps_matches_vincie_evaluate(dist1, tmp_path):
    from vincie_mcore.build import build_training, data_configs, load_run, make_editor
    from vincie_mcore.data.corpus import decode_corpus
    from vincie_mcore.eval.synthetic import evaluate
    from vincie_mcore.eval.synthetic import mean_cell_error
    from vincie_mcore.config import load_config
    from vincie_mcore.data.corpus import synthesize_store
    from vincie_tools.evaluate import main as evaluate_main

    with pytest.raises(ValueError, match="EvalHook: every must be an int >= 1, got 0"):
        EvalHook(0, None, tmp_path)
    run = tmp_path / "run"
    over = ["experiment=demo", f"run_dir={run}", "train.steps=2", "train.warmup=0", "train.progress=false",
            "train.log_every=1", "train.eval_every=1", "model.num_layers=2", "model.mm_layers=1",
            "data.corpus.workers=1", "data.pack.token_budget=400", "eval.turns=1", "sampler.steps=2",
            "data.recipe.t2i_prob=0.3", "data.recipe.t2v_prob=0.3"]   # T2I and T2V samples too: the store's captions
    dc = data_configs(load_config(over))
    c = dc["corpus"]
    store = synthesize_store(tmp_path / "store", 6, dc["world"], c, "fixed", 3)
    cfg = load_config(over + [f"data.corpus.store={store}", f"train.eval_store={store}"])
    _, trainer = build_training(cfg)
    trainer.train()
    assert trainer.model.training                    # put back in training mode after each evaluation
    hook = trainer.hooks[0]
    assert [r["step"] for r in hook.results] == [1, 2]
    files = sorted(p.name for p in run.glob("eval_*.json"))
    assert files == ["eval_1.json", "eval_2.json"]
    first, last = (json.loads((run / f).read_text()) for f in files)
    assert last == hook.results[-1] and last["sessions"] > 0
    assert first["cell_error"] != last["cell_error"]          # each evaluation sees the weights of its step

    # the same evaluation by hand on the run folder, loaded anew (its config + the step-2 checkpoint)
    cfg2, model, text, image = load_run(run)
    results, _, _ = evaluate(make_editor(cfg2, model, text, image), decode_corpus(store, dc["corpus"]),
                             dc["world"], turns=1, progress=False)
    assert [mean_cell_error(r) for r in results] == pytest.approx(last["cell_error"], rel=1e-5)

    out = tmp_path / "cli.json"
    assert evaluate_main(["--run", str(run), "--store", str(store), "--out", str(out)]) == 0
    cli = json.loads(out.read_text())
    for k in ("turn_success", "baseline_success", "success_by_edit", "sessions"):
        assert cli[k] == last[k], (k, cli[k], last[k])
    # text-to-image, judged in the hook as the CLI's --task t2i judges it (a seed per session)
    assert last["t2i_sessions"] == 6 and last["t2i_cell_error"] is not None     # every held-out first frame
    assert evaluate_main(["--run", str(run), "--store", str(store), "--out", str(out), "--task", "t2i"]) == 0
    t2i = json.loads(out.read_text())
    assert t2i["task"] == "t2i" and len(t2i["session_success"]) == t2i["t2i_sessions"]
    for k in ("t2i_success", "t2i_objects_right", "t2i_baseline_success", "t2i_sessions"):
        assert t2i[k] == last[k], (k, t2i[k], last[k])
    assert t2i["t2i_cell_error"] == pytest.approx(last["t2i_cell_error"], rel=1e-5)
    # text-to-video likewise: every held-out session's first two frames as one clip
    assert last["t2v_sessions"] == 6 and len(last["t2v_frame_success"]) == 2
    assert evaluate_main(["--run", str(run), "--store", str(store), "--out", str(out), "--task", "t2v"]) == 0
    t2v = json.loads(out.read_text())
    assert t2v["task"] == "t2v" and [len(x) for x in t2v["session_success"]] == [6, 6]
    for k in ("t2v_frame_success", "t2v_clip_success", "t2v_still_baseline", "t2v_sessions"):
        assert t2v[k] == last[k], (k, t2v[k], last[k])
    assert t2v["t2v_cell_error"] == pytest.approx(last["t2v_cell_error"], rel=1e-5)


def test_magicbrush_eval_hook_matches_the_benchmark(dist1, tmp_path):
    """eval.magicbrush.data set: every evaluation edits and scores MagicBrush sessions (tiny CLIP/DINO, a
    release-layout folder; two sessions per model pass), and the last one equals the benchmark's own run
    (one session per pass) on the saved checkpoint."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
    from test_magicbrush import _write_release, _write_set
    from tiny_clip_dino import save_tiny_clip, save_tiny_dino

    from vincie_mcore.build import build_training, load_run, make_editor
    from vincie_mcore.config import ConfigError, load_config
    from vincie_mcore.eval.magicbrush import MagicBrushConfig, MagicBrushMetrics, read_magicbrush, run_magicbrush

    _write_set(tmp_path / "mb")
    _write_release(tmp_path / "dev", tmp_path / "mb")
    clip, dino = save_tiny_clip(tmp_path / "clip"), save_tiny_dino(tmp_path / "dino")
    run = tmp_path / "run"
    over = ["experiment=demo", f"run_dir={run}", "train.steps=2", "train.warmup=0", "train.progress=false",
            "train.log_every=1", "train.eval_every=1", "model.num_layers=2", "model.mm_layers=1",
            "data.corpus.videos=8", "data.corpus.heldout_videos=2", "data.corpus.workers=1",
            "data.pack.token_budget=400", "sampler.steps=2", f"eval.magicbrush.data={tmp_path / 'dev'}",
            f"eval.magicbrush.metrics.clip_path={clip}", f"eval.magicbrush.metrics.dino_path={dino}",
            "eval.magicbrush.metrics.edit_size=24", "eval.magicbrush.sessions=2", "eval.magicbrush.batch=2"]
    with pytest.raises(ConfigError, match=r"^eval.magicbrush: magicbrush.dino_path: no local model folder"):
        build_training(load_config(over + ["eval.magicbrush.metrics.dino_path=nowhere"]))
    from vincie_mcore.build import build_run_config
    with pytest.raises(ConfigError, match=r"^eval.magicbrush.metrics.batch_size: must be >= 1, got 0$"):
        build_run_config(load_config(over + ["eval.magicbrush.metrics.batch_size=0"]))
    with pytest.raises(ConfigError, match=r"^eval.magicbrush.batch: must be >= 1, got 0$"):
        build_run_config(load_config(over + ["eval.magicbrush.batch=0"]))
    _, trainer = build_training(load_config(over))
    trainer.train()
    first, last = (json.loads((run / f"eval_{s}.json").read_text())["magicbrush"] for s in (1, 2))
    assert last["sessions"] == 2 and [t["n"] for t in last["per_turn"]] == [2, 2, 1]   # s1: two turns, s2: three
    assert first["per_turn"][0]["l1"] != last["per_turn"][0]["l1"]                  # the weights of each step
    cfg, model, text, image = load_run(run)
    res = run_magicbrush(make_editor(cfg, model, text, image), read_magicbrush(tmp_path / "dev")[:2],  # one by one
                         metrics=MagicBrushMetrics(MagicBrushConfig(clip_path=clip, dino_path=dino, edit_size=24)),
                         progress=False)
    for a, b in zip(res["per_turn"], last["per_turn"]):
        assert a["n"] == b["n"] and all(a[m] == pytest.approx(b[m], rel=1e-4, abs=1e-6)
                                        for m in ("l1", "l2", "clip_i", "clip_t", "dino"))
