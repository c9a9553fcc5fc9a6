#!/usr/bin/env bash
# Peak RAM of `vincie-convert export` against the model's size: one training step of a ~0.4B-parameter
# MM-DiT (hidden 1024, 24 layers) saves a dist checkpoint; it is exported with 200 MB shards and as
# one file. Streaming means the first peak follows the shard size, the second the model size.
#   bash benchmarks/cpu/export_peak_rss/run.sh    # from the repo root, with make venv done; ~3 min
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-benchmarks/cpu/export_peak_rss}
W=$(mktemp -d)
.venv/bin/vincie-train experiment=demo data.corpus.videos=24 data.corpus.heldout_videos=4 data.corpus.workers=1 \
  data.pack.token_budget=400 train.steps=1 train.warmup=0 train.progress=false \
  model.hidden_size=1024 model.num_layers=24 model.mm_layers=12 model.num_heads=16 model.ffn_hidden_size=2752 \
  'model.rope_axes_dim=[16,24,24]' run_dir="$W/run" > "$W/train.log" 2>&1
: > "$OUT/results.jsonl"
for shard in 200MB 5GB; do
  line=$(.venv/bin/vincie-convert export --ckpt "$W/run" --out "$W/hf_$shard" --max-shard-size "$shard" | tail -n 1)
  echo "{\"max_shard_size\": \"$shard\", \"export\": $line, \"cpu\": \"$(lscpu | sed -n 's/^Model name: *//p')\", \"git_sha\": \"$(git rev-parse --short HEAD)\"}" | tee -a "$OUT/results.jsonl"
done
du -sh "$W"/hf_* | tee "$OUT/sizes.txt"
# the same run's exports are the same model: every tensor of the sharded folder equals the single file's
.venv/bin/python - "$W" <<'PY' | tee -a "$OUT/results.jsonl"
import json, sys, torch
from vincie_mcore.hf.modeling import VincieMMDiT
a = VincieMMDiT.from_pretrained(f"{sys.argv[1]}/hf_200MB").state_dict()
b = VincieMMDiT.from_pretrained(f"{sys.argv[1]}/hf_5GB").state_dict()
print(json.dumps({"check": "sharded == single file", "tensors": len(a),
                  "equal": a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)}))
PY
rm -rf "$W"
