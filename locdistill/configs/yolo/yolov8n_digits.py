# YOLOv8-n on the bundled digits data (the demo's data settings), from scratch on CPU in minutes.
from locdistill.configs.yolo._digits import yolov8_digits

config = yolov8_digits("n")
