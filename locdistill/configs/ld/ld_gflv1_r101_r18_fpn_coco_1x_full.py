# LD, full recipe: GFL R-18 FPN student, GFL R-101 ms-2x teacher, COCO 1x; main LD 0.25/T10 +
# VLR-LD 0.25/T10 + class KD 10/T2 on the main region, "sum" reduction.
# Published (LD repo README, pretrained weights, "Main KD + Main LD + VLR LD R101→R18 1x", COCO val2017):
# 37.5 box AP, vs 36.5 with main-region LD only (ld_gflv1_r101_r18_fpn_coco_1x) and 35.8 plain.
# The VLR is selected as the LD code does (distill.vlr_iou_mode="iof": its "DIoU" divides the
# intersection by the anchor's area); locdistill's default is the true DIoU (docs/distillation.md).
# LD code: 2 GPUs x 3 images (mini-batch 6), lr 0.00375.
# Teacher weights: mmdetection's gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth,
# saved as the path below.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r18_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.from_recipe("full", "gfl/gfl_r101_fpn_mstrain_2x_coco",
                                           "checkpoints/gfl_r101_fpn_mstrain_2x_coco.pth",
                                           num_classes=80, reduction="sum", vlr_iou_mode="iof")
