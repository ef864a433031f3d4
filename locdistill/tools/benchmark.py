"""``locdistill benchmark CONFIG [CKPT]``: inference speed, as the seed's ``tools/benchmark.py``.

One image at a time from the config's val set (or ``--synthetic`` random images at
``data.img_scale``): decoding, resizing, normalising, padding and the copy to the device
happen outside the clock; the clock covers the model's forward pass and the
post-processing (top-k, decoding, NMS), with the device synchronised before and after.
The first ``--warmup`` images (default 5) are not counted; the FPS is ``images / time``
over the next ``--images`` images (default 2000, as the seed, cycling through a smaller val
set), reported every ``--log-interval`` images and overall in the seed's words
(``Done image [50 / 2000], fps: 12.3 img / s``, ``Overall fps: 12.3 img / s``).
``--fuse-conv-bn`` folds each BatchNorm into the convolution before it (the seed's option
of the same name; the outputs are unchanged up to rounding). ``--compare CONFIG2 [CKPT2]``
runs a second detector on the same images in the same run, alternating which goes first,
and prints both and their speed ratio.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..config import load_config
from ..data.loader import build_dataset
from ..engine.device import select_device
from ..errors import ConfigError, DatasetError
from ..inference import LoadedDetector, open_detector, prepare_tensor
from ..models.build import postprocess


@dataclass
class BenchmarkResult:
    """Timing of one detector: ``fps`` (images / s), ``ms_per_image``, images timed and the
    mean padded input size ``(h, w)``."""

    name: str
    images: int = 0
    seconds: float = 0.0
    input_hw: tuple[float, float] = (0.0, 0.0)
    _hw_sum: list = field(default_factory=lambda: [0.0, 0.0], repr=False)

    @property
    def fps(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    @property
    def ms_per_image(self) -> float:
        return 1000 * self.seconds / self.images if self.images else float("nan")


def _raw_images(cfg, synthetic: bool):
    """An endless iterator of ``(uint8 image [3, H, W], target)`` (cycling through the val set)."""
    if synthetic:
        long_side, short_side = max(cfg.data.img_scale), min(cfg.data.img_scale)
        g = torch.Generator().manual_seed(0)
        while True:
            image = torch.randint(0, 256, (3, short_side, long_side), dtype=torch.uint8, generator=g)
            yield image, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_id": 0,
                          "ori_shape": (short_side, long_side), "img_shape": (short_side, long_side),
                          "scale_factor": (1.0, 1.0), "flip": False}
    try:
        dataset = build_dataset(cfg.data, "val")
    except DatasetError as e:
        raise DatasetError(f"{e}\n(or benchmark on random images with --synthetic)") from None
    while True:
        for i in range(len(dataset)):
            yield dataset.get_raw(i)


def _prepare(det: LoadedDetector, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    images, meta = prepare_tensor(image, target, det.cfg)
    return images.to(det.device), meta


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _amp_context(device: torch.device, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def fuse_conv_bn(model: torch.nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` into the plain ``Conv2d`` that feeds it, in place.

    The pairs are found by name inside each module: ``convK`` / ``bnK`` siblings (ResNet's
    ``conv1``/``bn1``, a block's ``conv2``/``bn2``) and, inside an ``nn.Sequential``, a
    convolution directly followed by a BatchNorm (``downsample.0`` / ``downsample.1``). The
    convolution gets the folded weight and bias and the BatchNorm becomes ``nn.Identity``.
    Deformable convolutions and GroupNorm are left alone. Returns the number of pairs fused.
    """
    def fusable(conv, bn) -> bool:
        return (type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                and bn.running_mean is not None and conv.out_channels == bn.num_features)

    fused = 0
    for module in list(model.modules()):
        children = dict(module.named_children())
        pairs = []
        if isinstance(module, nn.Sequential):
            names = list(children)
            pairs += [(a, b) for a, b in zip(names, names[1:])]
        pairs += [("conv" + n[2:], n) for n in children if n.startswith("bn") and "conv" + n[2:] in children]
        for conv_name, bn_name in pairs:
            conv, bn = children.get(conv_name), children.get(bn_name)
            if conv is None or bn is None or not fusable(conv, bn):
                continue
            new_conv = fuse_conv_bn_eval(conv.eval(), bn.eval())
            setattr(module, conv_name, new_conv)
            setattr(module, bn_name, nn.Identity())
            children[conv_name], children[bn_name] = new_conv, None
            fused += 1
    return fused


