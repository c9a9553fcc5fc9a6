"""MSE-Bench: reading a local copy, running the editor turn after turn, the judge's protocol, the report.

The benchmark folder is written here (parquet in the official release's layout, and the JSONL
folder layout). The judge is a real local server on the OpenAI protocol whose scores depend on the
last prompt, so every turn's outcome is known in advance:
- "GOOD" scores 8/8;
- "BAD" scores 3/9;
- "EDGE" scores 6/9 (exactly the threshold: a failure, since both must be > 6);
- "FLAKY" fails with a 500 once;
- "MALFORMED" first answers prose.
"""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))      # the shared fake server
from fake_vlm import MODEL, FakeVLM  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mse_results import png as _png  # noqa: E402

from vincie_mcore.config import build  # noqa: E402
from vincie_mcore.eval import mse_bench  # noqa: E402
from vincie_mcore.eval.vlm_judge import JUDGE_PROMPT, JudgeConfig, VLMJudge, format_prompts, parse_verdict  # noqa: E402

PROMPTS = {"a": ["GOOD add a hat", "GOOD make it red", "EDGE remove the sky", "GOOD add a cat", "GOOD zoom in"],
           "b": ["GOOD one", "FLAKY two", "MALFORMED three", "GOOD four", "GOOD five"],
           "c": ["BAD first", "GOOD second", "GOOD third", "GOOD fourth", "GOOD fifth"]}


def responder(text, images, attempt):
    last = re.findall(r"Turn \d+: '([^']*)'", text)[-1]
    if last.startswith("FLAKY") and attempt == 1:
        return 500, "overloaded"
    if last.startswith("MALFORMED") and attempt == 1:
        return 200, "The edit looks fine to me."
    pf, c = (3, 9) if last.startswith("BAD") else (6, 9) if last.startswith("EDGE") else (8, 8)
    return 200, "```json\n" + json.dumps({"reason": f"judged {last}", "prompt_following": pf, "consistency": c}) + "\n```"


@pytest.fixture
def judge_server():
    s = FakeVLM(delay=0.0, responder=responder)
    yield s
    s.close()


def _judge(server, tmp_path, **over):
    cfg = dict(base_urls=[server.url], model=MODEL, max_retries=2, backoff_s=0.01, cache_dir=str(tmp_path / "cache"))
    cfg.update(over)
    return VLMJudge(build(JudgeConfig, cfg, "judge"), env={})


@pytest.fixture
def bench(tmp_path):
    """The release's parquet layout, and generated results in the published turn_{i}_image layout."""
    table = pa.table({"index": list(PROMPTS), "image": [{"bytes": _png(i), "path": f"{k}.png"} for i, k in enumerate(PROMPTS)],
                      "context": list(PROMPTS.values())})
    pq.write_table(table, tmp_path / "test-00000-of-00001.parquet")
    gen = {"index": list(PROMPTS)}
    for t in range(1, 6):
        gen[f"turn_{t}_image"] = [{"bytes": _png(100 * t + i, 24, 24), "path": None} for i in range(len(PROMPTS))]
    pq.write_table(pa.table(gen), tmp_path / "generated.parquet")
    return tmp_path


def test_reads_the_release_layout_and_the_jsonl_folder(bench, tmp_path):
    s = mse_bench.load_sessions(bench / "test-00000-of-00001.parquet")
    assert [x.index for x in s] == ["a", "b", "c"] and s[0].prompts == PROMPTS["a"] and s[0].image.shape == (40, 56, 3)
    folder = tmp_path / "jsonl"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png(0))
    (folder / "sessions.jsonl").write_text(json.dumps({"index": 7, "image": "a.png", "context": PROMPTS["a"]}) + "\n")
    (j,) = mse_bench.load_sessions(folder)
    assert j.index == "7" and np.array_equal(j.image, s[0].image)
    g = mse_bench.load_generated(bench / "generated.parquet")
    assert sorted(g) == ["a", "b", "c"] and len(g["a"]) == 5 and g["a"][0].shape == (24, 24, 3)


