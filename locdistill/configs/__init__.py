"""Shipped experiment configs (addressable by name: locdistill train gfl/gfl_r50_fpn_coco_1x)."""
