# LD (main distillation region only): GFL R-101 FPN student (ms-2x), GFL R-101-DCN (c3-c5) ms-2x teacher.
# Published (LD repo README, "GFocalV1 with LD", main region only, COCO val2017): 45.4 box AP,
# vs 44.6 for the plain R-101 2x (test-dev 45.6 vs 45.0). No VLR, no class KD, as the v1 code.
# LD code: 2 GPUs x 3 images (mini-batch 6), lr 0.00375, multi-scale 2x (short side 480-800).
# Teacher weights: mmdetection's gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco_20200630_102002-134b07df.pth
# saved as the path below (it loads as is; see docs/mmdet_weights.md).
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r101_fpn_mstrain_2x_coco")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.from_recipe("ld", "gfl/gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco",
                                           "checkpoints/gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco.pth",
                                           num_classes=80, reduction="sum")
