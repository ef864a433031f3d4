# Teacher assistant (TA), main distillation region only: GFL R-18 FPN distilled from the LD-distilled
# R-34 of ld_gflv1_r101_r34_fpn_coco_1x (chain R-101 -> R-34 -> R-18), COCO 1x.
# The LD repo README publishes no COCO number for this chain; compare with the direct
# R-101 -> R-18 result (36.5 box AP) of ld_gflv1_r101_r18_fpn_coco_1x, whose recipe this follows.
# Run `locdistill train ld/ld_gflv1_r101_r34_fpn_coco_1x` first: its checkpoint holds the student
# only, so it is used here as is (the teacher is built from that config's `model` section).
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r18_fpn_coco_1x")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.from_recipe("ld", "ld/ld_gflv1_r101_r34_fpn_coco_1x",
                                           "work_dirs/ld_gflv1_r101_r34_fpn_coco_1x/latest.pth",
                                           num_classes=80, reduction="sum")
