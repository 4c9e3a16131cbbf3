#!/usr/bin/env bash
# One prepared GPU run for a lent device (see DEVELOPERS.md), sized for 15 minutes of device time
# (a compiled variant costs ~6 minutes: ~280 s to compile the training step, ~80 s more for the
# inference graph). In order of importance, so that a call cut by its time limit keeps the most:
# 1. the seed architecture as written against the fast path's one unmeasured candidate for >= 5x:
#    torch.compile of bf16 + fast fusion + channels_last + SDPA attention at batch 4 (compiled
#    without channels_last and without training SDPA it gave 3.48x on an H200), each followed by
#    a profile of one more step;
# 2. the kernels alone at the seed's sizes, batch 1 and 4 (seconds): the instance norms (torch's,
#    the row sums, per-sample batch_norm) and the window attention (MONAI's vs SDPA, with and
#    without gradients);
# 3. eager at batch 1 (~1 minute): channels_last + SDPA with SDPA's math kernel off, which says
#    whether every window attention gets a fused kernel in training (torch warns why not) and
#    times the per-sample batch_norm norms in the step;
# 4. the compile's start-up from a warm Inductor cache in a second process.
# Measured already (BENCHMARKS.md), rerun with more time:
#   python3 -m benchmarks train --config seed --steps 5 --fast-batch 1 4 --check --profile 15
#   python3 -m benchmarks data --config seed --tiles 16 --workers 0 4 8 14
# Writes everything to $OUT/gpu.log. Then, if the machine is still warm and ~2 minutes are left,
# bash benchmarks/gpu_smoke.sh in a second call: the product end to end on the card.
# Usage on the device: bash benchmarks/gpu_check.sh   (needs the project importable: pip install -e .,
# or PYTHONPATH=src with its dependencies installed). BATCH=8 bash ... compiles at batch 8 instead
# (compiled at batch 4 in the default layout it took 58.8 GiB on an H200; batch 8 would need an
# estimated ~110 GiB: an H200 only).
set -uo pipefail
OUT=${OUT:-/tmp/uxbseg-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/uxbseg-inductor
BEST="channels_last + sdpa + compile"
BATCH=${BATCH:-4}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "cores: $(nproc)"
  python3 -c "import torch, transformers, monai; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), \
'transformers', transformers.__version__, 'monai', monai.__version__)"
  python3 -m benchmarks train --config seed --steps 5 --fast-batch "$BATCH" --compile --profile 25 \
    --only "seed as written" "$BEST"
  python3 -m benchmarks kernels --config seed --batch 1
  python3 -m benchmarks kernels --config seed --batch 4
  python3 -m benchmarks train --config seed --steps 3 --fast-batch 1 --fused-attention \
    --only "seed as written" "channels_last + sdpa"
  echo "compile, warm Inductor cache (a second process):"
  python3 -m benchmarks train --config seed --steps 3 --fast-batch "$BATCH" --compile --only "$BEST"
} 2>&1 | tee "$OUT/gpu.log"
