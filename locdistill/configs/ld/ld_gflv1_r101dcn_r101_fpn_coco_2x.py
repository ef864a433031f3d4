# LD: GFL R-101 FPN student (ms-2x) distilled from the GFL R-101-DCN (c3-c5) ms-2x teacher.
# Published (LD repo README, "GFocalV1 with LD", COCO val2017): 45.4 box AP, vs 44.6 plain R-101 2x.
# Teacher weights: mmdetection's gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco_20200630_102002-134b07df.pth
# saved as the path below (it loads as is; see docs/mmdet_weights.md).
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r101_fpn_mstrain_2x_coco")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.paper("gfl/gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco",
                                     "checkpoints/gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco.pth")
