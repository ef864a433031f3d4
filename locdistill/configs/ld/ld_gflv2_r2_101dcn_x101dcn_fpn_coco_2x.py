# LD on GFocal v2: Res2Net-101-DCN teacher -> ResNeXt-101 32x4d DCN student.
# Published (LD repo README, COCO test-dev): 50.2 box AP, vs 49.0 plain.
# The LD repo's GFLv2 configs distil the box distributions only (main-region LD, weight 0.25, T=10;
# no VLR, no class KD), 2 images per GPU, ms-2x (short side 480-960), as here.
# Teacher weights: the GFocalV2 README's GFocal_R2_101_dcnv2_FPN_2x (Google Drive), saved as the path below.
from locdistill.config import DistillConfig, load_config

config = load_config("gflv2/gflv2_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco")
config.data.batch_size = 2

config.distill = DistillConfig.from_recipe(
    "ld",
    teacher_config="gflv2/gflv2_r2_101_fpn_dconv_c4-c5_mstrain_2x_coco",
    teacher_checkpoint="checkpoints/gflv2_r2_101_fpn_dconv_c4-c5_mstrain_2x_coco.pth",
)
