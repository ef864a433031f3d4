# Self-LD (main distillation region only) with mmdetection's released teacher: GFL ResNeXt-101 32x4d
# DCN (c4-c5) ms-2x distilled from the same architecture, ms-2x. No published number for this
# variant: the LD repo README's Self-LD row of this model (46.9 -> 47.5 box AP) is 1x, mini-batch 4,
# and is reproduced by ld_gflv1_x101dcn_x101dcn_fpn_coco_1x_self. Use this one when you want the
# downloadable teacher (mmdetection's model reaches 48.1 box AP).
# Teacher weights: mmdetection's gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco_20200630_102002-14a2bf25.pth
# saved as the path below.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco")
config.data.batch_size = 3  # images per GPU: the LD code's rule (<= 3) for the "sum" reduction

config.distill = DistillConfig.from_recipe("ld", "gfl/gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco",
                                           "checkpoints/gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco.pth",
                                           num_classes=80, reduction="sum")
