"""Detection metrics (COCO box AP/AR, Pascal VOC mAP)."""
from .coco import METRIC_KEYS, coco_evaluate, detections_to_coco, format_metrics_table  # noqa: F401
from .voc import format_voc_table, voc_eval, voc_metrics  # noqa: F401
