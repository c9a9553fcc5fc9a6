#!/usr/bin/env bash
# One-shot GPU check: every GPU test and benchmark, JSON out. Run from anywhere:
#
#     OUT=/some/dir bash tools/gpu_check.sh          # OUT defaults to benchmarks/out
#
# The GPU box has torch + triton but none of this package's other deps and no
# internet: never `pip install -e .` here (it would fetch a CPU torch); the repo
# runs from the source tree with PYTHONPATH=.:kernels:tools (the three import roots). pytest is used if importable, else from
# .gpu_pydeps/ (make it here with `bash tools/gpu_check.sh --prep-pydeps` and carry it).
#
# Every step runs under `timeout` and inside an overall budget (BUDGET_S, default
# 480 s: issue 18 allows 8 minutes); a failing or timed-out step is recorded, never fatal. Each step's last
# stdout line (JSON) and log tail land in $OUT/gpu_check.json; every *.json in
# $OUT is copied into benchmarks/ (GPU runs only). Without a GPU the GPU-only steps are skipped
# (a CPU dry run takes ~2 minutes). The last line printed is the summary JSON.
#
# Wheels the GPU box lacks travel in .wheels/ (git-ignored; carry it). `bash tools/gpu_check.sh --prep-wheels`
# makes it here (~10 MB: the three below, for Python 3.11 and 3.12); by hand:
#     pip download --no-deps -d .wheels torchao==0.18.0
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .wheels megatron-core==0.16.1
#     pip download ... (same flags) -d .wheels PyYAML==6.0.4    (tests/model/model_batches.py reads configs/model/*.yaml:
#         without it the fused-ops model tests of pytest_kernels fail on a box that has no PyYAML)
# (the box's Python was 3.12 last time; only wheels matching its interpreter are installed.)
# The train smoke (Section: train smoke) also needs the data side, which the box lacked last time; same flags:
#     pip download ... -d .wheels nvidia-dali-cuda120 zarr==3.1.6 hydra-core==1.3.8 omegaconf==2.3.1 av==18.1.0 \
#         transformers==5.25.0 tensorboard==2.21.0   (DALI's cuda120 or cuda130 build, to match the driver)
# Without them it is recorded as skipped, naming what does not import.
#
# To add a section: copy a `run_step` block into the marked place, above "Summary".
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ "${1:-}" = "--prep-wheels" ]; then       # local machine (with an index): the model-side wheels into .wheels
    PIP=${PYTHON:-.venv/bin/python}
    mkdir -p .wheels
    "$PIP" -m pip download -q --no-deps -d .wheels torchao==0.18.0 || exit 1
    for v in 3.11 3.12; do                     # the box's interpreter decides which of them installs
        "$PIP" -m pip download -q --no-deps --only-binary=:all: --python-version "$v" \
            --platform manylinux_2_28_x86_64 -d .wheels megatron-core==0.16.1 PyYAML==6.0.4 || exit 1
    done
    ls -1 .wheels
    echo "wrote .wheels ($(du -sh .wheels | cut -f1)); carry it to the GPU box (run's carry: [\".wheels\"])"
    exit 0
fi

if [ "${1:-}" = "--prep-pydeps" ]; then       # local machine: copy pure-Python pytest into .gpu_pydeps
    SP=$(ls -d .venv/lib/python3*/site-packages | head -n 1)
    rm -rf .gpu_pydeps && mkdir -p .gpu_pydeps
    for p in pytest _pytest pluggy iniconfig packaging py.py; do cp -r "$SP/$p" .gpu_pydeps/; done
    find .gpu_pydeps -name __pycache__ -prune -exec rm -rf {} +
    echo "wrote .gpu_pydeps ($(du -sh .gpu_pydeps | cut -f1)); carry it to the GPU box"
    exit 0
fi

export PYTHONPATH="$ROOT:$ROOT/kernels:$ROOT/tools${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-$(command -v python || command -v python3)}
STEPS="$OUT/gpu_check_steps.jsonl"
: > "$STEPS"
BUDGET_S=${BUDGET_S:-480}
T_START=$(date +%s)

# run_step NAME LIMIT_S CMD...: run CMD under timeout (capped by the remaining budget), log it, record it
run_step() {
    local name=$1 limit=$2; shift 2
    local left=$(( BUDGET_S - ($(date +%s) - T_START) ))
    if [ "$left" -lt 20 ]; then
        record "$name" skipped 0 0 "overall budget spent"; return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== [$name] (limit ${limit}s): $*"
    local t0=$(date +%s.%N)
    timeout -k 10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
    local rc=$?
    local secs=$("$PY" -c "import sys; print(round($(date +%s.%N) - $t0, 1))")
    tail -n 3 "$OUT/logs/$name.log" | cut -c1-400
    record "$name" ran "$rc" "$secs" ""
}

