# GFL R-34 FPN on Pascal VOC (07+12 trainval -> 07 test): student baseline (published, LD repo
# README: 55.7 AP, AP50 78.9) and teacher assistant (R-101 -> R-34 -> R-18).
# 4 epochs over the 3x repeated set, lr step after 3, 3 images per GPU.
from locdistill.config import load_config
from locdistill.configs.voc import voc0712

config = voc0712(load_config("gfl/gfl_r34_fpn_coco_1x"))
