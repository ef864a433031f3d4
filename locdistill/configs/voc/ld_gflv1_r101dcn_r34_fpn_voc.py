# LD on Pascal VOC, main distillation region only: GFL R-34 FPN student, GFL R-101-DCN VOC teacher.
# Published (LD repo README, VOC table, main region only): 56.7 AP (AP50 78.4), vs 55.7 plain
# (voc/gfl_r34_fpn_voc); the LD repo's released weights of this run score 56.5.
# VOC07+12 trainval repeated 3x, 4 epochs, lr step after 3, 3 images per GPU (2 GPUs, lr 0.00375).
# Train the teacher first: `locdistill train voc/gfl_r101_fpn_dconv_c3-c5_voc`.
from locdistill.config import DistillConfig, load_config

config = load_config("voc/gfl_r34_fpn_voc")

config.distill = DistillConfig.from_recipe("ld", "voc/gfl_r101_fpn_dconv_c3-c5_voc",
                                           "work_dirs/gfl_r101_fpn_dconv_c3-c5_voc/latest.pth",
                                           num_classes=20, reduction="sum")