def test_bad_rows_are_one_line(bench, tmp_path):
    (tmp_path / "bad").mkdir()
    rows = [{"index": 1, "image": "../escape.png", "context": ["x"]}]
    (tmp_path / "bad" / "sessions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"sessions.jsonl row 0: .*climbs out") as e:
        mse_bench.load_sessions(tmp_path / "bad")
    assert "\n" not in str(e.value)
    (tmp_path / "bad" / "sessions.jsonl").write_text(json.dumps({"index": 1, "image": "x.png"}) + "\n")
    with pytest.raises(ValueError, match=r"row 0: no 'context' column"):
        mse_bench.load_sessions(tmp_path / "bad")
    pq.write_table(pa.table({"index": ["a"], "turn_1_image": [{"bytes": _png(1), "path": None}]}), tmp_path / "g.parquet")
    with pytest.raises(ValueError, match=r"no 'turn_2_image' column"):
        mse_bench.load_generated(tmp_path / "g.parquet")


def test_the_protocol_on_known_verdicts(bench, judge_server, tmp_path):
    sessions = mse_bench.load_sessions(bench / "test-00000-of-00001.parquet")
    generated = mse_bench.load_generated(bench / "generated.parquet")
    res = mse_bench.score(_judge(judge_server, tmp_path), sessions, generated, progress=False)
    # a: fails at 3; b: passes all (a 500 and prose retried); c: fails at 1
    assert {d["index"]: d["failed_at"] for d in res["sessions_detail"]} == {"a": 3, "b": None, "c": 1}
    assert res["turn_success"] == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3], abs=1e-4)
    # judging stopped at each first failure: a 3 turns, b 5, c 1 -> 9 verdicts, plus 1 retry after the 500
    # and 1 re-ask after the prose
    assert sum(len(d["verdicts"]) for d in res["sessions_detail"]) == 9 and len(judge_server.requests) == 11
    t1 = res["per_turn"][0]
    assert t1["judged"] == 3 and t1["prompt_following"] == pytest.approx((8 + 8 + 3) / 3, abs=1e-3)
    assert res["per_turn"][2]["prompt_following"] == pytest.approx((6 + 8) / 2, abs=1e-3)   # a's EDGE turn, b's
    assert t1["sqrt_pf_c"] == pytest.approx((8 + 8 + np.sqrt(27)) / 3, abs=1e-3)
    assert res["per_turn"][3]["judged"] == 1 and res["judge"]["retries"] == 1 and res["judge"]["bad_replies"] == 1
    # every request carried the C.6 instruction with the prompts so far, and the source + each result
    want = JUDGE_PROMPT.format(prompts=format_prompts(PROMPTS["a"][:1]))
    assert [r["n_images"] for r in judge_server.requests if r["text"] == want] == [2]
    assert max(x["n_images"] for x in judge_server.requests) == 6
    # a rerun is served from the cache
    n = len(judge_server.requests)
    again = mse_bench.score(_judge(judge_server, tmp_path), sessions, generated, progress=False)
    assert again["turn_success"] == res["turn_success"] and len(judge_server.requests) == n

    html = mse_bench.write_report(tmp_path / "report.html", res, sessions, generated).read_text()
    assert html.count("<img") == 3 * 6 and "judged EDGE remove the sky" in html and "not judged" in html


