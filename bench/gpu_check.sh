#!/usr/bin/env bash
# The ONE device check for issue #3, run on the GPU machine from the repo root:
#   bash bench/fetch_gpu_wheels.sh                  # here, first (needs PyPI)
#   device run: carry [".whl"], command "bash bench/gpu_check.sh", timeout ~540 s
# Writes everything under $OUT: bench tables (raw timm vs harness vs PML, eager + compiled; miners
# at B = 128/512/2048), and a 2-trial fine-tune study on generated CUB-layout data at 224 px.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
timeout 420 python3 -m harness.cli bench --out "$OUT" 2>&1 | tee "$OUT/bench.log"
python3 - "$OUT" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from fixtures import make_cub
out = Path(sys.argv[1])
root = make_cub(out / "data", per_class=6, size=(300, 256))
(out / "study.yaml").write_text(f"""name: gpu-check
dataset: cub
data_root: {root}
strict_counts: false
results_dir: {out}/results
image_size: 224
cache_size: 256
backbone: efficientnet_lite0
pretrained: true
trunk: finetune
epochs: 2
budget: {{n_trials: 2}}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
evaluate: {{top_n: 1}}
search_space:
  mining: {{choices: [semihard, offline-hard]}}
  batch_p: 32
  batch_k: 4
""")
PY
timeout 240 python3 -m harness.cli study run --config "$OUT/study.yaml" 2>&1 | tee "$OUT/study.log"
timeout 120 python3 -m harness.cli evaluate --config "$OUT/study.yaml" 2>&1 | tee -a "$OUT/study.log"
rm -rf "$OUT/data" "$OUT/results/cache"
