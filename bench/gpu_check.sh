#!/usr/bin/env bash
# Training check on a GPU machine (bench/gpu_check.py): bf16 vs fp32 per architecture, then two DDP ranks.
#   bench/gpu_check.sh                      on the GPU machine (under 4 minutes; JSON to $OUT if set)
#   bench/gpu_check.sh --device cpu --tiny  anywhere, to check the code paths
# PYTHON selects the interpreter (default: python3). Needs torch, numpy, pyarrow, tqdm and pydantic only.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
