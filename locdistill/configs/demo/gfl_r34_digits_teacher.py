# The demo's teacher on the bundled digits data: R-34 (slim) with a wider, deeper head, trained on
# 2,000 *other* scenes (digits_seed 1) with exact boxes: a model from elsewhere, never shown the
# student's images nor their noisy boxes. Scored on the student's val split by the demo.
# Shipped in half precision as locdistill/data/assets/digits_teacher.pth (< 5 MB); rebuild it with
#   locdistill train demo/gfl_r34_digits_teacher --work-dir work_dirs/digits_teacher
#   locdistill convert work_dirs/digits_teacher/latest.pth digits_teacher.pth --half
# (see docs/distillation.md).
from locdistill.config import load_config

config = load_config("demo/gfl_r18_digits")
m = config.model
m.backbone.depth = 34
m.neck.out_channels = 96
m.head.feat_channels = 96
m.head.stacked_convs = 3
m.head.num_groups = 16

d = config.data
d.digits_seed = 1  # other scenes than the student's (seed 0); the demo scores it on the student's val split
d.digits_box_noise = 0.0

t = config.train
t.epochs = 16
t.milestones = (12, 15)
