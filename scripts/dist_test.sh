#!/usr/bin/env bash
# Evaluate a checkpoint on GPUS processes; rank 0 gathers the detections and scores them.
#   scripts/dist_test.sh CONFIG CHECKPOINT GPUS [locdistill test options...]
# e.g. scripts/dist_test.sh gfl/gfl_r50_fpn_coco_1x work_dirs/gfl_r50/latest.pth 8 --out results.json
set -euo pipefail

if [ "$#" -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [locdistill test options...]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python}

exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$GPUS" \
    -m locdistill test "$CONFIG" "$CHECKPOINT" "$@"
