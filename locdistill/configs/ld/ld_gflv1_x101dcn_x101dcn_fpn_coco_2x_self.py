# Self-LD: GFL ResNeXt-101 32x4d DCN (c4-c5) distilled from the same architecture, ms-2x.
# Published (LD repo README, "GFocalV1 with Self-LD", COCO val2017): 47.5 box AP, vs 46.9 plain
# (the LD repo's own baseline; mmdetection's released model of this config reaches 48.1).
# Teacher weights: mmdetection's gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco_20200630_102002-14a2bf25.pth
# saved as the path below.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.paper("gfl/gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco",
                                     "checkpoints/gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco.pth")
