# LD on Pascal VOC, main distillation region only: GFL R-18 FPN student, GFL R-101 VOC teacher
# (the LD repo's ld_gflv1_r101_r18_fpn_voc.py): VOC07+12 trainval repeated 3x, 4 epochs,
# lr step after 3, 3 images per GPU (2 GPUs, lr 0.00375); VOC mAP on VOC2007 test.
# Published (LD repo README, VOC table, main region only): 53.0 AP (AP50 75.9), vs 51.8 plain
# (voc/gfl_r18_fpn_voc). The LD repo's weights with main LD + VLR LD + VLR KD reach 54.0 AP
# (a KD region locdistill does not have; not shipped).
# Train the teacher first: `locdistill train voc/gfl_r101_fpn_voc` (or pass
# --set distill.teacher_checkpoint=PATH).
from locdistill.config import DistillConfig, load_config

config = load_config("voc/gfl_r18_fpn_voc")

# main LD 0.25/T10 on the student's positives; no VLR, no class KD; "sum" reduction
config.distill = DistillConfig.from_recipe("ld", "voc/gfl_r101_fpn_voc", "work_dirs/gfl_r101_fpn_voc/latest.pth",
                                           num_classes=20, reduction="sum")
