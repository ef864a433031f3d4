# LD on Pascal VOC: GFL R-18 FPN student distilled from the GFL R-101 VOC teacher
# (the LD repo's ld_gflv1_r101_r18_fpn_voc.py): VOC07+12 trainval repeated 3x, 4 epochs,
# lr step after 3, 3 images per GPU; evaluated with VOC mAP on VOC2007 test.
# Train the teacher first: `locdistill train voc/gfl_r101_fpn_voc` (or pass
# --set distill.teacher_checkpoint=PATH).
from locdistill.config import DistillConfig, load_config

config = load_config("voc/gfl_r18_fpn_voc")

# main LD 0.25/T10 on the student's positives, VLR 0.25/T10, class KD 10/T2, "sum" reduction
config.distill = DistillConfig.paper("voc/gfl_r101_fpn_voc", "work_dirs/gfl_r101_fpn_voc/latest.pth")