@torch.inference_mode()
def _time_one(det: LoadedDetector, images: torch.Tensor, meta: dict, amp: bool) -> float:
    _sync(det.device)
    t0 = time.perf_counter()
    with _amp_context(det.device, amp):
        outputs = det.model(images)
    postprocess(outputs, [meta], det.cfg.test, det.model.strides, det.model.reg_max)
    _sync(det.device)
    return time.perf_counter() - t0


def _open(config: str, checkpoint: Optional[str], overrides: Sequence[str], device: Optional[str]) -> LoadedDetector:
    cfg = load_config(config, list(overrides))
    return open_detector(cfg, checkpoint, select_device(device or cfg.train.device))


def benchmark(config: str, checkpoint: Optional[str] = None, compare: Optional[Sequence[str]] = None,
              images: int = 2000, warmup: int = 5, amp: bool = False, overrides: Sequence[str] = (),
              synthetic: bool = False, log_interval: int = 50, device: Optional[str] = None,
              fuse: bool = False, say=print) -> list[BenchmarkResult]:
    """Time ``config`` (and ``compare = [CONFIG2, CKPT2?]``) on ``images`` images after ``warmup``.

    ``fuse`` folds conv + BatchNorm pairs first (:func:`fuse_conv_bn`). Returns one
    :class:`BenchmarkResult` per detector; ``say`` receives the report lines.
    """
    if images < 1 or warmup < 0:
        raise ConfigError(f"--images must be >= 1 and --warmup >= 0 (got {images}, {warmup})")
    dets = [_open(config, checkpoint, overrides, device)]
    if compare:
        if len(compare) > 2:
            raise ConfigError("--compare takes CONFIG2 and optionally CKPT2")
        dets.append(_open(compare[0], compare[1] if len(compare) > 1 else None, overrides, device))
    if fuse:
        for d in dets:
            d.model.eval()
            n = fuse_conv_bn(d.model)
            say(f"{d.cfg.name}: fused {n} conv + BatchNorm pairs")
    ckpts = [checkpoint] + ([compare[1] if len(compare) > 1 else None] if compare else [])
    results = [BenchmarkResult(d.cfg.name + ("" if c else " (random weights)")) for d, c in zip(dets, ckpts)]
    if len(results) == 2 and results[0].name == results[1].name:
        results[1].name += " #2"
    dev = dets[0].device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    say(f"device: {dev} ({name}), threads: {torch.get_num_threads()}, AMP: "
        f"{'on (' + ('float16' if dev.type == 'cuda' else 'bfloat16') + ')' if amp else 'off'}")
    for d, r in zip(dets, results):
        say(f"{r.name}: img_scale {tuple(d.cfg.data.img_scale)}, test.nms={d.cfg.test.nms}, "
            f"{d.cfg.model.num_classes} classes")
    say(f"images: {'synthetic' if synthetic else 'val set of ' + dets[0].cfg.name}; warm-up {warmup}, timed {images} "
        "(model + post-processing; data loading excluded)")

    source = _raw_images(dets[0].cfg, synthetic)
    for k in range(warmup + images):
        image, target = next(source)
        order = list(range(len(dets)))
        if k % 2:
            order.reverse()  # alternate which detector goes first
        for j in order:
            batch, meta = _prepare(dets[j], image, target)
            dt = _time_one(dets[j], batch, meta, amp)
            if k >= warmup:
                r = results[j]
                r.images += 1
                r.seconds += dt
                r._hw_sum[0] += batch.shape[-2]
                r._hw_sum[1] += batch.shape[-1]
        done = k + 1 - warmup
        if done > 0 and log_interval > 0 and done % log_interval == 0 and (done < images or len(results) == 1):
            if len(results) == 1:  # the seed's line, word for word (also at the last image, as the seed)
                say(f"Done image [{done:<3}/ {images}], fps: {results[0].fps:.1f} img / s")
            else:
                say(", ".join(f"{r.name}: Done image [{done:>4}/{images}], fps: {r.fps:.1f} img / s"
                              for r in results))
    for r in results:
        r.input_hw = (r._hw_sum[0] / r.images, r._hw_sum[1] / r.images)
        detail = (f"{r.ms_per_image:.1f} ms / image over {r.images} images, "
                  f"mean input {r.input_hw[0]:.0f}x{r.input_hw[1]:.0f} padded")
        if len(results) == 1:
            say(f"Overall fps: {r.fps:.1f} img / s")
            say(f"{r.name}: {detail}")
        else:
            say(f"{r.name}: Overall fps: {r.fps:.2f} img / s ({detail})")
    if len(results) == 2:
        a, b = results
        say(f"speed ratio {b.name} / {a.name}: {b.fps / a.fps:.2f}x (fps), time ratio {b.seconds / a.seconds:.2f}")
    return results
