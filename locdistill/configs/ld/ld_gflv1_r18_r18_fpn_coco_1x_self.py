# Self-LD (main distillation region only): GFL R-18 FPN distilled from a normally trained GFL R-18
# FPN, COCO 1x. Published (LD repo README, "GFocalV1 with Self-LD", main region only, COCO val2017):
# 36.1 box AP, vs 35.8 plain. LD code: 2 GPUs x 3 images (mini-batch 6), lr 0.00375.
# Teacher weights: no released R-18 model; train it first (`locdistill train gfl/gfl_r18_fpn_coco_1x`)
# and copy work_dirs/gfl_r18_fpn_coco_1x/latest.pth to the path below.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r18_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.from_recipe("ld", "gfl/gfl_r18_fpn_coco_1x", "checkpoints/gfl_r18_fpn_coco_1x.pth",
                                           num_classes=80, reduction="sum")
