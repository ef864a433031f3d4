# Same-family LD on the bundled digits data: a YOLOv8-s teacher distilled into a YOLOv8-n student
# (docs/yolo.md, "Distillation"). Train the teacher first (other scenes, exact boxes; ~45 min on one CPU thread):
#   locdistill train yolo/yolov8s_digits_teacher --work-dir work_dirs/yolov8s_digits_teacher
# Recipe `ld` (main-region LD on the TAL positives, weight 0.25, T=10), set explicitly: the default
# `crosshead_ld` recipe runs the student's features through the teacher's GFL head and is GFL-only.
# `--set distill.recipe=full` adds VLR-LD (on the family's substitute VLR) and class KD.
# `per_image` reduction: the loss scale does not depend on the batch of 16.
from locdistill.config import DistillConfig
from locdistill.configs.yolo._digits import yolov8_digits

config = yolov8_digits("n")
config.distill = DistillConfig.from_recipe(
    "ld", "yolo/yolov8s_digits_teacher", "work_dirs/yolov8s_digits_teacher/latest.pth",
    num_classes=config.model.num_classes, reduction="per_image")
