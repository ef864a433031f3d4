# Cross-head LD (CrossKD, "CrossKD: Cross-Head Knowledge Distillation for Object Detection", CVPR 2024):
# GFL R-50 FPN student, GFL R-101 ms-2x teacher, COCO 1x. Published (paper, COCO val2017): 43.7 box AP,
# vs 40.2 for the plain R-50 (gfl/gfl_r50_fpn_coco_1x).
# The paper's recipe, cross-head terms only: the student's tower features after the 3rd of 4 convs
# (crosshead_layer=-2) go through the teacher's 4th conv and predictors; cross-head LD 3.0 (T=1, KL
# summed over bins), quality-focal class KD 1.0 (beta 1), GIoU to the teacher's box 2.0.
# 8 GPUs x 2 images, lr 0.01 (as the paper). Add main LD / VLR / KD with --set distill.ld_weight=... etc.
from locdistill.config import DistillConfig, load_config

config = load_config("gfl/gfl_r50_fpn_coco_1x")
config.data.batch_size = 2  # images per GPU, as the paper's run (the cross-head terms are means: any batch works)

config.distill = DistillConfig.crosskd("gfl/gfl_r101_fpn_mstrain_2x_coco", "checkpoints/gfl_r101_fpn_mstrain_2x_coco.pth")
