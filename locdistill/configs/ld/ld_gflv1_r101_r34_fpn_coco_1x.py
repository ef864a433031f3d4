# LD (main distillation region only): GFL R-34 FPN student, GFL R-101 ms-2x teacher, COCO 1x.
# Published (LD repo README, "GFocalV1 with LD", main region only, COCO val2017): 39.8 box AP,
# vs 38.9 for the plain R-34 (test-dev 40.0 vs 39.2). No VLR, no class KD, as the v1 code of that
# table; the full recipe (41.0 box AP) is ld_gflv1_r101_r34_fpn_coco_1x_full.
# LD code: 2 GPUs x 3 images (mini-batch 6), lr 0.00375.
# Also the teacher assistant of ld_gflv1_r34_r18_fpn_coco_1x_ta.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r34_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.from_recipe("ld", "gfl/gfl_r101_fpn_mstrain_2x_coco",
                                           "checkpoints/gfl_r101_fpn_mstrain_2x_coco.pth",
                                           num_classes=80, reduction="sum")
