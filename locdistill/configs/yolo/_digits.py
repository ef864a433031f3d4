"""Shared settings of the ``yolo/yolov8*_digits`` configs: the demo's digits data (160 px, noisy training
boxes), trainable in minutes on 2 CPU cores."""
from locdistill.config import Config, load_config
from locdistill.configs.yolo._coco import SCALES


def yolov8_digits(scale: str) -> Config:
    config = Config()
    m = config.model
    m.type = "yolo"
    m.num_classes = 10
    m.yolo.depth, m.yolo.width, m.yolo.max_channels = SCALES[scale]
    m.head.strides = (8, 16, 32)  # the network's strides (fixed for the family; read by tools, not by the model)

    config.data = load_config("demo/gfl_r18_digits").data  # the GFL digits student's data, noise and batch

    t = config.train
    t.epochs = 10
    t.optimizer = "adamw"  # from scratch on a small set: AdamW (as the demo's GFL digits configs)
    t.lr = 0.002
    t.weight_decay = 0.05
    t.warmup_iters = 100
    t.milestones = (8, 10)
    t.log_interval = 20
    t.device = "cpu"
    t.eval_interval = 5
    return config
