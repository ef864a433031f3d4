# GFL R-34 FPN on Pascal VOC (07+12 trainval -> 07 test): student baseline and teacher
# assistant (R-101 -> R-34 -> R-18). 4 epochs over the 3x repeated set, lr step after 3.
from locdistill.config import load_config
from locdistill.configs.voc import voc0712

config = voc0712(load_config("gfl/gfl_r34_fpn_coco_1x"))
