# GFL R-101 FPN on Pascal VOC (07+12 trainval -> 07 test): the LD paper's VOC R-101 teacher and
# the plain R-101 row of the LD repo README's VOC table (published: 57.6 AP, AP50 80.4, 4 epochs).
# Schedule of configs/voc/__init__.py: 4 epochs over the 3x repeated set, lr step after 3.
# (The LD repo's gfl_r101_fpn_voc.py trains its teacher longer: 16 epochs, step at 12; use
# --set train.epochs=16 "train.milestones=(12,)" to match it.)
from locdistill.config import load_config
from locdistill.configs.voc import voc0712

config = voc0712(load_config("gfl/gfl_r101_fpn_coco_1x"))
