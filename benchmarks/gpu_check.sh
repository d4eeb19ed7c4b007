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
#    same ratios vs the hand-written loop (read the wall-time columns on a GPU), with the
#    fp32-medium and bf16 precision settings (TF32 and bfloat16 on the GPU) and the
#    compiled objective (elbo-compile) as rows of their own;
# 4. with two GPUs, the 2-rank torchrun path (NCCL) trains and resumes (see the end).
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
python benchmarks/bench_train.py --device cuda --data "$DATA" --quick --skip memory \
    --precisions fp32-medium bf16 --compiled
# 4. with two or more GPUs: the 2-rank data-parallel path (NCCL, one GPU per rank) trains
#    2 epochs through torchrun, and a resume by 2 ranks continues it; with one GPU, says so.
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -ge 2 ]; then
    python -m torch.distributed.run --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29517 \
        -m pyro_vae train --data "$DATA" --data-root ../shared/data --device cuda --epochs 2 \
        --batch-size 512 --latent-dim 50 --hidden 400 --out "$OUT" --name ddp --no-progress
    python -m torch.distributed.run --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29518 \
        -m pyro_vae train --resume "$OUT/ddp" --epochs 3 --no-progress
    python -c "import json, sys; rows = [json.loads(l) for l in open(sys.argv[1])]; \
print('2-rank NCCL fit:', [(r['epoch'], round(r['val_elbo'], 2), round(r['images_per_second'])) for r in rows])" \
        "$OUT/ddp/metrics.jsonl"
else
    echo "2-rank data-parallel check skipped: $GPUS CUDA device(s), it needs 2"
fi
