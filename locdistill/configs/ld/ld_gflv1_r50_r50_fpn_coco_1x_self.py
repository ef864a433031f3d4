# Self-LD (main distillation region only): GFL R-50 FPN distilled from a normally trained GFL R-50
# FPN (same architecture), COCO 1x. Published (LD repo README, "GFocalV1 with Self-LD", main region
# only, COCO val2017): 40.6 box AP, vs 40.1 plain. LD code: 2 GPUs x 3 images (mini-batch 6), lr 0.00375.
# Teacher weights: mmdetection's gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth saved as the
# path below, or your own `locdistill train gfl/gfl_r50_fpn_coco_1x` result.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.from_recipe("ld", "gfl/gfl_r50_fpn_coco_1x", "checkpoints/gfl_r50_fpn_coco_1x.pth",
                                           num_classes=80, reduction="sum")
