# GFLv2 R-50 FPN, multi-scale training (short side 480-960, as GFocalV2's configs), 2x.
# GFocalV2 repo's gfocal_r50_fpn_ms2x.py; published: 43.9 box AP (minival), 44.4 (test-dev; the LD
# table's GFLv2 R-50 student baseline) (checkpoint "GFocal_R_50_FPN_2x" of the GFocalV2 README,
# Google Drive; save it as checkpoints/gflv2_r50_fpn_mstrain_2x_coco.pth).
from locdistill.config import load_config

config = load_config("gflv2/gflv2_r50_fpn_1x_coco")
config.data.train_short_range = (480, 960)
config.train.epochs = 24
config.train.milestones = (16, 22)
