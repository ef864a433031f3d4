"""GFocal v2 (GFLv2) configs: the GFocalV2 repository's model zoo (locdistill train gflv2/gflv2_r50_fpn_1x_coco)."""
