# LD (main distillation region only): GFL R-18 FPN student, GFL R-101 ms-2x teacher, COCO 1x.
# Published (LD repo README, "GFocalV1 with LD", main region only, COCO val2017): 36.5 box AP,
# vs 35.8 for the plain R-18 (test-dev 36.8 vs 36.0). The v1 code of that table had main-region LD
# only: no VLR, no class KD. The full recipe (main LD + VLR-LD + class KD, 37.5 box AP) is
# ld_gflv1_r101_r18_fpn_coco_1x_full.
# LD code: 2 GPUs x 3 images (mini-batch 6), lr 0.00375 (our scaling rule gives it on 2 GPUs).
# Teacher weights: mmdetection's gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth,
# saved as the path below (or pass --set distill.teacher_checkpoint=PATH); see docs/distillation.md.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r18_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

# main LD 0.25/T10 on the student's positives; no VLR, no class KD; "sum" reduction
config.distill = DistillConfig.from_recipe("ld", "gfl/gfl_r101_fpn_mstrain_2x_coco",
                                           "checkpoints/gfl_r101_fpn_mstrain_2x_coco.pth",
                                           num_classes=80, reduction="sum")
