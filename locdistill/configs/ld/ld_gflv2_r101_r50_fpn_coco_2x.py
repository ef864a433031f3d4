# LD on GFocal v2: R-101 teacher -> R-50 student, main distillation region only (weight 0.25, T=10;
# no VLR, no class KD, as the LD repo's GFLv2 configs).
# Published (LD repo README, "GFocalV2 with LD", COCO test-dev): 44.8 box AP, vs 44.4 plain.
# Schedule as that table's row: 2x, mini-batch 16 (8 GPUs x 2 images, lr 0.01), multi-scale training
# (short side 480-960, as the GFocalV2 ms-2x models of the other rows).
# Discrepancy: the LD repo's file for this row, ld_gflv2_r101_r50_fpn_coco_1x.py, is a 1x schedule
# (12 epochs, steps 8 and 11), single-scale (1333, 800) (its multi-scale line is commented out), with
# 3 images per GPU and lr 0.00375. We follow the table, whose row says 2x and mini-batch 16; for the
# file's run use --set train.epochs=12 "train.milestones=(8,11)" data.train_short_range=None data.batch_size=3.
# Teacher weights: the GFocalV2 README's GFocal_R_101_FPN_2x (Google Drive), saved as the path below.
from locdistill.config import DistillConfig, load_config

config = load_config("gflv2/gflv2_r50_fpn_mstrain_2x_coco")
config.data.batch_size = 2  # images per GPU (mini-batch 16 on 8 GPUs)

config.distill = DistillConfig.from_recipe(
    "ld",
    teacher_config="gflv2/gflv2_r101_fpn_mstrain_2x_coco",
    teacher_checkpoint="checkpoints/gflv2_r101_fpn_mstrain_2x_coco.pth",
)
