# LD (main distillation region only): GFL R-50 FPN student, GFL R-101 ms-2x teacher, COCO 1x.
# Published (LD repo README, "GFocalV1 with LD", main region only, COCO val2017): 41.1 box AP,
# vs 40.1 for the plain R-50 (test-dev 41.2 vs 40.5). No VLR, no class KD, as the v1 code of that
# table; the full recipe (42.1 box AP) is ld_gflv1_r101_r50_fpn_coco_1x_full.
# LD code: 2 GPUs x 3 images (mini-batch 6), lr 0.00375.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.from_recipe("ld", "gfl/gfl_r101_fpn_mstrain_2x_coco",
                                           "checkpoints/gfl_r101_fpn_mstrain_2x_coco.pth",
                                           num_classes=80, reduction="sum")
