#!/usr/bin/env bash
# The device calls of issue 6: train_throughput.py on one GPU.
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=480)
#       full size (84,843 clips): the criteria, batch 1024 eager and compiled, fp16.
#   run(command="bash benchmarks/gpu_check.sh profile", carry=[".whl"], timeout_s=300)
#       30,000 clips (rates only): where the step's time goes at batch 1024, the CNN layouts
#       compared in full float32, the full-data preset and the default at batch 4096.
# .whl holds wheels for Python 3.12 that the device image lacks: soundfile, cffi, pycparser
# (the tutorial pipeline and the waveform store decode with soundfile) and jsonargparse
# (speechcnn.cli imports it); fetch them with `pip download --no-deps --only-binary=:all:
# --python-version 3.12 ...` (see /work/.library/device/README.md).
# A dry run on a CPU: WHEELS= PYTHON=.venv/bin/python CLIPS=1200 STEPS=1 BIG=128 SMALL=64 \
#   bash benchmarks/gpu_check.sh [profile]
set -o pipefail
MODE=${1:-check}
WHEELS=${WHEELS-.whl}
if [ -n "$WHEELS" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
$PY -c "import torch, soundfile, pytorch_lightning as pl; print(torch.__version__, pl.__version__, soundfile.__version__)"
if [ "$MODE" = profile ]; then
    CLIPS=${CLIPS:-30000}
fi
B="$PY benchmarks/train_throughput.py --clips ${CLIPS:-84843} --steps ${STEPS:-20} --warmup 3"
BIG=${BIG:-2048}
SMALL=${SMALL:-1024}
# 0. Generate the data set (real WAV files) and decode it once into the waveform store.
timeout 200 $B --skip a,b,c 2>&1 | tee "$OUT/data.log" || exit 1
if [ "$MODE" = profile ]; then
    B="$B --precision bf16-mixed"
    # 1. Batch 1024, profiled: (a) and (b), 10 steps each; the layouts with TF32 off.
    timeout 120 $B --batch-size $SMALL --epochs 2 --skip c --profile \
        --cnn-layouts nchw,nhwc,frames --json "$OUT/profile1024.json" 2>&1 \
        | tee "$OUT/profile1024.log"
    # 2. The full-data preset (1.4M parameters), batch 2048.
    timeout 90 $B --batch-size $BIG --epochs 4 --skip c --layer recipes/presets/full_data.yaml \
        --json "$OUT/full_data2048.json" 2>&1 | tee "$OUT/full_data2048.log"
    # 3. The default at twice the batch, 4096.
    timeout 60 $B --batch-size $((2 * BIG)) --epochs 4 --skip c \
        --json "$OUT/b4096.json" 2>&1 | tee "$OUT/b4096.log"
else
    # 1. The criteria: recipe default, bf16, batch 2048: CNN layouts, (a) the Lightning
    #    training (three epochs, the first untimed), (b) the bare loop, (c) the tutorial with
    #    8 workers and every core.
    timeout 240 $B --precision bf16-mixed --batch-size $BIG --epochs 3 \
        --cnn-layouts nchw,nhwc,frames --workers 8,all --json "$OUT/b2048.json" 2>&1 \
        | tee "$OUT/b2048.log"
    # 2. Batch 1024: (a) eager and with the opt-in compiled front end, (b).
    timeout 150 $B --precision bf16-mixed --batch-size $SMALL --epochs 3 --compile --skip c \
        --json "$OUT/b1024.json" 2>&1 | tee "$OUT/b1024.log"
    # 3. (a) and (b) in fp16 autocast instead of bf16, batch 2048.
    timeout 60 $B --precision 16-mixed --batch-size $BIG --epochs 3 --skip c \
        --json "$OUT/fp16.json" 2>&1 | tee "$OUT/fp16.log"
fi
echo "=== summary"
cat "$OUT"/*.json
