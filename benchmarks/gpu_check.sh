#!/usr/bin/env bash
# The GPU check, one prepared script for one GPU (under 8 minutes):
#   1. the test subset marked `gpu` (CUDA training of teacher/student/distil in bf16 and fp16,
#      online fp16 with clipping, SyncBatchNorm conversion, TF32/cudnn settings, prediction,
#      the profiler with CUDA events and compile, ONNX Runtime on CUDA or its fall-back);
#   2. benchmarks/profile_models.py --device cuda at 1024x2048 for the student and teacher
#      variants, printed as one summary table.
# Usage: bash benchmarks/gpu_check.sh   (from any folder; needs CUDA)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/shared:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=disabled PYTHONUNBUFFERED=1

python - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("gpu_check: CUDA is not available here")
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)")
PY

began=$SECONDS
echo "== 1/2 gpu-marked tests"
timeout 300 python -m pytest -m gpu -q -p no:cacheprovider -o addopts="" tests
echo "   tests: $((SECONDS - began)) s"

echo "== 2/2 profiler, 1024x2048, student and teacher"
timeout 240 python benchmarks/profile_models.py --device cuda --sizes 1024x2048 \
    --batch-sizes 1,4 --summary-only
echo "gpu_check: done in $((SECONDS - began)) s"
