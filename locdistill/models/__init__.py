"""Detector modules (backbone → neck → head) and their builders."""
from .backbones import ResNet
from .build import build_criterion, build_detector
from .detector import GFL
from .fpn import FPN
from .gfl_head import GFLHead, Integral

__all__ = ["FPN", "GFL", "GFLHead", "Integral", "ResNet", "build_criterion", "build_detector"]
