# Heterogeneous LD on the bundled digits data: the shipped GFL R-34 digits teacher
# (demo/gfl_r34_digits_teacher, locdistill/data/assets/digits_teacher.pth) distilled into a YOLOv8-n
# student (docs/distillation.md, "Heterogeneous LD"). The teacher's P3-P5 distributions (reg_max 16,
# points at (j·s, i·s)) are resampled each step onto the student's 16 bins (reg_max 15) at its cell
# centres; the teacher's P6/P7 have no student level and are skipped (one warning at start-up).
# Recipe `ld` set explicitly (the default `crosshead_ld` recipe's cross-head terms are GFL-only); `--set distill.recipe=full`
# adds VLR-LD and class KD. `per_image` reduction as the other digits LD configs.
from pathlib import Path

import locdistill
from locdistill.config import DistillConfig
from locdistill.configs.yolo._digits import yolov8_digits

config = yolov8_digits("n")
config.distill = DistillConfig.from_recipe(
    "ld", "demo/gfl_r34_digits_teacher",
    str(Path(locdistill.__file__).resolve().parent / "data" / "assets" / "digits_teacher.pth"),
    num_classes=config.model.num_classes, reduction="per_image")
