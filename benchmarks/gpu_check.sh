#!/usr/bin/env bash
# The one device call of issue 6: train_throughput.py on one GPU, full-size (84,843 clips).
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=420)
# .whl holds soundfile, cffi and pycparser wheels for Python 3.12 (the device image lacks them);
# fetch them with `pip download --no-deps --only-binary=:all: --python-version 3.12 ...`.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, soundfile, pytorch_lightning as pl; print(torch.__version__, pl.__version__, soundfile.__version__)"
B="python3 benchmarks/train_throughput.py --clips 84843 --steps 20 --warmup 3 --precision bf16-mixed"
L="--cnn-layouts nchw,nhwc,frames"
# 1. batch 1024: CNN layouts; (a) eager and with the opt-in torch.compile of the CNN; (b).
timeout 200 $B --batch-size 1024 $L --compile --skip c --json "$OUT/b1024.json" 2>&1 \
    | tee "$OUT/b1024.log"
# 2. batch 2048: the same, and (c) with 8 workers and every core.
timeout 200 $B --batch-size 2048 $L --compile --workers 8,all --json "$OUT/b2048.json" 2>&1 \
    | tee "$OUT/b2048.log"
echo "=== summary"
cat "$OUT"/*.json
