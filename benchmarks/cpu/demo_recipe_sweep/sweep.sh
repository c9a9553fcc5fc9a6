#!/bin/bash
# usage: sweep.sh NAME SEED overrides...  (appends to /tmp/exp/sweep.jsonl)
name=$1; seed=$2; shift 2
cd /work/main
out=$(.venv/bin/vincie-demo run_dir=/tmp/exp/r_${name}_s$seed seed=$seed data.corpus.min_change=2 train.steps=1000 train.lr=1.2e-2 train.progress=false "$@" 2>/tmp/exp/r_${name}_s$seed.err | tail -1)
python3 - "$name" "$seed" "$out" "$*" <<'PY'
import json,sys
name,seed,out,ov=sys.argv[1:]
try: d=json.loads(out)
except Exception: d={"error":out[-300:]}
rec={"name":name,"seed":int(seed),"over":ov,**{k:d.get(k) for k in ["turn_success","success_by_edit","minutes","seconds_per_step","final_loss","sessions","error"]}}
open("/tmp/exp/sweep.jsonl","a").write(json.dumps(rec)+"\n"); print(json.dumps(rec))
PY
