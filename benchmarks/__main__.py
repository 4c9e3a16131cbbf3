"""python -m benchmarks {voxelize,predict,train,data,kernels,windows,survey,scale} [options]"""

import sys

from uxbseg.runtime import tune_cpu_allocator

from . import (
    bench_data,
    bench_kernels,
    bench_predict,
    bench_scale,
    bench_survey,
    bench_train,
    bench_voxelize,
    bench_windows,
)

COMMANDS = {
    "voxelize": bench_voxelize.main,
    "predict": bench_predict.main,
    "train": bench_train.main,
    "data": bench_data.main,
    "kernels": bench_kernels.main,
    "windows": bench_windows.main,
    "survey": bench_survey.main,
    "scale": bench_scale.main,
}

if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    print(f"usage: python -m benchmarks {{{','.join(COMMANDS)}}} [--help]")
    sys.exit(2)
# the process runs as the uxbseg commands do; both sides of every comparison share it
TUNED = tune_cpu_allocator()
print(
    "glibc malloc thresholds: "
    + ("raised, as in the uxbseg commands" if TUNED else "glibc's defaults")
    + " (UXBSEG_MALLOC=default keeps the defaults)"
)
COMMANDS[sys.argv[1]](sys.argv[2:])
