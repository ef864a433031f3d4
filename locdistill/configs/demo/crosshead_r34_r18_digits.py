# Cross-head LD (CrossKD, CVPR 2024) on the bundled digits data: demo/ld_r34_r18_digits with the main-region
# LD replaced by CrossKD's three cross-head terms (LD 3.0 at T=1, quality-focal KD 1.0 with beta 1, GIoU 2.0).
# The student's towers (64 channels, 2 convs) and the shipped teacher's (96 channels, 3 convs) differ, so a
# trainable 1x1 adapter maps the student's features to the teacher's width (training only: checkpoints hold
# the plain student). crosshead_layer=-2 counts from each tower's end: the student's features after its
# first conv enter the teacher's head before its last conv. Main LD can be added back with
# --set distill.ld_weight=0.25 (the terms add up). Measured (benchmarks/ld_gain.py, 3 seeds, docs/benchmarks.md):
# 47.3 AP vs 39.5 alone with the shipped teacher; 41.3 vs 39.5 with a teacher trained on the student's own
# noisy scenes (--setting same_data), where main LD loses 0.9.
from locdistill.config import DistillConfig, load_config

config = load_config("demo/ld_r34_r18_digits")
d = config.distill
config.distill = DistillConfig.from_recipe("crosshead", d.teacher_config, d.teacher_checkpoint,
                                           num_classes=config.model.num_classes, reduction=d.reduction)
