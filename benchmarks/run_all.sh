#!/usr/bin/env bash
# The speed measurements of benchmarks/README.md, each in its own process, results as JSON.
#
#   benchmarks/run_all.sh [OUTPUT_FOLDER]      (default: /tmp/resnets-benchmarks)
#
# On a machine shared with other jobs, OpenMP's default of spinning while it waits makes
# PyTorch's threads fight the neighbours' for the cores; passive waiting avoids that (see
# README.md for the measured difference). Set OMP_WAIT_POLICY yourself to override it; it
# must be set before Python starts, which is why it is set here.
set -euo pipefail

cd "$(dirname "$0")/.."
out="${1:-/tmp/resnets-benchmarks}"
mkdir -p "$out"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
python="${PYTHON:-.venv/bin/python}"
cifar="${CIFAR10_TRAIN:-/tmp/cifar10/train}"

echo "== ResNet-50 inference, batch 32, 224x224 (OMP_WAIT_POLICY=$OMP_WAIT_POLICY)"
"$python" -m resnets benchmark resnet50 --infer --batch-size 32 --image-size 224 \
    --json "$out/resnet50_infer.json"

echo "== ResNet-50 training, batch 16, 224x224"
"$python" -m resnets benchmark resnet50 --train --batch-size 16 --image-size 224 \
    --json "$out/resnet50_train.json"

echo "== CIFAR ResNet-20 training, batch 128, model only"
"$python" -m resnets benchmark resnet20 --train --batch-size 128 --image-size 32 \
    --json "$out/resnet20_train.json"

echo "== CIFAR ResNet-20 training, batch 128, data pipeline included"
if [ -d "$cifar" ]; then
    "$python" benchmarks/cifar_pipeline.py --data "$cifar" --json "$out/resnet20_pipeline.json"
else
    echo "skipped: no CIFAR-10 image folder at $cifar; see benchmarks/README.md" >&2
fi
