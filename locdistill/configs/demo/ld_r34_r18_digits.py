# LD on the bundled digits data: the demo's R-18 student (trained on noisy boxes) distilled from
# the shipped R-34 teacher (demo/gfl_r34_digits_teacher, locdistill/data/assets/digits_teacher.pth,
# trained on other scenes with exact boxes). Main-region LD (weight 0.25, T=10) with the `per_image`
# reduction, so the loss scale does not depend on the batch of 16. VLR-LD and class KD are off by
# default; `benchmarks/ld_gain.py` measures them (docs/benchmarks.md, "The gain of LD on digits").
from pathlib import Path

import locdistill
from locdistill.config import DistillConfig, load_config

config = load_config("demo/gfl_r18_digits")
config.distill = DistillConfig.from_recipe(
    "ld", "demo/gfl_r34_digits_teacher",
    str(Path(locdistill.__file__).resolve().parent / "data" / "assets" / "digits_teacher.pth"),
    num_classes=config.model.num_classes, reduction="per_image")
