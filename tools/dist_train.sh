#!/usr/bin/env bash
# The LD code's `tools/dist_train.sh CONFIG GPUS [args]`, run by locdistill:
#   tools/dist_train.sh configs/ld/ld_gflv1_r101_r50_fpn_coco_1x.py 8 [--work-dir D] [--cfg-options k=v ...]
# CONFIG may be the LD code's or mmdetection's config path or name, or a locdistill config
# (docs/from_ld_code.md); the rest goes to `locdistill train`. PORT, NNODES, NODE_RANK and
# MASTER_ADDR come from the environment as in the original (scripts/dist_train.sh).
exec "$(dirname "$0")/../scripts/dist_train.sh" "$@"
