#!/usr/bin/env bash
# The ONE prepared device check (issue #9), run from the repo root:
#   here, first (PyPI):  python bench/gpu_bundle.py             # wheels the image lacks -> .whl/
#                        bash bench/pack_cub.sh                 # CUB at 112 px, q42 -> .data/cub112.tgz
#   device tool:         carry [".whl", ".data"], command "bash bench/gpu_check.sh", timeout_s 540
# The wheels are cp312 (the image's Python); elsewhere they are skipped and the environment is used
# as it is. It starts with a smoke step of seconds (imports, MLflow SQLite store, Optuna journal) that names
# anything missing; without CUDA it stops there with "no GPU" (exit 0). On a GPU it then measures,
# in this order, everything under $OUT (bench/results/<gpu>-<date>.md is written from it):
#   1. compiled step vs compiled raw timm, B=256/224 px and B=128/112 px (and eager, as the baseline)
#   2. study-level train img/s at B=128/112 px: 1 worker vs N workers on the GPU
#   3. frozen-trunk trials/min (eager vs CUDA graphs), and partial fine-tuning's train img/s per cut
#   4. a real fine-tune study on CUB through the CLI: study run, evaluate, report
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl > /dev/null 2>&1 && python3 -c "import sys; sys.exit(sys.version_info[:2] != (3, 12))"; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
fi
python3 -m harness.cli smoke 2>&1 | tee "$OUT/smoke.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "smoke step failed: see the line above"; exit 3; }
if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no GPU: the smoke step passed; nothing else to measure here"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

# Every part runs under its own limit, cut to what is left of BUDGET seconds (default 480: the
# issue's 8 minutes; the device call's timeout_s 540 leaves room for the start and the copy back),
# and the summary is rewritten after each part, so a part that fails or runs out loses only itself.
BUDGET=${BUDGET:-480}
part() {  # part LIMIT LOG CMD...: run CMD with min(LIMIT, time left - 15 s), tee to $OUT/LOG
  local limit=$1 log=$2; shift 2
  local left=$((BUDGET - SECONDS - 15))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then echo "skipped (budget spent): $*" | tee -a "$OUT/$log"; return; fi
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
  python3 bench/gpu_measure.py summary --out "$OUT" > "$OUT/summary.md" 2>/dev/null
}

# 1-3: one Python process per part, so one part's failure leaves the others
part 150 steps.log python3 bench/gpu_measure.py steps --out "$OUT"
part 120 workers.log python3 bench/gpu_measure.py workers --out "$OUT"
part 50 frozen.log python3 bench/gpu_measure.py frozen --out "$OUT"
part 30 partial.log python3 bench/gpu_measure.py partial --out "$OUT"

# 4: a real study on CUB (112 px copy) through the CLI
if [ -f .data/cub112.tgz ]; then
  mkdir -p /tmp/cub && tar -xzf .data/cub112.tgz -C /tmp/cub
  python3 bench/gpu_measure.py study-config --data /tmp/cub/CUB_200_2011 --out "$OUT" > "$OUT/study.yaml"
  part 150 study.log python3 -m harness.cli study run --config "$OUT/study.yaml"
  part 90 study.log python3 -m harness.cli evaluate --config "$OUT/study.yaml"
  part 30 study.log python3 -m harness.cli report --config "$OUT/study.yaml"
  cp "$OUT"/results/gpu-cub/test.csv "$OUT"/results/gpu-cub/comparisons.csv "$OUT"/ 2>/dev/null
  rm -rf "$OUT/results/cache" "$OUT/results/gpu-cub/trials"
fi
python3 bench/gpu_measure.py summary --out "$OUT" | tee "$OUT/summary.md"
echo "gpu_check: ${SECONDS} s"
