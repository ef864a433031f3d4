"""Datasets, transforms and loaders (COCO-format JSON and the bundled digits scenes)."""
from .coco import CocoDetection  # noqa: F401
from .digits import ensure_digits  # noqa: F401
from .loader import build_dataloader, build_dataset, collate, set_epoch  # noqa: F401
from .transforms import build_transforms  # noqa: F401
