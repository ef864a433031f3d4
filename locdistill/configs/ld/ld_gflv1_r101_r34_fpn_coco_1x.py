# LD: GFL R-34 FPN student distilled from the GFL R-101 ms-2x teacher, COCO 1x.
# Published (LD repo README, COCO val2017): 39.8 box AP, vs 38.9 for the plain R-34
# (mmdetection's port: 39.9). Also the teacher assistant of ld_gflv1_r34_r18_fpn_coco_1x_ta.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r34_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.paper("gfl/gfl_r101_fpn_mstrain_2x_coco", "checkpoints/gfl_r101_fpn_mstrain_2x_coco.pth")
