#!/usr/bin/env bash
# Evaluate a checkpoint on GPUS processes; rank 0 gathers the detections and scores them.
#   scripts/dist_test.sh CONFIG CHECKPOINT GPUS [locdistill test options...]
# e.g. scripts/dist_test.sh gfl/gfl_r50_fpn_coco_1x work_dirs/gfl_r50/latest.pth 8 --out results.json
#      scripts/dist_test.sh voc/ld_gflv1_r101_r18_fpn_voc work_dirs/ld_r18_voc/epoch_4.pth 8 --eval mAP
# (tools/dist_test.sh is this script under the LD code's name; docs/from_ld_code.md)
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
