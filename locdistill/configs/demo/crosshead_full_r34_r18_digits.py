# The demo's distillation (`locdistill demo`, third row): the R-18 student of demo/gfl_r18_digits distilled
# from the shipped R-34 teacher with recipe `crosshead_full`: CrossKD's cross-head terms (LD 3.0 at T=1,
# quality-focal KD 1.0, GIoU 2.0; the student's features after its first tower conv run through the teacher's
# last conv, a 1x1 adapter maps 64 -> 96 channels) plus the LD paper's full recipe on the student's own outputs
# (main LD 0.25 and VLR-LD 0.25 at T=10, class KD 10 x C/80 = 1.25 at T=2), `per_image` reduction.
# Measured (benchmarks/ld_gain.py, seeds 0/1/2, docs/benchmarks.md "Recipes compared"): 49.2 / 49.5 / 50.2 AP
# vs 39.6 / 38.4 / 40.4 alone; main LD alone (demo/ld_r34_r18_digits) 45.9, the full recipe 48.1.
from locdistill.config import DistillConfig, load_config

config = load_config("demo/ld_r34_r18_digits")
d = config.distill
config.distill = DistillConfig.from_recipe("crosshead_full", d.teacher_config, d.teacher_checkpoint,
                                           num_classes=config.model.num_classes, reduction=d.reduction)
