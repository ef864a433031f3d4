"""Backbones: ResNet 18/34/50/101 (torchvision key names, mmdetection semantics)."""
from .resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]
