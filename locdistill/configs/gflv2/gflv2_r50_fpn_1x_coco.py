# GFocal v2 (GFLv2: DGQP quality branch) R-50 FPN, COCO 1x, single-scale training.
# GFocalV2 repo's configs/gfocal/gfocal_r50_fpn_1x.py; published: 41.0 box AP (minival), 41.1 (test-dev)
# (checkpoint "GFocal_R_50_FPN_1x" of the GFocalV2 README, a Google Drive file; save it as
# checkpoints/gflv2_r50_fpn_1x_coco.pth).
from locdistill.config import load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.model.head.type = "gflv2"  # reg_topk 4 (+ mean), reg_channels 64: the GFocalV2 defaults
