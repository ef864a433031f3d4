"""ResNet 18/34/50/101, ResNeXt and DCN backbones (``style=pytorch``: the stride sits in the 3×3 conv).

Parameter names follow torchvision (``conv1 bn1 layerK.M.convJ bnJ downsample.0/1``),
which is also what mmdetection checkpoints hold under ``backbone.``; there is no
``fc`` layer. ``frozen_stages`` and ``norm_eval`` behave as in mmdetection.

Variants, with mmdetection's key layout:

- **ResNeXt** (``groups > 1``): the bottleneck's inner width is
  ``floor(planes · base_width / base_channels) · groups`` and ``conv2`` is grouped
  (ResNeXt-101 32x4d: ``groups=32, base_width=4``).
- **DCN** (``dcn_stages``, e.g. ``(2, 3, 4)`` = layer2-4 = C3-C5): every bottleneck
  ``conv2`` of those stages is a :class:`~.dcn.DeformConv2d`; its kernel stays
  ``conv2.weight`` and the zero-initialised offsets are ``conv2.conv_offset.*``.
- **Res2Net** lives in :mod:`.res2net` (it overrides the stem and :meth:`ResNet.make_stage`).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ...errors import CheckpointError, ConfigError
from .dcn import DeformConv2d


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs (ResNet-18/34). ``planes`` is the output width (expansion 1)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place: saves one full-size allocation per block
        return self.relu(out)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided, pytorch style) → 1×1 ×4 (ResNet-50/101, ResNeXt, DCN).

    Args:
        inplanes, planes: input channels and stage width (output is ``planes * 4``).
        stride: stride of the 3×3 conv.
        downsample: identity projection for the first block of a stage.
        groups, base_width, base_channels: ResNeXt; with ``groups > 1`` the inner width
            is ``floor(planes * base_width / base_channels) * groups`` (mmdetection's rule).
        dcn: make ``conv2`` a deformable conv (``conv2.weight`` + ``conv2.conv_offset``).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, groups: int = 1, base_width: int = 4,
                 base_channels: int = 64, dcn: bool = False) -> None:
        super().__init__()
        width = planes if groups == 1 else (planes * base_width // base_channels) * groups
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        if dcn:
            self.conv2 = DeformConv2d(width, width, 3, stride=stride, padding=1, groups=groups)
        else:
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet / ResNeXt / DCN backbone returning the feature maps of the stages in ``out_indices``.

    Args:
        depth: 18, 34, 50 or 101.
        base_channels: stem width (64 for the standard nets; smaller for tiny demos).
            Stage ``i`` has ``base_channels * 2**i`` planes.
        frozen_stages: -1 freezes nothing; ``k >= 0`` freezes the stem and layers
            ``1..k`` (``requires_grad=False``, kept in eval mode by :meth:`train`).
        norm_eval: keep every BatchNorm in eval mode during training (their affine
            parameters outside frozen stages stay trainable).
        out_indices: stages to return, 0 = layer1 (C2, stride 4) … 3 = layer4 (C5,
            stride 32). The default ``(1, 2, 3)`` gives C3, C4, C5.
        pretrained: ``""`` (random init), ``"torchvision"`` (ImageNet weights through
            torchvision's weights API; needs a download) or a path to a local file.
        groups, base_width: ResNeXt cardinality and width per group (``groups=1`` is a
            plain ResNet; ResNeXt-101 32x4d is ``groups=32, base_width=4``). Bottleneck only.
        dcn_stages: stages (1..4, ``layerK``) whose bottleneck 3×3 convs are deformable.

    Attributes:
        out_channels: channels of the returned maps, in ``out_indices`` order.
        out_strides: strides of the returned maps.
    """

    arch_settings = {
        18: (BasicBlock, (2, 2, 2, 2)),
        34: (BasicBlock, (3, 4, 6, 3)),
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
    }
    name = "ResNet"

    def __init__(self, depth: int, base_channels: int = 64, frozen_stages: int = 1,
                 norm_eval: bool = True, out_indices: Sequence[int] = (1, 2, 3),
                 pretrained: str = "", groups: int = 1, base_width: int = 4,
                 dcn_stages: Sequence[int] = ()) -> None:
        super().__init__()
        if depth not in self.arch_settings:
            raise ConfigError(
                f"model.backbone.depth={depth!r} is not supported by {self.name}; use one of "
                f"{sorted(self.arch_settings)}"
            )
        if base_channels < 1:
            raise ConfigError(f"model.backbone.base_channels={base_channels} must be a positive integer (64 is standard)")
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i < 0 or i > 3 for i in out_indices) or list(out_indices) != sorted(set(out_indices)):
            raise ConfigError(f"ResNet out_indices={out_indices} must be increasing stage indices in 0..3")
        if not -1 <= frozen_stages <= 4:
            raise ConfigError(f"model.backbone.frozen_stages={frozen_stages} must be in -1..4")
        dcn_stages = tuple(sorted(set(int(i) for i in dcn_stages)))
        if any(i < 1 or i > 4 for i in dcn_stages):
            raise ConfigError(f"model.backbone.dcn_stages={dcn_stages} must be stage numbers in 1..4 "
                              "(layer1..layer4; (2, 3, 4) is mmdetection's dconv_c3-c5)")
        if groups < 1 or base_width < 1:
            raise ConfigError(f"model.backbone.groups={groups} and base_width={base_width} must be >= 1")
        block, num_blocks = self.arch_settings[depth]
        if block is BasicBlock and (groups != 1 or dcn_stages):
            raise ConfigError(
                f"ResNet-{depth} uses basic blocks: model.backbone.groups (ResNeXt) and model.backbone.dcn_stages "
                "need depth 50 or 101")
        self.depth = depth
        self.base_channels = base_channels
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.out_indices = out_indices
        self.groups, self.base_width, self.dcn_stages = groups, base_width, dcn_stages

        self.make_stem(base_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = base_channels
        stage_channels = []
        for i, n in enumerate(num_blocks):
            planes = base_channels * 2 ** i
            layer = self.make_stage(block, inplanes, planes, n, stride=1 if i == 0 else 2, dcn=(i + 1) in dcn_stages)
            self.add_module(f"layer{i + 1}", layer)
            inplanes = planes * block.expansion
            stage_channels.append(inplanes)
        self.out_channels: list[int] = [stage_channels[i] for i in out_indices]
        self.out_strides: list[int] = [4 * 2 ** i for i in out_indices]

        self._init_weights()
        if pretrained:
            self.load_pretrained(pretrained)
        self._freeze_stages()

    def make_stem(self, base_channels: int) -> None:
        """The 7×7 stride-2 stem (``conv1``, ``bn1``); :mod:`.res2net` overrides it with a deep stem."""
        self.conv1 = nn.Conv2d(3, base_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_channels)

    def stem_modules(self) -> list[nn.Module]:
        """Modules of the stem (frozen with ``frozen_stages >= 0``)."""
        return [self.conv1, self.bn1]

    def forward_stem(self, x: Tensor) -> Tensor:
        """``x [B,3,H,W]`` → ``[B, base_channels, H/2, W/2]`` (before the max-pool)."""
        return self.relu(self.bn1(self.conv1(x)))

    def make_stage(self, block: type, inplanes: int, planes: int, num_blocks: int, stride: int,
                   dcn: bool = False) -> nn.Sequential:
        """One residual stage; the first block changes stride/width through ``downsample``."""
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        kw = {}
        if block is not BasicBlock:
            kw = dict(groups=self.groups, base_width=self.base_width, base_channels=self.base_channels, dcn=dcn)
        blocks = [block(inplanes, planes, stride, downsample, **kw)]
        blocks += [block(planes * block.expansion, planes, **kw) for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, DeformConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # after the loop above, which also visits conv_offset
            if isinstance(m, DeformConv2d):
                m.reset_offset()

    def _frozen_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = []
        if self.frozen_stages >= 0:
            mods += self.stem_modules()
        for i in range(1, self.frozen_stages + 1):
            mods.append(getattr(self, f"layer{i}"))
        return mods

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNet":
        """Set train/eval mode, keeping frozen stages (and all BN if ``norm_eval``) in eval."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``x [B,3,H,W]`` → one map per ``out_indices`` entry, ``[B, out_channels[k], H/s, W/s]``."""
        x = self.maxpool(self.forward_stem(x))
        outs = []
        for i in range(self.out_indices[-1] + 1):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    # ------------------------------------------------------------------ ImageNet init

    def load_pretrained(self, source: str) -> None:
        """Load ImageNet weights: ``"torchvision"`` (download) or a local file path.

        A local file may hold a plain state dict or ``{"state_dict"|"model": ...}``;
        a ``module.`` prefix is stripped, a detector's ``backbone.*`` part is used and
        ``fc.*`` is ignored. Raises
        :class:`CheckpointError` on a failed download, a missing/unreadable file or a
        key/shape mismatch.
        """
        if source == "torchvision":
            state = self._torchvision_state_dict()
            origin = f"torchvision resnet{self.depth} (IMAGENET1K_V1)"
        else:
            state = self._file_state_dict(source)
            origin = source
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = self.state_dict()
        # ImageNet weights have no DCN offsets: those stay zero (a DCN starts as a plain conv)
        missing = [k for k in own if k not in state and ".conv_offset." not in k]
        unexpected = [k for k in state if k not in own]
        what = f"{self.name}-{self.depth} (base_channels={self.base_channels}, groups={self.groups})"
        if missing or unexpected:
            raise CheckpointError(
                f"pretrained backbone weights {origin} do not match {what}: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{' ...' if len(unexpected) > 5 else ''}; check model.backbone.type/depth/groups or the file"
            )
        for k, v in own.items():
            if k in state and tuple(state[k].shape) != tuple(v.shape):
                raise CheckpointError(
                    f"pretrained backbone weights {origin}: '{k}' has shape {tuple(state[k].shape)}, "
                    f"the model expects {tuple(v.shape)}; check model.backbone.depth/base_channels/groups"
                )
        self.load_state_dict(state, strict=False)

    def _torchvision_state_dict(self) -> dict[str, Tensor]:
        if type(self) is not ResNet or self.groups != 1:
            raise ConfigError(
                f"model.backbone.pretrained='torchvision' has plain ResNet weights only; for {self.name} "
                f"(groups={self.groups}) give a local ImageNet file (e.g. mmdetection's open-mmlab:// weights) "
                "or '' for random init")
        if self.base_channels != 64:
            raise ConfigError(
                f"model.backbone.pretrained='torchvision' needs base_channels=64 "
                f"(got {self.base_channels}); use random init ('') for narrow backbones"
            )
        import torchvision

        weights = torchvision.models.get_model_weights(f"resnet{self.depth}")["IMAGENET1K_V1"]
        try:
            return weights.get_state_dict(progress=True)
        except Exception as e:  # network errors, proxies, a read-only cache, ...
            raise CheckpointError(
                f"could not download torchvision's ImageNet weights for ResNet-{self.depth} "
                f"({type(e).__name__}: {e}). Download {weights.url} by hand and set "
                f"model.backbone.pretrained=/path/to/that/file, or set it to '' for random init"
            ) from e

    @staticmethod
    def _file_state_dict(path: str) -> dict[str, Tensor]:
        if not os.path.isfile(path):
            raise CheckpointError(
                f"model.backbone.pretrained: file '{path}' does not exist; give an existing "
                f"weights file, 'torchvision', or '' for random init"
            )
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read pretrained backbone weights '{path}': {type(e).__name__}: {e}") from e
        if isinstance(obj, dict):
            for key in ("state_dict", "model"):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise CheckpointError(f"'{path}' does not hold a state dict of tensors")
        state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
        if any(k.startswith("backbone.") for k in state):  # a whole detector: keep its backbone
            state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        return state
