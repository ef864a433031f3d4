# GFL R-50 FPN on Pascal VOC (07+12 trainval -> 07 test): the LD paper's VOC R-50 student
# baseline. Published (LD repo README, VOC table): 55.8 AP (AP50 79.0). 4 epochs over the 3x
# repeated set, lr step after 3, 3 images per GPU.
from locdistill.config import load_config
from locdistill.configs.voc import voc0712

config = voc0712(load_config("gfl/gfl_r50_fpn_coco_1x"))
