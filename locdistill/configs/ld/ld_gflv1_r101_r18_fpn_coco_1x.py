# LD: GFL R-18 FPN student distilled from the GFL R-101 ms-2x teacher, COCO 1x.
# Published (LD repo README, COCO val2017): 36.5 box AP, vs 35.8 for the plain R-18
# (mmdetection's port: 36.5). LD code: 2 GPUs x 3 images, lr 0.00375.
# Teacher weights: mmdetection's gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth,
# saved as the path below (or pass --set distill.teacher_checkpoint=PATH); see docs/distillation.md.
from locdistill.config import load_config

config = load_config("gfl/gfl_r18_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

d = config.distill
d.teacher_config = "gfl/gfl_r101_fpn_mstrain_2x_coco"
d.teacher_checkpoint = "checkpoints/gfl_r101_fpn_mstrain_2x_coco.pth"
d.ld_weight, d.ld_temperature = 0.25, 10.0  # main region: the student's ATSS positives
d.vlr_weight, d.vlr_temperature = 0.25, 10.0  # valuable localisation region
d.kd_weight, d.kd_temperature = 10.0, 2.0  # class-score KD on positives
d.reduction = "sum"  # the original normalisation (grows with images per GPU)
