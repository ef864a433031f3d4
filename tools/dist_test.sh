#!/usr/bin/env bash
# The LD code's `tools/dist_test.sh CONFIG CHECKPOINT GPUS --eval bbox|mAP [args]`, run by locdistill:
#   tools/dist_test.sh configs/ld/ld_gflv1_r101_r18_fpn_voc.py work_dirs/ld_gflv1_r101_r18_fpn_voc/epoch_4.pth 8 --eval mAP
# --eval bbox prints the COCO metrics, --eval mAP the VOC table, AP: and AP50 ... AP95; the rest
# goes to `locdistill test` (docs/from_ld_code.md). PORT, NNODES, NODE_RANK and MASTER_ADDR come
# from the environment as in the original (scripts/dist_test.sh).
exec "$(dirname "$0")/../scripts/dist_test.sh" "$@"
