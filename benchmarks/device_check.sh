#!/usr/bin/env bash
# The prepared GPU check (issue 15): GFL R-50 training img/s in fp32 vs bf16 / fp16 AMP vs AMP +
# channels-last, GFL R-50 vs torchvision FCOS R-50 (training and inference), and the LD step
# overhead, as ratios measured in one run (benchmarks/device_check.py says how). Synthetic data,
# random weights, no downloads. Under 5 minutes on one GPU; without CUDA a CPU fallback with
# small models that ends in about a minute.
#
#   bash benchmarks/device_check.sh                          # from the repository root or anywhere
#   bash benchmarks/device_check.sh --json-out /tmp/dc.json  # arguments go to device_check.py
#   PYTHON=/path/to/python bash benchmarks/device_check.sh
#
# No install step: locdistill is imported from this checkout (PYTHONPATH), and the check needs
# only torch, torchvision, numpy, pillow and rich. (`pip install -e .` would also want
# faster-coco-eval, which an offline GPU machine may lack and cannot fetch.)
# DEVICE_CHECK_TIMEOUT (seconds, default 290) bounds the whole run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
        py="$VIRTUAL_ENV/bin/python"
    elif command -v python3 >/dev/null 2>&1; then
        py="python3"
    else
        py="python"
    fi
fi
if ! "$py" -c "import torch, torchvision" >/dev/null 2>&1; then
    echo "device_check: $py cannot import torch and torchvision; set PYTHON=/path/to/python" >&2
    exit 2
fi

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::UserWarning}"

limit="${DEVICE_CHECK_TIMEOUT:-290}"
if command -v timeout >/dev/null 2>&1; then
    # SIGINT first (Python prints where it was), SIGKILL 10 s later
    exec timeout --signal=INT --kill-after=10 "$limit" "$py" benchmarks/device_check.py "$@"
fi
exec "$py" benchmarks/device_check.py "$@"
