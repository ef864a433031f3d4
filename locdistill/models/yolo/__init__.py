"""The YOLOv8 family (DESIGN §10): CSP-Darknet + PAN-FPN + decoupled DFL head, TAL, BCE / CIoU / DFL."""
from .criterion import YOLOCriterion
from .detector import YOLO

__all__ = ["YOLO", "YOLOCriterion"]
