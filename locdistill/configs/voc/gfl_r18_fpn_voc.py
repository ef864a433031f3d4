# GFL R-18 FPN on Pascal VOC (07+12 trainval -> 07 test): the LD paper's VOC student
# baseline (the LD repo's gfl_r18_fpn1x_voc.py; published, LD repo README: 51.8 AP, AP50 75.8).
# 4 epochs over the 3x repeated set, lr step after 3, 3 images per GPU.
from locdistill.config import load_config
from locdistill.configs.voc import voc0712

config = voc0712(load_config("gfl/gfl_r18_fpn_coco_1x"))
