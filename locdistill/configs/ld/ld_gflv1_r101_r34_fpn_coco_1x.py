# LD: GFL R-34 FPN student distilled from the GFL R-101 ms-2x teacher, COCO 1x.
# Published (LD repo README, COCO val2017): 39.8 box AP, vs 38.9 for the plain R-34
# (mmdetection's port: 39.9). Also the teacher assistant of ld_gflv1_r34_r18_fpn_coco_1x_ta.
from locdistill.config import load_config

config = load_config("gfl/gfl_r34_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

d = config.distill
d.teacher_config = "gfl/gfl_r101_fpn_mstrain_2x_coco"
d.teacher_checkpoint = "checkpoints/gfl_r101_fpn_mstrain_2x_coco.pth"
d.ld_weight, d.ld_temperature = 0.25, 10.0
d.vlr_weight, d.vlr_temperature = 0.25, 10.0
d.kd_weight, d.kd_temperature = 10.0, 2.0
d.reduction = "sum"
