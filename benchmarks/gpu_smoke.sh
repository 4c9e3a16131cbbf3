#!/usr/bin/env bash
# The product itself on a GPU, end to end: a short second device call after gpu_check.sh (about
# 1-2 minutes; the benchmarks only time model steps, so this is what runs Lightning's bf16-mixed
# training, the fused AdamW and predict's autocast on CUDA at all).
# 1. uxbseg demo with a 0.5-minute budget on 4 synthetic tiles: synth, surface pre-training,
#    training, evaluate, predict - on the GPU (trainer.accelerator: auto);
# 2. predict --tta --probabilities with the same weights, on the GPU and on the CPU (--device
#    auto and cpu), and the two compared point by point: class agreement and the largest
#    probability difference (bf16 autocast against float32);
# 3. predict --window 50 --batch 4 on the GPU: each 100 m tile cut into 9 windows (3 a side at
#    the default overlap 0.25), run 4 at a time under autocast while the next are prepared in a
#    thread (predict's large-file path).
# 4. evaluate --window 50 --report on the GPU: the test tiles scored in windows as predict
#    classifies them, with a picture of each.
# 5. a predict tile cut into 2 x 2 files and predicted as a survey in 50 m windows on the GPU
#    (neighbours' points, windows shared across files, the store), with each file's finds, the
#    run's finds.geojson and a picture of each file (--report).
# Runs on a CPU-only machine too (both predictions on the CPU: agreement 1, difference 0).
# Usage on the device: bash benchmarks/gpu_smoke.sh   (uxbseg importable, as for gpu_check.sh).
# Writes everything to $OUT/smoke.log; exit status 1 if a step failed.
set -uo pipefail
OUT=${OUT:-/tmp/uxbseg-gpu}
WORK=${WORK:-/tmp/uxbseg-smoke}
mkdir -p "$OUT"
rm -rf "$WORK"
WEIGHTS="$WORK/run/FusedSwinCrossEntropy_tpi_clr_swin_best.safetensors"
run() {
  local t0=$SECONDS
  "$@" || { echo "FAILED ($?): $*"; exit 1; }
  echo "($((SECONDS - t0)) s: $*)"
}
{
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  run python3 -m uxbseg env
  run python3 -m uxbseg demo --out "$WORK" --minutes 0.5 --train-tiles 4
  for where in auto cpu; do  # auto: the GPU where there is one
    run python3 -m uxbseg predict --weights "$WEIGHTS" --data "$WORK/data" --tta \
      --probabilities --device "$where" --out "$WORK/pred_$where"
  done
  run python3 -m uxbseg predict --weights "$WEIGHTS" --data "$WORK/data" --window 50 --batch 4 \
    --out "$WORK/pred_windows"
  run python3 -m uxbseg evaluate --weights "$WEIGHTS" --data "$WORK/data" --window 50 --batch 4 \
    --report "$WORK/report_windows"
  ls "$WORK/report_windows"
  run python3 -c "import sys; from pathlib import Path; sys.path.insert(0, '.'); \
from benchmarks.bench_survey import _cut; \
_cut(sorted(Path('$WORK/data/predict').glob('*/*.las'))[0], 2, Path('$WORK/pieces'))"
  run python3 -m uxbseg predict --weights "$WEIGHTS" --input "$WORK/pieces" --window 50 \
    --batch 4 --out "$WORK/pred_survey" --report "$WORK/pred_survey/report"
  ls "$WORK/pred_survey" "$WORK/pred_survey/report"
  head -c 300 "$WORK/pred_survey/finds.geojson"; echo
  run python3 - "$WORK" <<'EOF'
import sys
from pathlib import Path

import laspy
import numpy as np

work = Path(sys.argv[1])
for gpu in sorted((work / "pred_auto").glob("pred_*.la[sz]")):
    a, b = laspy.read(gpu), laspy.read(work / "pred_cpu" / gpu.name)
    probs = [n for n in a.point_format.extra_dimension_names if n.startswith("prob_")]
    diff = max(float(np.abs(np.asarray(a[n]) - np.asarray(b[n])).max()) for n in probs)
    same = float(np.mean(np.asarray(a.classification) == np.asarray(b.classification)))
    print(f"{gpu.name}: {len(a.points)} points, classes equal {same:.4f}, max |dp| {diff:.2e}")
for folder in sorted((work / "pred_windows").glob("*.windows")):
    n = len(list(folder.glob("r*_c*.npy")))
    points = laspy.open(folder.with_suffix(".las")).header.point_count
    print(f"{folder.name}: {n} window grids, {points} points classified")
EOF
} 2>&1 | tee "$OUT/smoke.log"
status=${PIPESTATUS[0]}
# where each step ran, as the commands said (training: device and precision; the model: device)
grep -E "training on |the model runs on " "$OUT/smoke.log" | sort | uniq -c
exit "$status"