def test_a_judge_that_stays_down_fails_that_turn_not_the_run(bench, tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    judge = VLMJudge(build(JudgeConfig, dict(base_urls=[dead], model=MODEL, max_retries=1, backoff_s=0.01), "judge"), env={})
    sessions = mse_bench.load_sessions(bench / "test-00000-of-00001.parquet")
    res = mse_bench.score(judge, sessions, mse_bench.load_generated(bench / "generated.parquet"), progress=False)
    assert res["judge_errors"] == 3 and res["turn_success"] == [0.0] * 5
    assert "gave up after 2 tries" in res["sessions_detail"][0]["error"]


def test_verdict_schema():
    assert parse_verdict('{"reason": "ok", "prompt_following": 7, "consistency": "9"}').consistency == 9
    for bad, msg in (('{"reason": "x", "prompt_following": 11, "consistency": 5}', "prompt_following"),
                     ('{"reason": "x", "consistency": 5}', "prompt_following: Field required"),
                     ("nothing", "not JSON")):
        with pytest.raises(ValueError, match=msg):
            parse_verdict(bad)


def _tiny_editor():
    """The library's Editor on a tiny random MM-DiT (block_causal: the KV-cache path) and the pixel 'VAE'."""
    from vincie_mcore.data.packing import PackConfig
    from vincie_mcore.diffusion.flow import FlowConfig
    from vincie_mcore.encoders.image import PixelEncoder
    from vincie_mcore.encoders.text import TextEncoder, TextEncoderConfig
    from vincie_mcore.infer.editor import Editor, SamplerConfig
    from vincie_mcore.model import MMDiTConfig, build_model

    torch.manual_seed(0)
    model = build_model(build(MMDiTConfig, dict(
        hidden_size=64, num_layers=2, mm_layers=1, num_heads=2, ffn_hidden_size=128, text_dim=32, patch_dim=192,
        max_turns=8, rope_axes_dim=[8, 12, 12], adaln_zero_init=False, attention_backend="torch"), "model"),
        device="cpu").eval()
    return Editor(model, TextEncoder(TextEncoderConfig(d_model=32, num_layers=1, num_heads=2, pool=4)), PixelEncoder(),
                  PackConfig(patch_size=8), FlowConfig(prediction="x0"), SamplerConfig(steps=2, guidance=1.0),
                  mask_type="block_causal")


def test_generate_by_chain_of_editing(bench, megatron_cpu, tmp_path):
    """``coe="cs"``: each turn is a ``ChainSession`` turn with that edit's seed (its source map first, written
    beside the turn's image), as run by hand; a folder of plain edits refuses it."""
    from vincie_mcore.data.recipe import RecipeConfig
    from vincie_mcore.eval import edit_runs
    from vincie_mcore.infer import applications as apps

    sessions = mse_bench.load_sessions(bench / "test-00000-of-00001.parquet")[:1]
    recipe = RecipeConfig(mask_prompt_src="where it changes")
    out = mse_bench.generate(_tiny_editor(), sessions, size=(16, 24), turns=3, progress=False, out_dir=tmp_path / "a",
                             coe="cs", recipe=recipe)
    ed = _tiny_editor()
    chain = apps.ChainSession(ed, mse_bench.fit_to(sessions[0].image, (16, 24)), recipe, ("roe_src",))
    for t, prompt in enumerate(sessions[0].prompts[:3], 1):
        edit_runs.seed_edit(ed, "a", t)
        assert np.array_equal(chain.turn(prompt), out["a"][t - 1])
        src = edit_runs.map_path(mse_bench.edit_path(tmp_path / "a", "a", t), "roe_src")
        assert np.array_equal(np.asarray(Image.open(src)), apps.map_image(chain.masks[-1]["roe_src"]))
        assert not edit_runs.map_path(mse_bench.edit_path(tmp_path / "a", "a", t), "roe_tgt").exists()
    mse_bench.generate(_tiny_editor(), sessions, size=(16, 24), turns=1, progress=False, out_dir=tmp_path / "b")
    with pytest.raises(ValueError, match=r"^out_dir: .*b holds edits made with coe=None, this run has coe='cs'"):
        mse_bench.generate(_tiny_editor(), sessions, size=(16, 24), turns=1, progress=False, out_dir=tmp_path / "b",
                           coe="cs", recipe=recipe)


def test_generate_runs_five_turns_with_the_history_in_context(bench, megatron_cpu, tmp_path):
    """The editor (tiny random model) runs every turn on the previous output, the whole history in context;
    a stopped run resumes to the images of one never stopped."""
    ed = _tiny_editor()
    sessions = mse_bench.load_sessions(bench / "test-00000-of-00001.parquet")[:2]
    contexts = []
    orig = ed.edit_cached

    def spy(sess, prompt):
        contexts.append(len(sess.images))
        return orig(sess, prompt)
    ed.edit_cached = spy
    out = mse_bench.generate(ed, sessions, size=(16, 24), progress=False)
    assert sorted(out) == ["a", "b"] and all(len(v) == 5 and v[0].shape == (16, 24, 3) for v in out.values())
    assert contexts == [1, 2, 3, 4, 5] * 2          # turn t sees the source and the t-1 earlier results

    # written as made; a run killed after 7 of 10 edits and rerun gives the uninterrupted images
    # (eval/edit_runs.py: each edit's noise from its session and turn; the context read back from PNGs)
    whole = mse_bench.generate(ed, sessions, size=(16, 24), progress=False, out_dir=tmp_path / "a")
    n = [0]

    def crash(sess, prompt):
        n[0] += 1
        if n[0] > 7:
            raise KeyboardInterrupt
        return orig(sess, prompt)
    ed.edit_cached = crash
    with pytest.raises(KeyboardInterrupt):
        mse_bench.generate(ed, sessions, size=(16, 24), progress=False, out_dir=tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b" / "edits" / "b").iterdir()) == ["turn_1.png", "turn_2.png"]
    contexts.clear()
    ed.edit_cached = spy
    resumed = mse_bench.generate(ed, sessions, size=(16, 24), progress=False, out_dir=tmp_path / "b")
    assert contexts == [3, 4, 5]                    # turns 3-5 of b, with the source and two read-back results
    assert all(np.array_equal(x, y) for k in whole for x, y in zip(whole[k], resumed[k]))
    assert np.array_equal(np.asarray(Image.open(mse_bench.edit_path(tmp_path / "b", "b", 5))), whole["b"][4])
    with pytest.raises(ValueError, match=r"^out_dir: .*b holds edits made with size=\[16, 24\], this run has "
                                         r"size=\[16, 16\]; give another out_dir$"):
        mse_bench.generate(ed, sessions, size=(16, 16), progress=False, out_dir=tmp_path / "b")
    # one GPU of two (--shard 1/2): session b only; the run without a shard then makes only a's edits
    part = mse_bench.generate(ed, sessions, size=(16, 24), progress=False, out_dir=tmp_path / "c", shard=(1, 2))
    assert sorted(part) == ["b"] and not (tmp_path / "c" / "edits" / "a").exists()
    contexts.clear()
    full = mse_bench.generate(ed, sessions, size=(16, 24), progress=False, out_dir=tmp_path / "c")
    assert contexts == [1, 2, 3, 4, 5]               # a's five turns; b's read back
    assert all(np.array_equal(x, y) for k in whole for x, y in zip(whole[k], full[k]))
    # the CLIs' editor is deferred: where every edit exists (a scoring job after the shards) it never loads;
    # one edit missing loads it, and the whole record is checked then, before the edit is made
    import copy
    import dataclasses

    from vincie_mcore.eval.edit_runs import Deferred, EditorLoadError
    loads = []

    def load(editor):
        loads.append(editor)
        return editor
    again = mse_bench.generate(Deferred(lambda: load(ed)), sessions, size=(16, 24), progress=False,
                               out_dir=tmp_path / "c")
    assert loads == [] and all(np.array_equal(x, y) for k in whole for x, y in zip(whole[k], again[k]))
    mse_bench.edit_path(tmp_path / "c", "a", 5).unlink()
    other = copy.copy(ed)
    other.sampler = dataclasses.replace(ed.sampler, steps=3)
    with pytest.raises(EditorLoadError, match=r"^out_dir: .*c holds edits made with sampler=.*'steps': 2.*"
                                              r"this run has sampler=.*'steps': 3"):
        mse_bench.generate(Deferred(lambda: load(other)), sessions, size=(16, 24), progress=False,
                           out_dir=tmp_path / "c")
    assert loads == [other] and not mse_bench.edit_path(tmp_path / "c", "a", 5).exists()
    contexts.clear()
    again = mse_bench.generate(Deferred(lambda: load(ed)), sessions, size=(16, 24), progress=False,
                               out_dir=tmp_path / "c")
    assert loads == [other, ed] and contexts == [5]
    assert all(np.array_equal(x, y) for k in whole for x, y in zip(whole[k], again[k]))
    with pytest.raises(ValueError, match=r"^--shard: needs 0 <= i < N, got 2/2$"):
        mse_bench.generate(ed, sessions, size=(16, 24), progress=False, shard=(2, 2))


def test_cli_judges_generated_images_and_refuses_a_dead_judge(bench, judge_server, tmp_path):
    import subprocess
    import yaml

    bin_ = Path(sys.executable).parent / "vincie-benchmark"
    conf = tmp_path / "judge.yaml"
    conf.write_text(yaml.safe_dump({"base_urls": [judge_server.url], "model": MODEL, "backoff_s": 0.01}))
    r = subprocess.run([str(bin_), "mse", "--data", str(bench / "test-00000-of-00001.parquet"), "--generated",
                        str(bench / "generated.parquet"), "--judge", str(conf), "--out", str(tmp_path / "out"), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["turn_success"] == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3], abs=1e-4)
    assert "MSE-Bench turn success: 0.667 0.667 0.333 0.333 0.333" in r.stdout
    assert (tmp_path / "out" / "report.html").stat().st_size > 0
    conf.write_text(yaml.safe_dump({"base_urls": ["http://127.0.0.1:9/v1"], "model": MODEL}))
    r = subprocess.run([str(bin_), "mse", "--data", str(bench), "--generated", str(bench / "generated.parquet"),
                        "--judge", str(conf), "--out", str(tmp_path / "o2")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: judge server http://127.0.0.1:9/v1: unreachable")
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_refuses_a_batch_below_one(capsys):
    from vincie_tools.benchmark import main

    with pytest.raises(SystemExit) as e:
        main(["mse", "--data", "x", "--run", "r", "--judge", "j.yaml", "--out", "o", "--batch", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith("argument --batch: expected an integer >= 1, got '0'")


def test_cli_magicbrush_scores_a_generated_folder(tmp_path, capsys):
    """vincie-benchmark magicbrush on the release's test layout, tiny CLIP/DINO, images given under
    MagicBrush's own names; a setting whose images are absent stops in one line naming the file."""
    import subprocess

    from tiny_clip_dino import save_tiny_clip, save_tiny_dino

    from test_magicbrush import _write_release, _write_set
    from vincie_mcore.eval.magicbrush import generated_path

    _write_set(tmp_path / "mb")
    data = tmp_path / "test"
    sessions = _write_release(data, tmp_path / "mb")
    gen = tmp_path / "gen"
    for sid, turns in sessions.items():                        # "generated" = the ground truth itself
        for t, turn in enumerate(turns, 1):
            p = generated_path(gen, sid, t)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes((data / "images" / sid / turn["output"]).read_bytes())
    cmd = [str(Path(sys.executable).parent / "vincie-benchmark"), "magicbrush", "--data", str(data),
           "--generated", str(gen), "--clip", save_tiny_clip(tmp_path / "clip"),
           "--dino", save_tiny_dino(tmp_path / "dino"), "--out", str(tmp_path / "out")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "results_multi_turn.json").read_text())
    assert (tmp_path / "out" / "report_multi_turn.html").read_text().count("<h3>session ") == 2
    f = res["final_turn"]
    assert f["l1"] == 0 and f["l2"] == 0 and f["clip_i"] == pytest.approx(1, abs=1e-4) and f["dino"] == pytest.approx(1, abs=1e-4)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("MagicBrush multi_turn, 2 sessions (") and len(lines) == 5
    assert lines[1].split()[:4] == ["turn", "1", "n", "2"]
    assert " ".join(lines[-1].split()).startswith("turn final n 2 l1 0.0000 l2 0.0000 clip_i 1.0000")
    r = subprocess.run(cmd + ["--setting", "independent"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: generated: session 's1' lacks s1_inde_2.png in ")
    # the same sessions as Hugging Face's parquet split: no captions, so CLIP-T prints as "-" (in-process)
    from test_magicbrush import _write_parquet
    from vincie_tools.benchmark import main as bench_main

    _write_parquet(tmp_path / "hf", data)
    cmd[cmd.index("--data") + 1] = str(tmp_path / "hf")
    assert bench_main(cmd[1:-1] + [str(tmp_path / "out_hf")]) == 0
    final = " ".join(capsys.readouterr().out.splitlines()[-1].split())
    assert final.startswith("turn final n 2 l1 0.0000 l2 0.0000 clip_i 1.0000 clip_t - dino 1.0000"), final

def test_an_export_is_identified_by_its_bytes(tmp_path):
    """editor.json's weights of an --export: the SHA-256 of config.json and the safetensors, nothing else."""
    from vincie_tools.benchmark import _export_digest

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 100)
    (tmp_path / "README.md").write_text("a")
    first = _export_digest(tmp_path)
    (tmp_path / "README.md").write_text("b")                  # not the model
    assert _export_digest(tmp_path) == first and len(first) == 64
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 99 + b"\1")
    assert _export_digest(tmp_path) != first


def test_cli_shard_edits_its_sessions_without_a_judge(bench, judge_server, tmp_path, capsys):
    """vincie-benchmark mse --export --shard 1/2: session b only (3 sessions: a, b, c -> shard 1 holds b), no
    judge asked; the run without --shard then edits a and c, reads b back and is judged; a scoring run
    without --judge is one line."""
    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "convert"))
    from convert_helpers import randomize_, tiny_dict
    from vincie_tools.benchmark import main

    from vincie_mcore.config import load_config
    from vincie_mcore.hf.modeling import VincieMMDiT
    from vincie_mcore.hf.pipeline import pipeline_section

    model = VincieMMDiT(**tiny_dict())
    randomize_(model)
    cfg = load_config(["experiment=demo", "model.image_abs_pos_grid=0", "model.text_adaln=false",
                       "model.softmax_scale=null", "sampler.steps=1"])
    model.save_pretrained(tmp_path / "export", extra={"pipeline": pipeline_section(cfg)})
    data = str(bench / "test-00000-of-00001.parquet")
    common = ["mse", "--data", data, "--export", str(tmp_path / "export"), "--out", str(tmp_path / "out"),
              "--size", "16", "24", "--quiet"]
    assert main(common + ["--shard", "1/2"]) == 0
    assert "MSE-Bench shard 1/2: 1 sessions edited into" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out" / "edits").iterdir()) == ["b"]
    assert main(common) == 2
    assert capsys.readouterr().err == "error: --judge: required to score (only a --shard run, which edits, goes without)\n"
    conf = tmp_path / "judge.yaml"
    conf.write_text(yaml.safe_dump({"base_urls": [judge_server.url], "model": MODEL, "backoff_s": 0.01}))
    b5 = (tmp_path / "out" / "edits" / "b" / "turn_5.png").read_bytes()
    assert main(common + ["--judge", str(conf)]) == 0
    assert "MSE-Bench turn success:" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out" / "edits").iterdir()) == sorted(PROMPTS)
    assert (tmp_path / "out" / "edits" / "b" / "turn_5.png").read_bytes() == b5     # read back, not remade
    assert json.loads((tmp_path / "out" / "results.json").read_text())["sessions"] == len(PROMPTS)
