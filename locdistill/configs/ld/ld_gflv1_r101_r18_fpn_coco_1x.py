# LD: GFL R-18 FPN student distilled from the GFL R-101 ms-2x teacher, COCO 1x.
# Published (LD repo README, COCO val2017): 36.5 box AP, vs 35.8 for the plain R-18
# (mmdetection's port: 36.5). LD code: 2 GPUs x 3 images, lr 0.00375.
# Teacher weights: mmdetection's gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth,
# saved as the path below (or pass --set distill.teacher_checkpoint=PATH); see docs/distillation.md.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r18_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

# main LD 0.25/T10 on the student's positives, VLR 0.25/T10, class KD 10/T2, "sum" reduction
config.distill = DistillConfig.paper("gfl/gfl_r101_fpn_mstrain_2x_coco", "checkpoints/gfl_r101_fpn_mstrain_2x_coco.pth")
