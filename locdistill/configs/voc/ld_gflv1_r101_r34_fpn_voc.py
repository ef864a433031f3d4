# LD on Pascal VOC: GFL R-34 FPN student distilled from the GFL R-101 VOC teacher
# (the first step of the R-101 -> R-34 -> R-18 teacher-assistant chain). VOC07+12 trainval
# repeated 3x, 4 epochs, lr step after 3, 3 images per GPU; VOC mAP on VOC2007 test.
from locdistill.config import DistillConfig, load_config

config = load_config("voc/gfl_r34_fpn_voc")

config.distill = DistillConfig.paper("voc/gfl_r101_fpn_voc", "work_dirs/gfl_r101_fpn_voc/latest.pth")
