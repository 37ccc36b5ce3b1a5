#!/usr/bin/env bash
# The second device call of issue 6 (after gpu_check.sh): where the Lightning step's time goes
# at batch 1024, the CNN layouts compared in full float32, the full-data preset's throughput and
# the default at batch 4096. 30,000 generated clips: rates, not whole epochs, are measured here.
#   run(command="bash benchmarks/gpu_profile.sh", carry=[".whl"], timeout_s=300)
# A dry run on a CPU: WHEELS= PYTHON=.venv/bin/python CLIPS=1200 STEPS=1 BIG=64 SMALL=16 \
#   bash benchmarks/gpu_profile.sh
set -o pipefail
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
B="$PY benchmarks/train_throughput.py --clips ${CLIPS:-30000} --steps ${STEPS:-20} --warmup 3"
B="$B --precision bf16-mixed"
timeout 120 $B --skip a,b,c 2>&1 | tee "$OUT/data.log" || exit 1
# 1. Batch 1024, profiled: (a) and (b), 10 steps each; the layouts with TF32 off.
timeout 120 $B --batch-size ${SMALL:-1024} --epochs 2 --skip c --profile \
    --cnn-layouts nchw,nhwc,frames --json "$OUT/profile1024.json" 2>&1 | tee "$OUT/profile1024.log"
# 2. The full-data preset (1.4M parameters), batch 2048.
timeout 90 $B --batch-size ${BIG:-2048} --epochs 4 --skip c --layer recipes/presets/full_data.yaml \
    --json "$OUT/full_data2048.json" 2>&1 | tee "$OUT/full_data2048.log"
# 3. The default at twice the batch, 4096.
timeout 60 $B --batch-size $((2 * ${BIG:-2048})) --epochs 4 --skip c \
    --json "$OUT/b4096.json" 2>&1 | tee "$OUT/b4096.log"
echo "=== summary"
cat "$OUT"/*.json
