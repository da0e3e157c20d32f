#!/usr/bin/env bash
# One prepared GPU check, well under 10 minutes: simulate a larger world, train the `gpu`
# experiment for a bounded number of steps, and print samples/s, GPU utilization and peak
# memory, plus the pipeline ratio on the GPU. Run from the repository root on a CUDA host:
#     bash scripts/gpu_check.sh [OUT_DIR]
set -euo pipefail
out=${1:-/tmp/issuer_seq_gpu}
mkdir -p "$out"
python -m pip install -q -e ".[test]" >/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
issuer-seq simulate data_dir="$out/data" n_cards=100000 n_issuers=500 n_merchants=8000 days=60 \
  chunk_cards=25000
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
  > "$out/gpu_util.csv" &
smi=$!
issuer-seq train experiment=gpu data_dir="$out/data" run_dir="$out/run" \
  trainer.max_epochs=1 trainer.max_steps=800 trainer.enable_progress_bar=false \
  data.max_eval_examples=200000 | tee "$out/train.log"
kill $smi || true
python - "$out" <<'PY'
import json, sys, pathlib, torch
out = pathlib.Path(sys.argv[1])
rows = [l.split(",") for l in (out / "gpu_util.csv").read_text().splitlines() if l.strip()]
util = [float(r[0]) for r in rows]; mem = [float(r[1]) for r in rows]
m = json.loads((out / "run" / "metrics.json").read_text())
print(json.dumps({
    "train_samples_per_s": m["training"]["train_samples_per_s"],
    "gpu_util_mean_pct": round(sum(util) / max(len(util), 1), 1),
    "gpu_util_max_pct": max(util, default=0.0),
    "gpu_mem_peak_mib": max(mem, default=0.0),
    "test_approval": m["approval"]["test"],
}, indent=2))
PY
python scripts/bench_pipeline.py "$out/data" --model base --batch-size 2048 --k-card 32 \
  --k-issuer 64 --accelerator gpu --precision bf16-mixed --steps 50
