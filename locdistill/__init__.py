"""locdistill: Localization Distillation for dense object detection in pure PyTorch."""

__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, DatasetError, LocDistillError, TrainingError  # noqa: F401
