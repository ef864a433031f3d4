"""Backbones: ResNet 18/34/50/101, ResNeXt, DCN stages and Res2Net (mmdetection key names)."""
from .dcn import DeformConv2d
from .res2net import Bottle2neck, Res2Net
from .resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["BasicBlock", "Bottle2neck", "Bottleneck", "DeformConv2d", "Res2Net", "ResNet"]
