#!/usr/bin/env bash
# GPU readiness check (scripts/gpu_check.py): a few steps of reward model, DPO, DR-DPO, WDPO,
# DRRO-GRPO, ZeRO-2 and ZeRO-3 on one GPU, one JSON. Needs torch, lightning, transformers, peft,
# torchmetrics; the repository is put on sys.path, nothing is installed or downloaded.
#   scripts/gpu_check.sh [OUTPUT.json] [extra gpu_check.py flags]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-gpu_check.json}"
shift || true
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 480 python "$here/gpu_check.py" --output "$out" "$@"
