# GFL (GFocal v1) R-50 FPN, COCO, 1x schedule (12 epochs, lr steps at 8 and 11).
# mmdetection's gfl_r50_fpn_1x_coco; published: 40.2 box AP on val2017
# (checkpoint gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth).
# 8 GPUs x 2 images, lr 0.01; our lr follows 0.01 x total_batch / 16.
from locdistill.config import Config

config = Config()  # the defaults of every dataclass are this experiment
