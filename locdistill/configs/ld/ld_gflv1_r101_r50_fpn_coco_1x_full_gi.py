# LD, full recipe + GI feature imitation: GFL R-50 FPN student, GFL R-101 ms-2x teacher, COCO 1x.
# Main LD 0.25/T10 + VLR-LD 0.25/T10 + class KD 10/T2 (as ld_gflv1_r101_r50_fpn_coco_1x_full), plus
# feature imitation on the FPN maps at the general-instance (GI) locations: MSE, weight 2.0 (the LD code's
# IMLoss weight for its R-50 student), per level the 10 GI boxes greedy NMS (IoU 0.3) keeps over the batch.
# Published (LD repo README, pretrained weights, "Main KD + Main LD + VLR LD + GI imitation R101→R50",
# COCO val2017): 42.4 box AP, vs 42.1 without the imitation and 40.1 plain.
# The VLR is selected as the LD code does (distill.vlr_iou_mode="iof"). Both FPNs are 256 wide, so the
# student's maps are compared as they are (no adapter), as in the LD code. docs/distillation.md,
# "Feature imitation", gives the formula of every region.
# Teacher weights: mmdetection's gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth,
# saved as the path below.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.from_recipe("full", "gfl/gfl_r101_fpn_mstrain_2x_coco",
                                           "checkpoints/gfl_r101_fpn_mstrain_2x_coco.pth",
                                           num_classes=80, reduction="sum", vlr_iou_mode="iof",
                                           imitation_mode="gibox", imitation_weight=2.0)
