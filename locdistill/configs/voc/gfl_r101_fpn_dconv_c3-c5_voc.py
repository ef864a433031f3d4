# GFL R-101 FPN with deformable convs in C3-C5 (layer2-4) on Pascal VOC (07+12 trainval -> 07 test):
# the LD paper's VOC R-101-DCN teacher (rows R-101-DCN -> R-34, 56.7 AP, and R-101-DCN -> R-101,
# 58.4 AP, of the LD repo README's VOC table). The LD repo ships no config for it (only its weights,
# "teacher R101DCN" on pan.baidu), so its DCN stages (c3-c5, as the COCO R-101-DCN teacher) and its
# schedule (here configs/voc/__init__.py's: 4 epochs, step after 3) are our assumption; its
# gfl_r101_fpn_voc.py R-101 teacher trains 16 epochs, step at 12 (--set train.epochs=16 "train.milestones=(12,)").
from locdistill.config import load_config
from locdistill.configs.voc import voc0712

config = voc0712(load_config("gfl/gfl_r101_fpn_coco_1x"))
config.model.backbone.dcn_stages = (2, 3, 4)
