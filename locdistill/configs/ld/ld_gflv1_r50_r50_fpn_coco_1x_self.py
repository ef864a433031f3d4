# Self-LD: GFL R-50 FPN distilled from a normally trained GFL R-50 FPN (same architecture), COCO 1x.
# Published (LD repo README, "GFocalV1 with Self-LD", COCO val2017): 40.6 box AP, vs 40.1 plain.
# Teacher weights: mmdetection's gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth saved as the
# path below, or your own `locdistill train gfl/gfl_r50_fpn_coco_1x` result.
from locdistill.config import load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

d = config.distill
d.teacher_config = "gfl/gfl_r50_fpn_coco_1x"
d.teacher_checkpoint = "checkpoints/gfl_r50_fpn_coco_1x.pth"
d.ld_weight, d.ld_temperature = 0.25, 10.0
d.vlr_weight, d.vlr_temperature = 0.25, 10.0
d.kd_weight, d.kd_temperature = 10.0, 2.0
d.reduction = "sum"
