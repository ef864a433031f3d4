"""Detection metrics (COCO box AP/AR)."""
from .coco import METRIC_KEYS, coco_evaluate, detections_to_coco, format_metrics_table  # noqa: F401
