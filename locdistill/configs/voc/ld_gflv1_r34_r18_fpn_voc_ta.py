# Teacher assistant on Pascal VOC, main distillation region only: GFL R-18 FPN distilled from the
# LD-distilled R-34 of ld_gflv1_r101_r34_fpn_voc (chain R-101 -> R-34 -> R-18). Its checkpoint holds
# the student only and is used as is. VOC07+12 trainval repeated 3x, 4 epochs; VOC mAP on VOC2007
# test. No published number; compare with the direct R-101 -> R-18 row (53.0 AP).
from locdistill.config import DistillConfig, load_config

config = load_config("voc/gfl_r18_fpn_voc")

config.distill = DistillConfig.from_recipe("ld", "voc/ld_gflv1_r101_r34_fpn_voc",
                                           "work_dirs/ld_gflv1_r101_r34_fpn_voc/latest.pth",
                                           num_classes=20, reduction="sum")
