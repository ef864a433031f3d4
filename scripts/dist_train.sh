#!/usr/bin/env bash
# Train on GPUS processes of this machine (or of several: see docs/distributed.md).
#   scripts/dist_train.sh CONFIG GPUS [locdistill train options...]
# e.g. scripts/dist_train.sh ld/ld_gflv1_r101_r50_fpn_coco_1x 8 --work-dir work_dirs/ld_r50 --amp
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT from the environment, as in the
# original LD / mmdetection scripts. tools/dist_train.sh is this script under the LD code's
# name (docs/from_ld_code.md).
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: $0 CONFIG GPUS [locdistill train options...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
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
    -m locdistill train "$CONFIG" "$@"
