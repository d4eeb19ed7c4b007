#!/usr/bin/env bash
# Proves pyro-vae's CUDA path and times it against the hand-written loop on the GPU.
#
#   bash benchmarks/gpu_check.sh            # MNIST from ../shared/data, else digits
#
# 1. the CLI trains 2 epochs with --device cuda and evaluates the run on the GPU;
# 2. benchmarks/gpu_check.py asserts that parameters, optimizer state and every data
#    split live on the GPU, that 20 training steps make no host-to-device copy and
#    at most 3 tiny device-to-host reads per step (the scalar loss; Pyro's NaN checks
#    in the eager Trace_ELBO), and that evaluation runs on the GPU;
# 3. benchmarks/bench_train.py --device cuda prints GPU step and epoch times and the
#    same ratios vs the hand-written loop (read the wall-time columns on a GPU).
# Written on a machine without a GPU: not yet run.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
DATA=mnist
[ -e ../shared/data/MNIST/raw/train-images-idx3-ubyte ] || DATA=digits
OUT=$(mktemp -d)
python -m pyro_vae train --data "$DATA" --data-root ../shared/data --device cuda --epochs 2 \
    --batch-size 256 --latent-dim 50 --hidden 400 --out "$OUT" --name gpu --no-progress
python -m pyro_vae evaluate "$OUT/gpu" --device cuda --samples 500 --points 256 --no-progress
python benchmarks/gpu_check.py "$DATA"
python benchmarks/bench_train.py --device cuda --data "$DATA" --quick --skip memory
