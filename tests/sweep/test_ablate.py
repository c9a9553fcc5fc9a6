"""vincie-ablate (docs/ablations.md): the paired CI, the pairwise recipe, the no-history eval, and
the context ablation from plan to report on the real local Slurm (../shared/recipes/slurm-ci.sh).
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from slurm_cluster import slurm_cluster  # noqa: F401,F811 - the fixture

from vincie_mcore.config import build
from vincie_mcore.sweep import ablate as A
from vincie_mcore.sweep import plan as P

BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------- the CI

def test_paired_bootstrap_recovers_a_planted_difference():
    rng = np.random.default_rng(1)
    S, N = 3, 400
    a = (rng.random((S, N, 2)) < 0.3).astype(float)
    # B = A, plus a success on a planted 20 % (turn 1) / 0 % (turn 2) of the sessions A failed:
    # a paired effect whose true size is 0.2 * P(A fails) = 0.14 on turn 1, exactly 0 on turn 2
    lift = (rng.random((S, N)) < 0.2) & (a[:, :, 0] == 0)
    b = a.copy()
    b[:, :, 0][lift] = 1.0
    r = A.paired_bootstrap(a, b, reps=2000)
    t1, t2 = r["per_turn"]
    assert t1["diff"] == pytest.approx(lift.mean())
    assert t1["diff_ci"][0] < 0.14 < t1["diff_ci"][1] and t1["diff_ci"][0] > 0
    # paired: the spread is that of the lift alone (sd ~0.01), far narrower than two independent arms'
    assert t1["diff_ci"][1] - t1["diff_ci"][0] < 0.05
    assert t2["diff"] == 0 and t2["diff_ci"] == [0.0, 0.0] and "covers 0" in t2["reading"]
    assert t1["a"] == pytest.approx(a[:, :, 0].mean()) and t1["b_per_seed"] == pytest.approx(b[:, :, 0].mean(1))


def test_zero_difference_ci_covers_zero_and_seeds_widen_it():
    rng = np.random.default_rng(2)
    S, N = 4, 300
    a = (rng.random((S, N, 1)) < 0.4).astype(float)
    b = (rng.random((S, N, 1)) < 0.4).astype(float)          # same rate, independent: true difference 0
    r = A.paired_bootstrap(a, b)["per_turn"][0]
    assert r["diff_ci"][0] < 0 < r["diff_ci"][1]
    # a per-seed shift of the difference (seed-to-seed spread) must widen the CI: seeds are resampled
    shift = np.array([-0.3, 0.3, -0.3, 0.3])[:, None, None]
    w = A.paired_bootstrap(a, b + shift)["per_turn"][0]
    assert w["diff"] == pytest.approx(r["diff"])
    assert (w["diff_ci"][1] - w["diff_ci"][0]) > 3 * (r["diff_ci"][1] - r["diff_ci"][0])
    with pytest.raises(ValueError, match="equal non-empty"):
        A.paired_bootstrap(a, b[:, :10])


# ----------------------------------------------------------------------------- the pairwise recipe

def test_pairwise_recipe_gives_only_two_frame_samples_with_the_same_texts():
    from vincie_mcore.data.packing import EncodedSession, PackConfig, PackedStream
    from vincie_mcore.data.recipe import RecipeConfig
    from vincie_mcore.encoders.text import TextEncoder, TextEncoderConfig

    g = torch.Generator().manual_seed(0)
    corpus = [EncodedSession(frames=torch.randn(k, 3, 8, 8, generator=g), texts=[f"s{i} edit {j}" for j in range(k - 1)],
                             cameras=[None] * (k - 1), roe_src=torch.randn(k - 1, 3, 8, 8, generator=g),
                             roe_tgt=torch.randn(k - 1, 3, 8, 8, generator=g)) for i, k in enumerate((4, 3, 5))]
    class Text(TextEncoder):                     # the real encoder, noting which texts get packed
        seen: list = []

        def encode(self, texts):
            self.seen += list(texts)
            return super().encode(texts)

    text = Text(TextEncoderConfig(d_model=16, num_layers=1, num_heads=2))
    pc = PackConfig(patch_size=4, token_budget=200)
    for mask in ("block_causal", "full"):
        rec = RecipeConfig(mask_type=mask, roe_prob=0.0, camera_prompts=False, pairwise=True)
        st = PackedStream(corpus, text, rec, pc, seed=0)
        assert len(st.corpus) == 3 + 2 + 4                       # every transition once
        for p in st.corpus:
            i, j = int(p.texts[0].split()[0][1:]), p.meta["pair"]
            assert p.frames.shape[0] == 2 and p.texts == [corpus[i].texts[j]]
            assert torch.equal(p.frames, corpus[i].frames[j:j + 2]) and torch.equal(p.roe_tgt[0], corpus[i].roe_tgt[j])
        text.seen.clear()
        for _ in range(6):
            b = next(st)
            per = {}
            for ib in b.image_blocks:
                per.setdefault(ib["session"], []).append(ib["ref"])
            assert len(per) == b.num_sessions > 1
            # I0 (unless context dropout took it) and the target I1, nothing later
            assert all(("frame", 1) in refs and set(refs) <= {("frame", 0), ("frame", 1)} for refs in per.values())
            assert int((b.txt_turn >= 0).sum()) == b.num_sessions                            # one text each
        assert set(text.seen) <= {t for s in corpus for t in s.texts} and len(set(text.seen)) > 3
        # off (the default): whole sessions, so later frames are laid out
        full = PackedStream(corpus, text, RecipeConfig(mask_type=mask, roe_prob=0.0, camera_prompts=False), pc)
        assert any(ib["ref"][1] >= 2 for _ in range(4) for ib in next(full).image_blocks)


# ----------------------------------------------------------------------------- the no-history eval

def _world_sessions(n, turns, cfg):
    """Held-out-like sessions straight from the world: I0 and ``turns`` single edits, exact states."""
    from types import SimpleNamespace

    from vincie_mcore.data.world import random_edit, random_scene, render, transition_text

    rng, out = np.random.default_rng(0), []
    for _ in range(n):
        st = [random_scene(rng, cfg, 2)]
        for k in range(turns):
            st.append(random_edit(rng, st[-1], cfg, next_oid=10 + k)[1])
        out.append(SimpleNamespace(frames=np.stack([render(s, cfg) for s in st]), states=st,
                                   texts=[transition_text(s, t, cfg) for s, t in zip(st, st[1:])]))
    return out


@pytest.mark.parametrize("context", ["full", "none"])
def test_no_context_eval_gives_the_editor_only_the_previous_output(megatron_cpu, context):
    from vincie_mcore.data.packing import PackConfig
    from vincie_mcore.data.world import demo_config
    from vincie_mcore.diffusion.flow import FlowConfig
    from vincie_mcore.encoders.image import PixelEncoder
    from vincie_mcore.encoders.text import TextEncoder, TextEncoderConfig
    from vincie_mcore.eval.synthetic import evaluate
    from vincie_mcore.infer.editor import Editor, SamplerConfig
    from vincie_mcore.model import MMDiTConfig, build_model

    torch.manual_seed(0)
    model = build_model(build(MMDiTConfig, dict(
        hidden_size=32, num_layers=2, mm_layers=1, num_heads=2, ffn_hidden_size=64, text_dim=16, patch_dim=192,
        max_turns=8, rope_axes_dim=[4, 6, 6], attention_backend="torch"), "model"), device="cpu").eval()
    ed = Editor(model, TextEncoder(TextEncoderConfig(d_model=16, num_layers=1, num_heads=2)), PixelEncoder(),
                PackConfig(patch_size=8), FlowConfig(prediction="x0"), SamplerConfig(steps=1, guidance=1.0),
                mask_type="block_causal")
    calls, clean = [], []                 # what edit_many got, and the clean images the model was shown
    real = ed.edit_many

    def spy(histories, prompts):
        outs = real(histories, prompts)
        calls.append(([[im.clone() for im in h[0]] for h in histories], [list(h[1]) for h in histories], prompts, outs))
        return outs

    ed.edit_many = spy
    model.register_forward_hook(lambda m, args, out: clean.append(
        [sum(1 for ib in args[1].image_blocks if ib["session"] == s and not ib["noisy"])
         for s in range(args[1].num_sessions)]))
    cfg = demo_config()
    sessions = _world_sessions(3, 3, cfg)
    results, _, strips = evaluate(ed, sessions, cfg, turns=3, progress=False, context=context)
    assert len(calls) == 3 and len(results[0]) == 3 and len(clean) % 3 == 0
    per_turn = len(clean) // 3                                        # model calls per turn (steps x CFG)
    for k, (images, texts, prompts, _) in enumerate(calls):
        assert prompts == [s.texts[k] for s in sessions]
        for i, s in enumerate(sessions):
            prev = s.frames[0] if k == 0 else calls[k - 1][3][i]          # the image this turn edits
            assert np.array_equal(images[i][-1].numpy(), prev)
            if context == "none":
                assert len(images[i]) == 1 and texts[i] == []
            else:
                assert len(images[i]) == k + 1 and texts[i] == s.texts[:k]
                assert np.array_equal(images[i][0].numpy(), s.frames[0])
        # the packed batch itself: clean (context) images per session in every model call of this turn
        assert {c for per in clean[k * per_turn:(k + 1) * per_turn] for c in per} == {1 if context == "none" else k + 1}
    assert len(strips[0][0]) == 4                                     # the strip still holds the whole chain
    with pytest.raises(ValueError, match="eval.context"):
        evaluate(ed, sessions, cfg, turns=1, progress=False, context="some")


@pytest.mark.parametrize("coe,context", [("cs_ns", "full"), ("ns", "none")])
def test_chain_of_editing_eval_is_the_application_turn_by_turn(megatron_cpu, coe, context):
    """``evaluate(coe=...)`` (Table 3's inference rows) edits each session as ``chain_of_editing`` does, with the
    run's recipe: under full context one chain per session, its earlier maps kept; under none a fresh chain on
    the image each turn edits. The reference runs the application by hand with an editor of the same seed; two
    sessions per pass advance together, as ``chain_turns`` by hand."""
    from vincie_mcore.data.packing import PackConfig
    from vincie_mcore.data.recipe import RecipeConfig
    from vincie_mcore.data.world import demo_config
    from vincie_mcore.diffusion.flow import FlowConfig
    from vincie_mcore.encoders.image import PixelEncoder
    from vincie_mcore.encoders.text import TextEncoder, TextEncoderConfig
    from vincie_mcore.eval.synthetic import COE, evaluate
    from vincie_mcore.infer import applications as apps
    from vincie_mcore.infer.editor import Editor, SamplerConfig
    from vincie_mcore.model import MMDiTConfig, build_model

    torch.manual_seed(0)
    model = build_model(build(MMDiTConfig, dict(
        hidden_size=32, num_layers=2, mm_layers=1, num_heads=2, ffn_hidden_size=64, text_dim=16, patch_dim=192,
        max_turns=8, rope_axes_dim=[4, 6, 6], attention_backend="torch", adaln_zero_init=False), "model"),
        device="cpu").eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.final_layer.linear.weight, std=0.05)    # outputs that differ from 0
    text = TextEncoder(TextEncoderConfig(d_model=16, num_layers=1, num_heads=2))
    recipe = RecipeConfig(mask_prompt_src="where it changes", mask_prompt_tgt="where it will be")

    def editor():
        return Editor(model, text, PixelEncoder(), PackConfig(patch_size=8), FlowConfig(prediction="x0"),
                      SamplerConfig(steps=1, guidance=2.0, seed=3), mask_type="block_causal")
    cfg = demo_config()
    sessions = _world_sessions(2, 2, cfg)
    ed = editor()
    calls = []
    real = ed.generate_many
    ed.generate_many = lambda layouts, kvs=None, seeds=None: calls.append(len(layouts)) or real(layouts, kvs, seeds)
    results, baseline, strips = evaluate(ed, sessions, cfg, turns=2, progress=False, context=context, coe=coe,
                                         recipe=recipe, batch=1)
    assert calls == [1] * 2 * 2 * (len(COE[coe]) + 1)                # per turn: its maps, then its frame
    ref = editor()
    for s, (images, prompts, _) in zip(sessions, strips):
        if context == "full":
            want = apps.chain_of_editing(ref, s.frames[0], s.texts[:2], recipe, maps=COE[coe]).images
        else:
            want = [s.frames[0]]
            for t in s.texts[:2]:
                want.append(apps.chain_of_editing(ref, want[-1], [t], recipe, maps=COE[coe]).images[-1])
        assert prompts == s.texts[:2] and len(images) == 3
        for got, w in zip(images, want):
            assert np.array_equal(got.numpy(), w)
    assert len(results[1]) == len(baseline[1]) == 2
    # both sessions per pass: the chains advance together (applications.chain_turns), one call per map and frame
    calls.clear()
    ed.gen.manual_seed(3)                                            # as a new editor of the same seed
    _, _, both = evaluate(ed, sessions, cfg, turns=2, progress=False, context=context, coe=coe, recipe=recipe)
    assert calls == [2] * 2 * (len(COE[coe]) + 1)
    ref, chains = editor(), None
    images = [[s.frames[0]] for s in sessions]
    for k in range(2):
        if chains is None or context == "none":
            chains = [apps.ChainSession(ref, ims[-1], recipe, COE[coe]) for ims in images]
        for ims, out in zip(images, apps.chain_turns(chains, [s.texts[k] for s in sessions])):
            ims.append(out)
    assert all(np.array_equal(g.numpy(), w) for (got, _, _), want in zip(both, images) for g, w in zip(got, want))
    with pytest.raises(ValueError, match=r"^eval.coe: expected one of"):
        evaluate(ed, sessions, cfg, turns=1, progress=False, coe="cs->i")


# ----------------------------------------------------------------------------- plan -> launch -> report

def _ablation_yaml(tmp_path, **change) -> Path:
    conf = {"ablation": "context", "name": "ctx",
            "base": ["experiment=demo", "data.pack.token_budget=400", "train.warmup=0", "train.log_every=1",
                     "sampler.steps=2", "data.corpus.workers=1"],
            "data": {"synthetic": {"videos": 8, "heldout_videos": 6, "world": "demo"}},
            "data_size": 8, "seeds": [0], "steps": 2,
            "eval": {"overrides": ["eval.turns=2"], "sessions": 6},
            "cluster": {"gpus_per_run": 0, "cpus_per_task": 1, "max_concurrent": 2}}
    conf.update(change)
    p = tmp_path / "ablation.yaml"
    p.write_text(yaml.safe_dump(conf))
    return p


def _tool(name, *args, env=None, rc=0):
    r = subprocess.run([str(BIN / name), *args], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == rc, r.stderr[-3000:]
    return r


def test_plan_resolves_the_arms_at_the_same_compute(tmp_path):
    for name, (arm_a, arm_b, _) in A.ABLATIONS.items():
        pre = {"pretrain": {"overrides": ["data.recipe.t2i_prob=1.0"], "steps": 3}} if name == "base" else {}
        s = A.plan(_ablation_yaml(tmp_path, ablation=name, seeds=[0, 1], **pre), tmp_path / name, build_data=False)
        runs = P.read_runs(tmp_path / name)
        assert s["arms"] == [arm_a, arm_b] and {r.model for r in runs} == {arm_a, arm_b} and len(runs) == 4
        assert {r.steps for r in runs} == {2} and {r.data_size for r in runs} == {8}
        shared = name in ("context", "coe", "camera_pe")               # one trained model, two evaluations
        assert s["budget"]["steps"] == 2 * (2 if shared else 4) + (2 * 3 if pre else 0)   # the trainings only
        if name == "base":                 # only arm B starts from its seed's base; arm A trains from scratch
            bases = P.read_pretrain(tmp_path / name)
            for r in runs:
                init = [o for o in r.overrides if o.startswith("train.init_from=")]
                if r.model == arm_b:
                    assert r.pretrain is not None and init == [f"train.init_from={bases[r.pretrain].run_dir}/checkpoints"]
                    assert bases[r.pretrain].seed == r.seed and "data.recipe.t2i_prob=1.0" in bases[r.pretrain].overrides
                else:
                    assert r.pretrain is None and init == []
        budget = {o for r in runs for o in r.overrides if o.startswith("data.pack.token_budget")}
        assert budget == {"data.pack.token_budget=400"}                 # same tokens per step
        for seed in (0, 1):
            ra, rb = (next(r for r in runs if r.model == m and r.seed == seed) for m in (arm_a, arm_b))
            if shared:
                assert ra.run_dir == rb.run_dir and ra.train_with == rb.index and rb.train_with is None
                assert (ra.eval_args, rb.eval_args) == {
                    "context": (["--context", "none"], ["--context", "full"]),
                    "coe": (["--coe", "none"], ["--coe", "cs_ns"]),
                    "camera_pe": (["sampler.camera_prompts=false"], ["sampler.camera_prompts=true"])}[name]
                assert ra.eval_file != rb.eval_file
                if name == "coe":                                      # the model is trained with maps
                    assert {"data.recipe.roe_prob=0.8", "data.recipe.task_probs=[0.6,0.2,0.2]"} <= set(rb.overrides)
            else:
                if name == "rope":                                     # both under the full mask
                    assert {"data.recipe.mask_type=full"} <= set(ra.overrides) & set(rb.overrides)
                assert ra.run_dir != rb.run_dir and ra.train_with is rb.train_with is None
                assert set(ra.overrides) ^ set(rb.overrides) - {f"run_dir={ra.run_dir}", f"run_dir={rb.run_dir}"}
    # equal_compute: the scratch arm trains the base's 3 steps more; the arm from the base as before
    pre = {"pretrain": {"overrides": ["data.recipe.t2i_prob=1.0"], "steps": 3}}
    s = A.plan(_ablation_yaml(tmp_path, ablation="base", equal_compute=True, **pre), tmp_path / "equal",
               build_data=False)
    runs = P.read_runs(tmp_path / "equal")
    assert {r.model: r.steps for r in runs} == {"scratch": 5, "base": 2}
    assert "train.steps=5" in next(r for r in runs if r.model == "scratch").overrides
    assert s["budget"]["steps"] == 5 + 2 + 3                           # each arm's + the base's: A's = B's + base
    for change, msg in (({"ablation": "dropout"}, "ablation.ablation: one of context, pairwise, segmentation, coe, attention, rope, camera, camera_pe"),
                        ({"steps": {"rule": "fixed"}}, "ablation.steps: a positive int"),
                        ({"models": {}}, "ablation.models: unknown key"),
                        ({"ablation": "base"}, "ablation.pretrain: the base ablation compares"),
                        ({"equal_compute": True}, "ablation.equal_compute: true or false, for the base ablation only, "
                                                  "got True with ablation 'context'"),
                        ({"ablation": "base", "equal_compute": "yes", **pre},
                         "ablation.equal_compute: true or false, for the base ablation only, got 'yes'")):
        r = _tool("vincie-ablate", "plan", "--config", str(_ablation_yaml(tmp_path, **change)), "--sweep",
                  str(tmp_path / "bad"), rc=2)
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def _ended(env, job) -> bool:
    return not subprocess.run(["squeue", "-h", "-j", str(job)], env=env, capture_output=True, text=True).stdout.strip()


def _wait_for(env, job):
    end = time.monotonic() + 600
    while not _ended(env, job):
        assert time.monotonic() < end, f"timed out waiting for job {job}"
        time.sleep(0.5)


def test_context_ablation_on_slurm_plan_launch_report(slurm_cluster, tmp_path):  # noqa: F811
    """From a shared base model (``pretrain:``, trained first under another mask), as the paper's runs start
    from a video model."""
    env = dict(slurm_cluster, PATH=f"{BIN}:{os.environ['PATH']}")
    sw = tmp_path / "abl"
    conf = _ablation_yaml(tmp_path, pretrain={"overrides": ["data.recipe.mask_type=full"], "steps": 2})
    _tool("vincie-ablate", "plan", "--config", str(conf), "--sweep", str(sw), "--quiet", env=env)
    _tool("vincie-ablate", "launch", "--sweep", str(sw), env=env)
    rec = json.loads((sw / "launches.jsonl").read_text().splitlines()[-1])
    runs, (base,) = P.read_runs(sw), P.read_pretrain(sw)
    owner = next(r for r in runs if r.model == "context")
    assert rec["runs"] == [0, 1] and rec["trained_by"] == {str(1 - owner.index): owner.index}
    assert rec["pretrain_runs"] == [0] and base.name == "pretrain_s0" and owner.pretrain == 0
    _wait_for(env, rec["collect"])
    logs = sorted(p.name for p in (sw / "logs").glob("train_*.out"))
    assert len(logs) == 1, logs                                         # trained once for both arms
    # the base trained first (the array waited on it), then the arm started from its last weights
    assert len(list((sw / "logs").glob("pretrain_0_*.out"))) == 1
    assert f"train.init_from: model weights of {base.run_dir}/checkpoints at step 2" in (sw / "logs" / logs[0]).read_text()
    ev = {r.model: json.loads((Path(r.run_dir) / r.eval_file).read_text()) for r in runs}
    assert ev["context"]["context"] == "full" and ev["no_context"]["context"] == "none"
    # turn 1 has no earlier turn: both arms see I0 and T0 alone, with the same noise, so they agree
    assert ev["context"]["session_success"][0] == ev["no_context"]["session_success"][0]
    status = _tool("vincie-ablate", "status", "--sweep", str(sw), env=env).stdout
    assert re.search(r"pretrain_s0 +done +2/2", status) and "done" in status.split("pretrain_s0")[1]
    out = _tool("vincie-ablate", "report", "--sweep", str(sw), "--reps", "200", env=env).stdout
    res = json.loads((sw / "ablation.json").read_text())
    assert res["ablation"] == "context" and res["seeds"] == [0] and len(res["per_turn"]) == 2
    t1, t2 = res["per_turn"]
    assert t1["diff"] == 0 and t1["diff_ci"] == [0.0, 0.0]
    assert t2["a"] == pytest.approx(np.mean(ev["no_context"]["session_success"][1]))
    assert t2["b"] == pytest.approx(np.mean(ev["context"]["session_success"][1]))
    assert "| 2 |" in out and "ablation.png" in (sw / "ablation.md").read_text()
    assert (sw / "ablation.png").stat().st_size > 1000
    # one arm's evaluation lost: launch again evaluates it again, and does not train the base again
    os.remove(Path(owner.run_dir) / owner.eval_file)
    _tool("vincie-ablate", "launch", "--sweep", str(sw), env=env)
    again = json.loads((sw / "launches.jsonl").read_text().splitlines()[-1])
    assert again["runs"] == [owner.index] and "pretrain" not in again
    _wait_for(env, again["collect"])
    assert (Path(owner.run_dir) / owner.eval_file).is_file()


def test_base_ablation_s_scratch_arm_waits_for_no_base(slurm_cluster, tmp_path):  # noqa: F811
    """``launch`` of the base ablation: the arm from the base waits for the base array, the scratch arm
    (``from_base: false``) is an array of its own with no dependency, each evaluation waits for its own arm's
    element, and a later launch finds both arms' elements (submitted held and cancelled: the dependencies
    are what is tested here; both arrays run the same sbatch script the other Slurm tests run)."""
    from vincie_mcore.sweep.launch import _launched, format_launch, launch

    env = dict(slurm_cluster, PATH=f"{BIN}:{os.environ['PATH']}")
    sw = tmp_path / "base"
    A.plan(_ablation_yaml(tmp_path, ablation="base", pretrain={"overrides": ["data.recipe.t2i_prob=1.0"],
                                                               "steps": 2}), sw, build_data=False)
    runs = P.read_runs(sw)
    rec = launch(sw, env=env, extra_sbatch=["--hold"])
    try:
        scratch = next(r.index for r in runs if r.pretrain is None)
        based = next(r.index for r in runs if r.pretrain is not None)
        assert rec["free_runs"] == [scratch] and rec["train_free"] != rec["train"] and rec["pretrain_runs"] == [0]

        def dependency(job):
            out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout
            return re.search(r"Dependency=(\S+)", out).group(1)

        assert dependency(rec["train"]).startswith(f"afterok:{rec['pretrain']}")
        assert dependency(rec["train_free"]) == "(null)"
        assert dependency(rec["evals"][scratch]).startswith(f"afterok:{rec['train_free']}_{scratch}")
        assert dependency(rec["evals"][based]).startswith(f"afterok:{rec['train']}_{based}")
        assert _launched(sw) == {scratch: f"{rec['train_free']}_{scratch}", based: f"{rec['train']}_{based}"}
        assert f"(and {rec['train_free']} for the 1 run from no base, at once)" in format_launch(rec)
    finally:
        jobs = [rec["pretrain"], rec["train"], rec["train_free"], *rec["evals"].values(), rec["collect"]]
        subprocess.run(["scancel", *jobs], env=env)


def test_heldout_world_builds_the_heldout_store_from_its_own_world(tmp_path):
    """The camera ablation's data: training videos whose camera always pans, held-out videos from the static
    demo world; and a bad world is one line naming its key."""
    from vincie_mcore.data.store import SessionStore

    d = {"data": {"synthetic": {"videos": 6, "heldout_videos": 4, "heldout_world": "demo",
                                "world": {"preset": "demo", "camera_pan_prob": 1.0}}}}
    P.build_synthetic(tmp_path, d, progress=False)
    cams = {part: [c for i in range(len(st)) for c in st.read(i).cameras]
            for part in ("train", "heldout") for st in [SessionStore(tmp_path / "data" / part / "store")]}
    assert cams["train"] and all(c != "None" for c in cams["train"])        # every transition pans
    assert cams["heldout"] and set(cams["heldout"]) == {"None"}
    assert P.world_of({"preset": "demo", "camera_pan_prob": 1.0}).num_objects == P.world_of("demo").num_objects
    for spec, msg in (({"preset": "big"}, "sweep.data.synthetic.world.preset: demo is the only preset"),
                      ({"camera_pan_prob": 2.0}, "sweep.data.synthetic.world: WorldConfig.camera_pan_prob: must be in"),
                      ({"pan": 1}, "sweep.data.synthetic.world: WorldConfig.__init__() got an unexpected keyword"),
                      ("static", "sweep.data.synthetic.world: demo or a mapping of world fields")):
        with pytest.raises(ValueError) as e:
            P.world_of(spec)
        assert str(e.value).startswith(msg), str(e.value)
    conf = yaml.safe_load(_ablation_yaml(tmp_path).read_text())
    conf["data"]["synthetic"]["heldout_wrold"] = "demo"
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(conf))
    with pytest.raises(ValueError, match=r"^sweep.data.synthetic: unknown key heldout_wrold \(known: heldout_videos, "):
        A.plan(tmp_path / "typo.yaml", tmp_path / "typo", build_data=False)
