# LD on Pascal VOC, main distillation region only: GFL R-34 FPN student, GFL R-101 VOC teacher
# (the first step of the R-101 -> R-34 -> R-18 teacher-assistant chain). VOC07+12 trainval
# repeated 3x, 4 epochs, lr step after 3, 3 images per GPU; VOC mAP on VOC2007 test.
# No published number for this pair: the README's VOC R-34 row distils from R-101-DCN
# (56.7 AP, voc/ld_gflv1_r101dcn_r34_fpn_voc); plain R-34: 55.7 AP.
from locdistill.config import DistillConfig, load_config

config = load_config("voc/gfl_r34_fpn_voc")

config.distill = DistillConfig.from_recipe("ld", "voc/gfl_r101_fpn_voc", "work_dirs/gfl_r101_fpn_voc/latest.pth",
                                           num_classes=20, reduction="sum")