# record NAME STATUS RC SECONDS NOTE: append one JSON line to $STEPS (parses the log's last line as JSON)
record() {
    STEP_NAME=$1 STEP_STATUS=$2 STEP_RC=$3 STEP_SECS=$4 STEP_NOTE=$5 STEP_LOG="$OUT/logs/$1.log" \
    "$PY" - >> "$STEPS" <<'PYEOF'
import json, os
e = os.environ
rec = {"step": e["STEP_NAME"], "status": e["STEP_STATUS"], "rc": int(e["STEP_RC"]),
       "seconds": float(e["STEP_SECS"]), "timed_out": e["STEP_RC"] in ("124", "137")}
if e["STEP_NOTE"]:
    rec["note"] = e["STEP_NOTE"]
if e["STEP_STATUS"] == "ran":
    rec["ok"] = rec["rc"] == 0
    try:
        lines = open(e["STEP_LOG"], errors="replace").read().splitlines()
    except OSError:
        lines = []
    try:
        rec["result"] = json.loads(lines[-1]) if lines else None
    except ValueError:
        rec["result"] = None
    if rec["rc"] != 0 or rec["result"] is None:
        rec["log_tail"] = lines[-25:]
print(json.dumps(rec))
PYEOF
}

HAS_GPU=0
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && HAS_GPU=1

# ============================================================================ Section: environment
run_step env 60 "$PY" - <<'PYEOF'
import json, platform, subprocess, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available()}
try:
    import triton
    info["triton"] = triton.__version__
except Exception as e:
    info["triton"] = f"unavailable: {e}"
if torch.cuda.is_available():
    info["device"] = torch.cuda.get_device_name()
    info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    info["device_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
for mod in ("pytest", "megatron.core", "transformer_engine"):
    try:
        __import__(mod)
        info[mod] = "yes"
    except Exception:
        info[mod] = "no"
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                         "--format=csv,noheader"], capture_output=True, text=True,
                                        timeout=20).stdout.strip()
except Exception:
    info["nvidia_smi"] = None
try:
    info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
except Exception:
    pass
print(json.dumps(info))
PYEOF

# ============================================================================ Section: kernels (Triton masked attention)
# Tilings first: vincie-tune-attention times 8 candidate tilings per case (a, c, b), each checked
# against the fp64 dense reference, and picks one for all cases (overall_best; today's default is a
# candidate, so its times are in the same JSON). The bench then checks that pick against FlexAttention
# and SDPA and times it beside the dense rate; without a pick it benches the default tilings. The
# layer bench below runs its Triton stacks with the same pick. docs/benchmarks.md, "attention tilings".
TUNED="$OUT/tune_attention.json"
TMA_TILINGS="fwd=128x64x8x3+tma,dkdv=32x128x8x2+tma,dq=128x64x8x2+tma"     # the tuner's fa2_tma
if [ "$HAS_GPU" = 1 ]; then
    run_step check_attention_bf16 75 "$PY" -m vincie_tools.check_attention --device cuda --dtype bfloat16 \
        --cases 18 --seed 0 --out "$OUT/check_attention_bf16.json"
    # the TMA kernels' first run on a GPU: checked on small layouts in a process of their own, because a
    # fault there (a bad descriptor) would poison the tuner's CUDA context for every later candidate
    run_step check_attention_bf16_tma 45 "$PY" -m vincie_tools.check_attention --device cuda --dtype bfloat16 \
        --cases 6 --seed 1 --tilings "$TMA_TILINGS" --out "$OUT/check_attention_bf16_tma.json"
    TUNE_ARGS=()
    "$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); sys.exit(0 if r['ok'] and r['tma_active'] else 1)" \
        "$OUT/check_attention_bf16_tma.json" 2>/dev/null || TUNE_ARGS=(--no-tma)
    run_step tune_attention 120 "$PY" -m vincie_tools.tune_attention --budget-s 90 ${TUNE_ARGS[@]+"${TUNE_ARGS[@]}"} \
        --out "$TUNED"
    BENCH_ARGS=()
