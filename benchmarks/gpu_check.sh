#!/usr/bin/env bash
# One prepared GPU run for a lent device (see DEVELOPERS.md): the seed architecture as written vs
# the fast path, same card, same run; the data pipeline on the device's cores; torch.compile's
# start-up with a cold and a warm Inductor cache. Writes everything to $OUT/gpu.log.
# Usage on the device: bash benchmarks/gpu_check.sh   (needs the project importable: pip install -e .,
# or PYTHONPATH=src with its dependencies installed)
set -uo pipefail
OUT=${OUT:-/tmp/uxbseg-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/uxbseg-inductor
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc
  python3 -m benchmarks train --config seed --steps 5 --fast-batch 1 2 4 --checkpoint --check
  python3 -m benchmarks data --config seed --tiles 16 --workers 0 4 8 14
  echo "compile, cold Inductor cache:"
  python3 -m benchmarks train --config seed --steps 5 --fast-batch 4 --compile --only compile
  echo "compile, warm Inductor cache (a second process):"
  python3 -m benchmarks train --config seed --steps 5 --fast-batch 4 --compile --only compile
} 2>&1 | tee "$OUT/gpu.log"
