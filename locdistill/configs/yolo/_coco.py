"""Shared settings of the ``yolo/yolov8*_coco`` configs (docs/yolo.md): 640 input, SGD as published."""
from locdistill.config import Config

SCALES = {  # depth, width, max_channels
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 768),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.25, 512),
}


def yolov8_coco(scale: str) -> Config:
    config = Config()
    m = config.model
    m.type = "yolo"
    m.num_classes = 80
    m.yolo.depth, m.yolo.width, m.yolo.max_channels = SCALES[scale]
    m.head.strides = (8, 16, 32)  # the network's strides (fixed for the family; read by tools, not by the model)

    d = config.data
    d.img_scale = (640, 640)  # keep-ratio resize, long side 640, padded to 32 (no letterbox / mosaic)
    d.batch_size = 16
    d.workers = 8

    t = config.train
    t.epochs = 100  # Ultralytics trains 500 epochs with mosaic; without mosaic 100 over-fits less (untested)
    t.optimizer = "sgd"
    t.base_lr = 0.01  # for base_batch 64 (Ultralytics' nominal batch)
    t.base_batch = 64
    t.momentum = 0.937
    t.weight_decay = 5e-4
    t.warmup_iters = 1000
    t.milestones = (70, 90)
    t.amp = True
    t.ema = True  # EMA of the weights, decay 0.9999 ramped up over tau = 2000 updates (as YOLOv8); eval uses it
    t.device = "auto"

    c = config.test
    c.score_thr = 0.001
    c.nms_pre = 1000
    c.iou_thr = 0.7
    c.max_per_img = 300
    return config