else
    # CPU dry run: the interpreter path of the check, and of the tuner and the bench on case a's tiny layout
    run_step check_attention_cpu 120 env TRITON_INTERPRET=1 "$PY" -m vincie_tools.check_attention --device cpu \
        --cases 2 --seed 0 --out "$OUT/check_attention_cpu.json"
    run_step check_attention_cpu_tma 60 env TRITON_INTERPRET=1 "$PY" -m vincie_tools.check_attention --device cpu \
        --cases 1 --seed 1 --tilings "fwd=32x16x4x2+tma,dkdv=16x32x4x2+tma,dq=16x32x4x2+tma" \
        --out "$OUT/check_attention_cpu_tma.json"
    run_step tune_attention 90 "$PY" -m vincie_tools.tune_attention --smoke --cases a --budget-s 60 --reps 1 --out "$TUNED"
    BENCH_ARGS=(--smoke --cases a --skip flex,newlen)
    record pytest_kernels skipped 0 0 "no GPU"
fi
TILINGS=default
if "$PY" -c "import sys; from vincie_kernels.tilings import parse_tilings; parse_tilings('tuned=' + sys.argv[1])" "$TUNED" 2>/dev/null; then
    TILINGS="tuned=$TUNED"
fi
run_step bench_attention 135 "$PY" -m vincie_tools.bench_attention --configs "$TILINGS" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} \
    --out "$OUT/bench_attention.json"

# ============================================================================ Add new sections here (above Summary)

