#!/usr/bin/env bash
# The prepared GPU check (docs/training.md, "GPU"), about 10 minutes on one GPU:
#   1. the CUDA tests (tests/test_gpu.py: batches and network on the GPU equal the CPU's,
#      `experiment=gpu` trains on CUDA);
#   2. the data-pipeline ratio on the GPU (scripts/bench_pipeline.py);
#   3. three trainings side by side on the same data for at most FIT_MINUTES each, to tell
#      capacity from history length from training budget: `experiment=gpu` (base model,
#      32 card / 64 issuer events), the same with 16 / 32 events, and the `small` model
#      with 32 / 64 events. Each run's metrics.json holds test metrics on the full test
#      split, comparable with `issuer-seq evaluate`'s rows for the same data.
#
#     bash scripts/gpu_check.sh OUT_DIR [DATA_DIR] [FIT_MINUTES]
#
# DATA_DIR defaults to simulating the default world into OUT_DIR/data. Runs from the
# repository root without installing (PYTHONPATH); on a host without network access, put
# the pure-Python dependencies it lacks (hydra-core, omegaconf, antlr4) in a folder named by
# $ISSUER_SEQ_SITE.
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR [DATA_DIR] [FIT_MINUTES]}
data=${2:-}
minutes=${3:-4}
mkdir -p "$out"
export PYTHONPATH="$PWD${ISSUER_SEQ_SITE:+:$ISSUER_SEQ_SITE}" PYTHONUNBUFFERED=1
iseq() { python3 -m issuer_seq.cli "$@"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, pytorch_lightning as pl, numpy, pandas; print('torch', \
torch.__version__, 'lightning', pl.__version__, 'numpy', numpy.__version__, 'pandas', \
pandas.__version__, 'cuda', torch.cuda.is_available())"

echo "== CUDA tests"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log"

if [ -z "$data" ]; then
  data=$out/data
  iseq simulate data_dir="$data"
fi

echo "== data pipeline on the GPU"
python3 scripts/bench_pipeline.py "$data" --model base --batch-size 2048 --k-card 32 \
  --k-issuer 64 --accelerator gpu --precision bf16-mixed --steps 50 2>&1 \
  | tee "$out/pipeline.log"

echo "== trainings (at most $minutes min of fitting each, side by side)"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 1000 \
  > "$out/gpu_util.csv" &
smi=$!
export OMP_NUM_THREADS=4
common=(data_dir="$data" trainer.enable_progress_bar=false "+trainer.max_time=00:00:$(printf %02d "$minutes"):00")
iseq train experiment=gpu run_dir="$out/base_k32" trainer.max_epochs=12 "${common[@]}" \
  > "$out/base_k32.log" 2>&1 &
iseq train experiment=gpu run_dir="$out/base_k16" data.k_card=16 data.k_issuer=32 \
  trainer.max_epochs=12 "${common[@]}" > "$out/base_k16.log" 2>&1 &
iseq train trainer=gpu model=small run_dir="$out/small_k32" data.k_card=32 data.k_issuer=64 \
  trainer.max_epochs=8 "${common[@]}" > "$out/small_k32.log" 2>&1 &
wait $(jobs -p | grep -v "^$smi$")
kill "$smi" 2>/dev/null

python3 - "$out" <<'PY'
import csv, json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = [r for r in csv.reader((out / "gpu_util.csv").open()) if len(r) == 2]
util = [float(r[0]) for r in rows]
mem = [float(r[1]) for r in rows]
print(f"GPU utilization mean {sum(util) / max(len(util), 1):.0f}% max {max(util, default=0):.0f}%,"
      f" memory peak {max(mem, default=0):.0f} MiB (three trainings together)")
for name in ("base_k32", "base_k16", "small_k32"):
    path = out / name / "metrics.json"
    if not path.exists():
        print(f"{name}: no metrics.json; see {name}.log")
        continue
    m = json.loads(path.read_text())
    t, tr = m["approval"]["test"], m["training"]
    print(f"{name}: test AUROC {t['auroc']:.4f} log loss {t['logloss']:.4f} ECE {t['ece']:.4f};"
          f" {tr['epochs']} epochs, {tr['steps']} steps, {tr['fit_seconds']} s,"
          f" {tr['train_samples_per_s']:.0f} samples/s, {tr['parameters']:,} parameters")
PY
