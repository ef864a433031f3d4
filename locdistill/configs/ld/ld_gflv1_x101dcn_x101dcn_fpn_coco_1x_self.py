# Self-LD (main distillation region only): GFL ResNeXt-101 32x4d DCN (c4-c5) distilled from a normally
# trained model of the same architecture, COCO 1x, single scale.
# Published (LD repo README, "GFocalV1 with Self-LD", main region only, COCO val2017): 47.5 box AP,
# vs 46.9 plain (gfl/gfl_x101_32x4d_fpn_dconv_c4-c5_coco_1x). That row's schedule is 1x and its
# mini-batch 4: here 2 images per GPU (on 2 GPUs, lr 0.0025 by the scaling rule).
# Teacher weights: no released 1x model; train gfl/gfl_x101_32x4d_fpn_dconv_c4-c5_coco_1x first and
# copy work_dirs/gfl_x101_32x4d_fpn_dconv_c4-c5_coco_1x/latest.pth to the path below.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_x101_32x4d_fpn_dconv_c4-c5_coco_1x")
config.data.batch_size = 2  # images per GPU (the README's mini-batch 4 on 2 GPUs)

config.distill = DistillConfig.from_recipe("ld", "gfl/gfl_x101_32x4d_fpn_dconv_c4-c5_coco_1x",
                                           "checkpoints/gfl_x101_32x4d_fpn_dconv_c4-c5_coco_1x.pth",
                                           num_classes=80, reduction="sum")
