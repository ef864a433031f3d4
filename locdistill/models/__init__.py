"""Detector modules (backbone → neck → head) and their builders."""
from .backbones import DeformConv2d, Res2Net, ResNet
from .build import build_detector
from .detector import GFL
from .fpn import FPN
from .gfl_head import GFLHead, GFLv2Head, Integral

__all__ = ["FPN", "GFL", "DeformConv2d", "GFLHead", "GFLv2Head", "Integral", "Res2Net", "ResNet",
           "build_detector"]