# ============================================================================ Section: carried wheels
# Install the carried wheels (megatron-core, torchao for the FP8 cases without TE, the train smoke's
# data deps, ...) with --no-deps --no-index: the box has no internet (the header says how to fill
# .wheels/); never on a CPU dry run (it would replace the venv's megatron-core).
# only the wheels this interpreter can take (cpXY, abi3 or pure): pip refuses the whole list for one bad tag,
# so carrying cp311 and cp312 builds of megatron-core side by side is fine
PYTAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")' 2>/dev/null)
WHEELS=$(ls shared/wheels/*.whl .wheels/*.whl 2>/dev/null | grep -E -- "-($PYTAG-$PYTAG|cp3[0-9]*-abi3|py3-none)-" | tr '\n' ' ')
if [ "$HAS_GPU" = 1 ] && [ -n "$WHEELS" ]; then
    # shellcheck disable=SC2086
    run_step install_wheels 45 "$PY" -m pip install --no-deps --no-index --disable-pip-version-check -q $WHEELS
    if ! "$PY" -c "import megatron.core" 2>/dev/null; then
        # pip refused (no pip, PEP 668 "externally managed", read-only site): unpack the wheels onto PYTHONPATH
        # shellcheck disable=SC2086
        run_step unpack_wheels 60 "$PY" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]; print('{\"unpacked\": %d}' % (len(sys.argv) - 2))" "$ROOT/.gpu_site" $WHEELS
        export PYTHONPATH="$ROOT/.gpu_site:$PYTHONPATH"
    fi
elif [ "$HAS_GPU" = 1 ]; then
    record install_wheels skipped 0 0 "no wheels under shared/wheels/ or .wheels/"
else
    record install_wheels skipped 0 0 "no GPU (dry run: the local venv is left alone)"
fi
# ============================================================================ Section: train smoke (issue 11)
# One tiny run end to end through the CLIs a user runs: vincie-build-sessions (4 synthetic videos),
# vincie-precompute under torchrun (DALI decodes on cuda:$LOCAL_RANK, encoders on the same GPU), then
# vincie-train under torchrun --standalone, 1 process, model=tiny, 2 steps streaming that latent store,
# dtype auto. On a GPU it fails unless the CUDA paths were really taken: run_info.json says backend
# nccl, device cuda:0 and bf16, and the latent store's blocks say DALI ran "mixed" on GPU LOCAL_RANK
# (a silent CPU fallback fails the step). Without a GPU the same commands run with gloo on the CPU and
# the result says "cpu_dry_run": true. docs/benchmarks.md, "gpu_check.sh".
SMOKE_MISSING=$("$PY" -c "
import importlib.util as u
mods = ('omegaconf', 'hydra', 'zarr', 'nvidia.dali', 'megatron.core', 'av', 'transformers', 'tensorboard')
print(' '.join(m for m in mods if u.find_spec(m.split('.')[0]) is None or u.find_spec(m) is None))" 2>&1)
# 90 s on a GPU (two torchrun starts, Triton JITs, the compiled SwiGLU); the CPU dry run gets more room (its CPU time is ~25 s, and a shared box stretches that)
SMOKE_LIMIT=90; [ "$HAS_GPU" = 1 ] || SMOKE_LIMIT=120
if [ -z "$SMOKE_MISSING" ]; then
    run_step train_smoke "$SMOKE_LIMIT" env HAS_GPU="$HAS_GPU" SMOKE_DIR="$OUT/train_smoke" "$PY" - <<'PYEOF'
import json, math, os, re, shutil, subprocess, sys, time
from pathlib import Path

t0 = time.monotonic()
gpu = os.environ["HAS_GPU"] == "1"
work = Path(os.environ["SMOKE_DIR"])
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)
py = sys.executable
# the shape of the Slurm test's tiny runs; the same overrides for precompute and train (encoders, image size)
tiny = ["model=tiny", "model.num_layers=2", "model.mm_layers=1", "data=synthetic", "train=tiny",
        "data.corpus.image_size=32", "data.pack.token_budget=400", "data.corpus.workers=1"]
torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
env = dict(os.environ, OMP_NUM_THREADS="2")
seconds = {}


def run(name, argv):
    t = time.monotonic()
    r = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds[name] = round(time.monotonic() - t, 1)
    (work / f"{name}.log").write_text(r.stdout + r.stderr)
    if r.returncode:
        sys.exit(f"train_smoke: {name} failed (exit {r.returncode}): {(r.stdout + r.stderr)[-2000:]}")
    return r.stdout + r.stderr


run("sessions", [py, "-m", "vincie_tools.build_sessions", "--synthetic", "4", "--videos", str(work / "videos"),
                 "--out", str(work / "store"), "--world", "demo", "--quiet"])
run("precompute", [*torchrun, "-m", "vincie_tools.precompute", "run", "--store", str(work / "store"),
                   "--out", str(work / "latents"), "--shard", "auto", "--block-rows", "8", "--quiet", *tiny])
log = run("train", [*torchrun, "-m", "vincie_tools.train", *tiny, "train.steps=2", "train.log_every=1",
                    "train.warmup=0", "train.progress=false", "train.save_every=2", "train.dtype=auto",
                    f"data.corpus.latents={work / 'latents'}", f"run_dir={work / 'run'}"])

import zarr

info = json.loads((work / "run" / "run_info.json").read_text())
g = zarr.open_group(str(work / "latents"), mode="r")
made = [dict(g["blocks"][b].attrs["made"]) for b in sorted(g["blocks"].group_keys())]
losses = [float(x) for x in re.findall(r"^step +\d+ \| loss (\S+)", log, flags=re.M)]
dali = [json.loads(d) for d in sorted({json.dumps(d) for m in made for d in m["dali"]})]
res = {"cpu_dry_run": not gpu, "backend": info.get("backend"), "device": info.get("torch_device"),
       "device_name": info.get("device"), "dtype": info.get("dtype"), "world_size": info.get("world_size"),
       "losses": losses, "losses_finite": len(losses) == 2 and all(math.isfinite(x) for x in losses),
       "dali": dali, "encoder_device": sorted({m["encoder_device"] for m in made}),
       "latent_rows": int(g.attrs["n_rows"]), "checkpoint": (work / "run" / "checkpoints" / "latest").is_file(),
       "seconds": dict(seconds, total=round(time.monotonic() - t0, 1))}
# the paths a GPU run must take; on CPU the paths a CPU run takes, so the dry run checks the checks
want = ({"backend": "nccl", "device": "cuda:0", "dtype": "bf16", "encoder_device": ["cuda:0"],
         "dali": [{"device": "mixed", "device_id": 0}]} if gpu else
        {"backend": "gloo", "device": "cpu", "dtype": "fp32", "encoder_device": ["cpu"],
         "dali": [{"device": "cpu", "device_id": None}]})
bad = {k: res[k] for k, v in want.items() if res[k] != v}
if not res["losses_finite"] or not res["checkpoint"]:
    bad.update(losses=losses, checkpoint=res["checkpoint"])
res["ok"] = not bad
if bad:
    res["not_as_expected"], res["expected"] = bad, want
    print(f"train_smoke: not the expected paths: {json.dumps(bad)}", file=sys.stderr, flush=True)
print(json.dumps(res))
sys.exit(1 if bad else 0)
PYEOF
else
    record train_smoke skipped 0 0 "not importable: $SMOKE_MISSING (carry their wheels in .wheels/, see the header)"
fi


# ============================================================================ Section: model on TE/FP8 + layer benchmark (H6)
# (a) the carried wheels are installed above (Section: carried wheels); model_deps says what imports;
# (b) the TE/FP8 tests (tests/model/test_te_spec.py: TE vs local spec, FP8 delayed/current, trainer in FP8);
# (c) tools/vincie_tools/bench_layers.py: 3B-width 4-layer stack, torch/triton cores, TE bf16 and FP8. ~3 min in all.
run_step model_deps 45 "$PY" - <<'PYEOF'
import importlib, json
out = {}
for mod in ("numpy", "packaging", "megatron.core", "transformer_engine", "torchao", "triton", "pytest"):
    try:
        m = importlib.import_module(mod)
        out[mod] = getattr(m, "__version__", "yes")
    except Exception as e:
        out[mod] = f"no ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
print(json.dumps(out))
PYEOF
TE_PYTEST_PATH="$PYTHONPATH"
"$PY" -c "import pytest" 2>/dev/null || TE_PYTEST_PATH="$ROOT/.gpu_pydeps:$PYTHONPATH"
if PYTHONPATH="$TE_PYTEST_PATH" "$PY" -c "import pytest" 2>/dev/null; then
    run_step pytest_te_spec 45 env PYTHONPATH="$TE_PYTEST_PATH" PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 \
        "$PY" -m pytest -q -rs -p no:cacheprovider tests/model/test_te_spec.py
else
    record pytest_te_spec skipped 0 0 "pytest not importable and no .gpu_pydeps (see header)"
fi
# + torchao FP8 cases, fp8_loss, op profile; the Triton core with the tuner's pick
run_step bench_layers 150 "$PY" -m vincie_tools.bench_layers --attention-tilings "$TILINGS" --out "$OUT/bench_layers.json"

# ============================================================================ Section: secondary kernel checks
# (after the benchmarks, so that a tight budget drops these first)
if [ "$HAS_GPU" = 1 ]; then
    PYTEST_PATH="$PYTHONPATH"
    "$PY" -c "import pytest" 2>/dev/null || PYTEST_PATH="$ROOT/.gpu_pydeps:$PYTHONPATH"
    if PYTHONPATH="$PYTEST_PATH" "$PY" -c "import pytest" 2>/dev/null; then
        run_step pytest_kernels 60 env PYTHONPATH="$PYTEST_PATH" "$PY" -m pytest -q -p no:cacheprovider tests/kernels
    else
        record pytest_kernels skipped 0 0 "pytest not importable and no .gpu_pydeps (see header)"
    fi
fi
if [ "$HAS_GPU" = 1 ]; then
    run_step check_attention_fp32 45 "$PY" -m vincie_tools.check_attention --device cuda --dtype float32 \
        --cases 6 --seed 1 --out "$OUT/check_attention_fp32.json"
    run_step check_attention_fp16 40 "$PY" -m vincie_tools.check_attention --device cuda --dtype float16 \
        --cases 6 --seed 2 --out "$OUT/check_attention_fp16.json"
    # a tensor-parallel rank's view (3B: 20 heads at TP 4 = 5 a rank): fewer programs per grid, and the
    # tuner's few-heads candidate (finer tiles) beside the others
    run_step tune_attention_5_heads 60 "$PY" -m vincie_tools.tune_attention --heads 5 --cases c,a --budget-s 40 \
        ${TUNE_ARGS[@]+"${TUNE_ARGS[@]}"} --out "$OUT/tune_attention_5_heads.json"
else
    for s in check_attention_fp32 check_attention_fp16 tune_attention_5_heads; do record "$s" skipped 0 0 "no GPU"; done
fi
# Benchmark editing, one session per model pass against 8 (docs/benchmarks.md, "Batched editing"): edits/s
# both ways beside the largest pixel difference between the two runs' images. A CPU dry run: tiny sizes.
if [ "$HAS_GPU" = 1 ]; then
    run_step bench_editor_batched 60 "$PY" -m vincie_tools.bench_editor --batch 8 --sessions 16 --turns 3 \
        --hidden 1024 --layers 8 --heads 16 --image-tokens 16 --steps 10 --device cuda \
        --out "$OUT/bench_editor_batched.json"
else
    run_step bench_editor_batched 60 "$PY" -m vincie_tools.bench_editor --batch 4 --sessions 4 --turns 2 \
        --hidden 64 --layers 2 --heads 2 --image-tokens 4 --steps 2 --device cpu \
        --out "$OUT/bench_editor_batched.json"
fi
# The editor's KV cache (torch core) against the Triton kernel without it, the core `auto` picks on a GPU
# (docs/kv_cache.md, "Where it runs"): seconds per turn both ways beside the two paths' differences (bf16).
if [ "$HAS_GPU" = 1 ]; then
    run_step bench_editor_kv 45 "$PY" -m vincie_tools.bench_editor --device cuda --baseline-backend triton \
        --hidden 1024 --layers 8 --heads 16 --image-tokens 32 --steps 10 --turns 4 --out "$OUT/bench_editor_kv.json"
else
    run_step bench_editor_kv 45 "$PY" -m vincie_tools.bench_editor --hidden 64 --layers 2 --heads 2 \
        --image-tokens 4 --steps 2 --turns 2 --out "$OUT/bench_editor_kv.json"
fi
# The learned data filters (data/quality.py) per 3-frame session at their published sizes (random weights),
# the aesthetic scores checked by hand in the same run. A CPU dry run: toy sizes.
if ! "$PY" -c "import transformers" 2>/dev/null; then
    record bench_quality skipped 0 0 "transformers not importable"
elif [ "$HAS_GPU" = 1 ]; then
    run_step bench_quality 90 "$PY" -m vincie_tools.bench_sessions --quality --device cuda --quality-sessions 4 \
        --out "$OUT/bench_quality.json"
else
    run_step bench_quality 60 "$PY" -m vincie_tools.bench_sessions --quality --quality-scale tiny --store-size 64 \
        --out "$OUT/bench_quality.json"
fi
# DALI's NVDEC path of real-video decoding against PyAV (data/dali_video.py), on this process's GPU.
if [ "$HAS_GPU" = 1 ] && "$PY" -c "import nvidia.dali, av, scenedetect" 2>/dev/null; then
    run_step pytest_dali_video 60 env PYTHONPATH="${PYTEST_PATH:-$TE_PYTEST_PATH}" VINCIE_DALI_TEST_DEVICE=gpu \
        "$PY" -m pytest -q -rs -p no:cacheprovider tests/data/test_dali_video.py
else
    record pytest_dali_video skipped 0 0 "no GPU, or DALI / PyAV / scenedetect not importable"
fi
# Our SAM2 input steps against Sam2Processor: it needs torchvision, which GPU containers bring
# and the CPU lock cannot (data/grounded_sam.py). Skips itself, with the reason, without it.
PYTEST_PATH=${PYTEST_PATH:-$TE_PYTEST_PATH}
if "$PY" -c "import torchvision, transformers" 2>/dev/null && PYTHONPATH="$PYTEST_PATH" "$PY" -c "import pytest" 2>/dev/null; then
    run_step pytest_sam2_inputs 60 env PYTHONPATH="$PYTEST_PATH" "$PY" -m pytest -q -rs -p no:cacheprovider \
        tests/data/test_grounded_sam.py -k sam2_inputs
else
    record pytest_sam2_inputs skipped 0 0 "torchvision, transformers or pytest not importable"
fi

# ============================================================================ Summary
T_TOTAL=$(( $(date +%s) - T_START ))
STEPS="$STEPS" OUT="$OUT" T_TOTAL="$T_TOTAL" HAS_GPU="$HAS_GPU" "$PY" - <<'PYEOF'
import json, os
steps = [json.loads(l) for l in open(os.environ["STEPS"]) if l.strip()]
env = next((s.get("result") for s in steps if s["step"] == "env"), None)
summary = {"tool": "gpu_check", "has_gpu": os.environ["HAS_GPU"] == "1", "versions": env,
           "total_seconds": int(os.environ["T_TOTAL"]),
           "ok": all(s.get("ok", True) for s in steps),
           "failed": [s["step"] for s in steps if s.get("ok") is False],
           "skipped": [s["step"] for s in steps if s["status"] == "skipped"], "steps": steps}
with open(os.path.join(os.environ["OUT"], "gpu_check.json"), "w") as fh:
    json.dump(summary, fh, indent=1)
PYEOF
# collect: every JSON of a GPU run into benchmarks/ (the committed copy; a CPU dry run must not overwrite it)
if [ "$HAS_GPU" = 1 ] && [ "$OUT" != "$ROOT/benchmarks" ]; then
    mkdir -p "$ROOT/benchmarks"
    cp -f "$OUT"/*.json "$ROOT/benchmarks/" 2>/dev/null || true
fi
"$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); d.pop('steps'); print(json.dumps(d))" "$OUT/gpu_check.json"
