# GFL R-50 FPN, multi-scale training (short side 480-800), 2x schedule (24 epochs).
# mmdetection's gfl_r50_fpn_mstrain_2x_coco; published: 42.9 box AP
# (checkpoint gfl_r50_fpn_mstrain_2x_coco_20200629_213802-37bb1edc.pth).
from locdistill.config import load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.data.train_short_range = (480, 800)
config.train.epochs = 24
config.train.milestones = (16, 22)
