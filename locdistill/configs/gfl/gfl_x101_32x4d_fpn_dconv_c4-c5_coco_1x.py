# GFL ResNeXt-101 32x4d FPN with deformable convs in C4-C5 (layer3-4), COCO 1x, single-scale:
# the plain model and the Self-LD teacher of the LD repo README's Self-LD table
# (published, COCO val2017: 46.9 box AP; 47.5 with Self-LD, ld/ld_gflv1_x101dcn_x101dcn_fpn_coco_1x_self).
# That table's rows of this model use a 1x schedule and a mini-batch of 4 (taken here as 2 GPUs x 2
# images, lr 0.0025 by the scaling rule); the LD repo has no config file for it.
# No released checkpoint of this 1x model: train it with `locdistill train
# gfl/gfl_x101_32x4d_fpn_dconv_c4-c5_coco_1x` (mmdetection's ms-2x model of this backbone, 48.1 box AP,
# is gfl/gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco).
from locdistill.config import load_config

config = load_config("gfl/gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco")
config.data.train_short_range = None  # single scale, (1333, 800)
config.data.batch_size = 2  # images per GPU
config.train.epochs = 12
config.train.milestones = (8, 11)
