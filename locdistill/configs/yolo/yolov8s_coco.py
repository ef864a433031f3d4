# YOLOv8-s (CSP-Darknet + C2f + SPPF, PAN-FPN, decoupled DFL head; TAL, BCE / CIoU / DFL) on COCO at 640.
# Trained from scratch through locdistill's engine; the Ultralytics recipe's augmentations (mosaic, mixup,
# HSV, close-mosaic) and EMA are not reproduced (docs/yolo.md).
from locdistill.configs.yolo._coco import yolov8_coco

config = yolov8_coco("s")
