#!/usr/bin/env bash
# One prepared GPU run for a lent device (see DEVELOPERS.md): the seed architecture as written vs
# the fast path, same card, same run, each variant followed by a profile of one more step;
# torch.compile's start-up with a cold and then a warm Inductor cache. The data pipeline was
# measured on a lent machine's 16 cores before (BENCHMARKS.md): `python3 -m benchmarks data
# --config seed --tiles 16 --workers 0 4 8 14`. Writes everything to $OUT/gpu.log.
# Usage on the device: bash benchmarks/gpu_check.sh   (needs the project importable: pip install -e .,
# or PYTHONPATH=src with its dependencies installed)
set -uo pipefail
OUT=${OUT:-/tmp/uxbseg-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/uxbseg-inductor
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "cores: $(nproc)"
  python3 -c "import torch, transformers, monai; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), \
'transformers', transformers.__version__, 'monai', monai.__version__)"
  # seed as written; bf16 + fast fusion + sdpa at batch 1 (the memory goal), + channels_last,
  # at batch 4, and compiled at batch 4 (cold Inductor cache)
  python3 -m benchmarks train --config seed --steps 5 --fast-batch 1 4 --compile --profile 25
  echo "compile, warm Inductor cache (a second process):"
  python3 -m benchmarks train --config seed --steps 3 --fast-batch 4 --compile --only compile
} 2>&1 | tee "$OUT/gpu.log"
