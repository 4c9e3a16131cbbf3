"""python -m benchmarks {voxelize,predict,train,data} [options]"""

import sys

from . import bench_data, bench_predict, bench_train, bench_voxelize

COMMANDS = {
    "voxelize": bench_voxelize.main,
    "predict": bench_predict.main,
    "train": bench_train.main,
    "data": bench_data.main,
}

if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    print(f"usage: python -m benchmarks {{{','.join(COMMANDS)}}} [--help]")
    sys.exit(2)
COMMANDS[sys.argv[1]](sys.argv[2:])
