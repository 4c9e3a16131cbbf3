#!/usr/bin/env bash
# One prepared GPU run for a lent device (see DEVELOPERS.md): the seed architecture as written vs
# the fast path, same card, same run; then the data pipeline. Writes everything to $OUT/gpu.log.
# Usage on the device: bash benchmarks/gpu_check.sh   (needs the project installed: pip install -e .)
set -euo pipefail
OUT=${OUT:-/tmp/uxbseg-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR="$OUT/inductor"
{
  nvidia-smi --query-gpu=name,memory.total --format=csv
  python -m benchmarks train --config seed --steps 5 --fast-batch 1 2 4 --compile
  python -m benchmarks data --config seed --tiles 16 --workers 0 1 2 4
} 2>&1 | tee "$OUT/gpu.log"
