#!/usr/bin/env bash
# One prepared GPU run for a lent device (see DEVELOPERS.md), sized for the 15 minutes of device
# time (one call of ~8 minutes: ~250 s to compile the training step, ~80 s more for the
# inference graph). In order of importance, so that a call cut by its time limit keeps the most:
# 1. the seed architecture as written against the fast path compiled: bf16 + fast fusion +
#    channels_last (the norm traced as var_mean, fused by Inductor; every graph channels-last) +
#    SDPA window attention in training + the few-channel first convs as one matrix product
#    (model.unfold_convs), compiled in MODE (default reduce-overhead: CUDA graphs, the model's
#    forward compiled as one function), trained at batch BATCH (default by the card's memory:
#    12 above 130 GiB, 8 above 100, 6 above 70, else 4; ~4.6 GiB + 9.6 GiB a sample measured at
#    batches 4 and 8 on an H200) and its forward timed at an inference batch FBATCH (default
#    16; predict --batch); each followed by a profile of one more step and one more forward.
#    Measured so far on an H200, default mode: batch 4 (eighteenth session) 4.56x training,
#    3.68x forward; batch 8 (twentieth) 4.85x, 4.05x, 81.6 / 35.8 GiB, a step's wall time 697
#    ms against 674 of device time, the forward 19 % cuDNN layout transposes (since removed:
#    Inductor's layout optimisation forced on). Not measured yet: CUDA graphs, batch 12, the
#    forward without the transposes;
# 2. the same fast path in eager mode at batch 1 (the seed's batch: peak memory against the
#    seed's), after --check (its 3D logits against the plain fp32 path, same weights), its
#    forward timed at 4 windows at a time: what predict runs on a GPU by default;
# 3. the window attention of the first two stages alone at batch 4, eager (seconds; at batch 12
#    MONAI's float32 scores, 18 GB a copy, might not fit): MONAI's, SDPA's (eighteenth session:
#    63.5 and 43.2 ms in training), and in training SDPA with the bias's gradient recomputed
#    (model.sdpa_bias_grad: recompute; SDPA may then take cuDNN's flash kernels, which return no
#    bias gradient; the memory-efficient kernel, which does, took 111 of the compiled step's
#    674 ms at batch 8).
# TORCH_LOGS=perf_hints prints why CUDA graphs were skipped for a graph, if they were.
# The compiled graphs travel from card to card (benchmarks/compile_cache.py): step 1 loads those
# in .gpu-cache/ (an ignored folder: carry it with the call, carry=[".whl", ".gpu-cache"]) and
# saves all it compiled or loaded to $OUT as compile-cache.<i>.z (also when a variant fails or
# the call's `timeout` stops it: its SIGTERM unwinds to the save); copy those into .gpu-cache/
# after the call, so that the next call or the next session's card skips the ~330 s of
# compiling the same graphs (same torch, same kind of card; other graphs compile as before).
# A second call (~350 s: what is left of the 15 minutes after the first), from what the first
# printed; the compiled variant alone, no profile:
#   python3 -m benchmarks train --config seed --steps 5 --fast-batch B --forward-batch 16 \
#     --compile --compile-mode M --compile-cache .gpu-cache \
#     --only "seed as written" "fast fusion + channels_last + sdpa + compile"
#   with B=8 M=reduce-overhead if batch 12 ran out of memory, B=12 M=default if CUDA graphs
#   failed; training below 5x and step 3's recomputed bias gradient faster in training than SDPA's
#   kernel (eager; compiled, its softmax and sum fuse further): add --bias-grad recompute --check
#   (first one eager step each: the bias tables' gradients against the fp32 step's, and all
#   finite; under a minute) and replace the last --only text by
#   "channels_last + sdpa + recomputed bias grad + compile";
#   the forward below 5x with its peak well under the card's memory (35.8 GiB at batch 16 on
#   the H200): --forward-batch 32 (38 -> 33.6 ms a sample from batch 4 to 16; predict --batch 32);
#   or, both >= 5x and the product's code changed since the last card,
#   bash benchmarks/gpu_smoke.sh (about 3 minutes: the product itself on the card).
# Measured already (BENCHMARKS.md), rerun with more time:
#   python3 -m benchmarks kernels --config seed --batch 4 --repeats 3   (eighteenth session)
#   python3 -m benchmarks train --config seed --steps 5 --fast-batch 1 4 --profile 15
#   python3 -m benchmarks data --config seed --tiles 16 --workers 0 4 8 14
# Writes everything to $OUT/gpu.log.
# Usage on the device: bash benchmarks/gpu_check.sh   (needs the project importable: pip install -e .,
# or PYTHONPATH=src with its dependencies installed). The lent device's call (the wheels torch's
# image lacks are downloaded here into the ignored .whl/; carry=[".whl", ".gpu-cache"],
# timeout_s 590; the inner timeout leaves time for a SIGTERM that lands in a compile, which
# Python handles only once the compile returns, to still save the compiled graphs):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit; \
#     timeout 540 bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/uxbseg-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/uxbseg-inductor
BEST="fast fusion + channels_last + sdpa"
MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
BATCH=${BATCH:-$(( ${MIB:-0} > 133120 ? 12 : ${MIB:-0} > 102400 ? 8 : ${MIB:-0} > 71680 ? 6 : 4 ))}
FBATCH=${FBATCH:-16}
MODE=${MODE:-reduce-overhead}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "cores: $(nproc)"
  python3 -c "import torch, transformers, monai; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), \
'transformers', transformers.__version__, 'monai', monai.__version__)"
  TORCH_LOGS=perf_hints python3 -m benchmarks train --config seed --steps 5 \
    --fast-batch "$BATCH" --forward-batch "$FBATCH" --compile --compile-mode "$MODE" \
    --profile 25 --only "seed as written" "$BEST + compile" \
    --compile-cache .gpu-cache --save-compile-cache "$OUT"
  python3 -m benchmarks train --config seed --steps 3 --fast-batch 1 --forward-batch 4 --check \
    --only "seed as written" "$BEST"
  python3 -m benchmarks kernels --config seed --batch 4 --repeats 3 --only attention
} 2>&1 | tee "$OUT/gpu.log"
