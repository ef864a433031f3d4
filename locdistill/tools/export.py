"""``locdistill export CONFIG CKPT model.onnx``: a detector as an ONNX graph with in-graph decoding.

The graph (opset :data:`OPSET`):

* input ``images``: ``[B, 3, H, W]`` float32, normalised and padded exactly as the test pipeline
  (:func:`locdistill.inference.prepare_image`) makes them; ``B`` is dynamic, ``H`` and ``W`` are
  dynamic multiples of ``data.size_divisor`` (or fixed to ``--size H W`` with ``--static-size``).
* outputs ``boxes``: ``[B, A, 4]`` float32 xyxy in pixels of the input, clipped to ``[0, W] × [0, H]``;
  ``scores``: ``[B, A, C]`` float32 sigmoid class scores (a GFLv2 model: the joint
  classification–quality score). ``A`` = all anchors of all levels (level by level, row-major).

NMS is not in the graph by default: :func:`detections_from_dense` (score threshold, clipping and
rescaling, the config's NMS, ``max_per_img``) applies it to the graph's outputs, as the PyTorch
post-processing would. ``--nms`` puts hard NMS into the graph instead (:class:`ExportedModelNMS`).

Family hook: the graph is ``decode_dense(flatten(model(images)))`` with the anchor points
recomputed in the graph (:func:`grid_points`) so that ``H`` and ``W`` stay dynamic. A detector
family is exportable when :func:`dense_flattener` finds its ``flatten(outputs) -> DenseOutputs``
(a model's own ``flatten`` method, e.g. :meth:`locdistill.models.yolo.YOLO.flatten`; the GFL
criterion's for a :class:`~locdistill.models.detector.GFL`), the model has ``strides`` and its anchor
points are ``((j + o)·s, (i + o)·s)`` with ``o`` = :func:`point_offset` (``model.center_offset``, else
``model.anchor_offset``, else 0: GFL 0, YOLO 0.5): :meth:`ExportedModel.check_points` verifies this
against ``DenseOutputs.points`` before exporting. ``decode_dense`` uses ``box_logits`` (DFL bins
``0..n`` in stride units: GFL ``n = reg_max`` 16, YOLO 15) and ``cls_logits``.
"""
from __future__ import annotations

import inspect
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn
from torchvision import ops as tv_ops

from ..config import Config, TestConfig, load_config
from ..engine.device import select_device
from ..errors import ConfigError, LocDistillError
from ..inference import open_detector
from ..models.criterion import GFLCriterion
from ..models.dense import DenseOutputs
from ..models.detector import GFL
from ..nms import get_nms

__all__ = ["ExportError", "ExportResult", "ExportedModel", "ExportedModelNMS", "OPSET", "check_onnx", "decode_dense", "dense_flattener",
           "detections_from_dense", "export_model", "export_onnx", "grid_points", "point_offset", "require_onnx",
           "run_onnx", "stable_translations"]

OPSET = 18
INSTALL_HINT = 'pip install "locdistill[export]"'

Flattener = Callable[[Mapping[str, Sequence[Tensor]]], DenseOutputs]


class ExportError(LocDistillError):
    """Exporting failed (a missing optional package, an unsupported model)."""


def require_onnx(check: bool = False):
    """Import ``onnx`` (and ``onnxruntime`` when ``check``); a clear error naming the extra when missing."""
    try:
        import onnx  # noqa: F401  (optional third-party package)
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as e:
        raise ExportError(f"exporting to ONNX needs the onnx and onnxscript packages ({e}); "
                          f"fix: {INSTALL_HINT}") from None
    if "custom_translation_table" not in inspect.signature(torch.onnx.export).parameters:
        raise ExportError(f"exporting to ONNX needs PyTorch 2.6 or later (torch.onnx.export with dynamo=True and "
                          f"custom_translation_table); this is {torch.__version__}; fix: pip install -U torch")
    if check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise ExportError(f"--check needs onnxruntime ({e}); fix: {INSTALL_HINT}, or pass --no-check") from None
    return onnx


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def stable_translations() -> dict:
    """Overflow-free ONNX translations of ``aten.log_sigmoid`` and ``aten.logaddexp`` for the exporter.

    torch.onnx's defaults are ``Log(Sigmoid(x))`` (``-inf`` for ``x`` below about -17 in onnxruntime,
    whose Sigmoid rounds to 0 there) and ``Log(Exp(a) + Exp(b))`` (``inf`` above about 88); the GFLv2
    joint-score logits (:func:`~locdistill.models.gfl_head.joint_score_logits`) use both and came out
    NaN. These are ``min(x, 0) − log(1 + e^−|x|)`` and ``max(a, b) + log(1 + e^−|a−b|)``.
    """
    from onnxscript import opset18 as op  # optional third-party package (the export extra)

    def log_sigmoid(x):
        return op.Sub(op.Min(x, op.CastLike(0.0, x)), op.Log(op.Add(op.CastLike(1.0, x), op.Exp(op.Neg(op.Abs(x))))))

    def logaddexp(a, b):
        return op.Add(op.Max(a, b), op.Log(op.Add(op.CastLike(1.0, a), op.Exp(op.Neg(op.Abs(op.Sub(a, b)))))))

    return {torch.ops.aten.log_sigmoid.default: log_sigmoid, torch.ops.aten.logaddexp.default: logaddexp}


def dense_flattener(model: nn.Module) -> Flattener:
    """The family's ``flatten(outputs) -> DenseOutputs`` of ``model``.

    A model with a ``flatten`` method (the YOLO family: :meth:`locdistill.models.yolo.YOLO.flatten`) provides it; a :class:`GFL` uses
    :meth:`GFLCriterion.flatten` (anchor points from the GFL priors). Anything else is an error.
    """
    own = getattr(model, "flatten", None)
    if callable(own):
        return own
    if isinstance(model, GFL):
        return GFLCriterion(model.num_classes, model.reg_max, model.strides).flatten
    raise ExportError(f"cannot export a {type(model).__name__}: its family provides no "
                      f"flatten(outputs) -> DenseOutputs (GFL and models with a flatten method are exportable)")


def grid_points(level_sizes: Sequence[Sequence], strides: Sequence[int], center_offset: float = 0.0,
                device=None) -> tuple[Tensor, Tensor]:
    """Anchor points ``[A, 2]`` (pixels, ``((j + o)·s, (i + o)·s)``, levels concatenated, row-major)
    and strides ``[A]`` computed from the feature-map sizes: inside the exported graph they follow
    the input's ``H`` and ``W`` (the sizes are symbolic there; a family's prior cache is not)."""
    points, per_anchor = [], []
    for (h, w), s in zip(level_sizes, strides):
        xs = (torch.arange(w, device=device, dtype=torch.float32) + center_offset) * s
        ys = (torch.arange(h, device=device, dtype=torch.float32) + center_offset) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=-1))
        per_anchor.append(torch.full_like(xx.reshape(-1), float(s)))
    return torch.cat(points), torch.cat(per_anchor)


def decode_dense(dense: DenseOutputs, height, width, points: Optional[Tensor] = None,
                 strides: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """``DenseOutputs`` → ``boxes [B, A, 4]`` (xyxy pixels clipped to ``[0, width] × [0, height]``) and
    ``scores [B, A, C]`` (sigmoid of ``cls_logits``).

    The boxes are those of :func:`locdistill.models.postprocess.postprocess` (a YOLO model:
    :func:`locdistill.models.yolo.postprocess.yolo_postprocess`) before rescaling: anchor point
    (YOLO: cell centre) ∓/± the Integral distance × stride, clamped at 0 and at the image size.
    ``points [A, 2]`` / ``strides [A]`` default to ``dense``'s.
    """
    points = dense.points if points is None else points
    strides = dense.strides if strides is None else strides
    dist = dense.distances() * strides[:, None].to(dense.box_logits.dtype)  # [B, A, 4] pixels
    pts = points.to(dist.dtype)  # [A, 2]
    boxes = torch.cat((pts - dist[..., :2], pts + dist[..., 2:]), dim=-1).clamp(min=0)
    max_xy = torch.stack([torch.full((), width), torch.full((), height)] * 2).to(boxes)
    boxes = torch.minimum(boxes, max_xy)
    return boxes, dense.cls_logits.sigmoid()


def point_offset(model: nn.Module) -> float:
    """The model's anchor-point offset ``o`` in strides: ``center_offset``, else ``anchor_offset`` (a YOLO
    model's 0.5: cell centres), else 0 (GFL's ``(j·s, i·s)``)."""
    return float(getattr(model, "center_offset", getattr(model, "anchor_offset", 0.0)))


class ExportedModel(nn.Module):
    """``images [B,3,H,W]`` → ``(boxes [B,A,4], scores [B,A,C])``: the detector, its family's
    ``flatten`` and :func:`decode_dense` (what the ONNX graph computes).

    The anchor points are recomputed from the feature-map sizes (:func:`grid_points` with the
    model's ``strides`` and :func:`point_offset`, GFL: 0, YOLO: 0.5) so that ``H`` and ``W`` can be dynamic;
    :meth:`check_points` verifies that they equal the family's ``DenseOutputs.points``.
    """

    def __init__(self, model: nn.Module, flatten: Optional[Flattener] = None) -> None:
        super().__init__()
        self.model = model
        self.flatten = flatten or dense_flattener(model)
        self.strides = tuple(int(v) for v in model.strides)
        self.center_offset = point_offset(model)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        dense = self.flatten(self.model(images))
        points, strides = grid_points(dense.level_sizes, self.strides, self.center_offset, images.device)
        return decode_dense(dense, images.shape[-2], images.shape[-1], points, strides)

    @torch.no_grad()
    def check_points(self, images: Tensor) -> None:
        """Raise when :func:`grid_points` differs from the family's anchor points on ``images``."""
        dense = self.flatten(self.model(images))
        points, strides = grid_points(dense.level_sizes, self.strides, self.center_offset, images.device)
        if points.shape != dense.points.shape or not (torch.allclose(points, dense.points.float())
                                                      and torch.allclose(strides, dense.strides.float())):
            raise ExportError(f"cannot export a {type(self.model).__name__}: its anchor points are not the grid "
                              f"((j + o)·stride, (i + o)·stride) with o = "
                              f"{self.center_offset} and strides {self.strides}")


class ExportedModelNMS(nn.Module):
    """:class:`ExportedModel` + in-graph hard NMS (``--nms``): ``images`` → ``det_boxes [N, 4]`` (xyxy
    input pixels), ``det_scores [N]`` (descending), ``det_labels [N]``, ``det_image [N]`` (index in
    the batch; int64). Every (anchor, class) pair above ``score_thr``, class-aware NMS per image
    (torchvision's, exported as onnxruntime's ``NonMaxSuppression``). Not in the graph: clipping to
    the unpadded image, rescaling to the original image, ``max_per_img``."""

    def __init__(self, model: nn.Module, score_thr: float, iou_thr: float) -> None:
        super().__init__()
        self.inner = ExportedModel(model)
        self.score_thr, self.iou_thr = float(score_thr), float(iou_thr)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        boxes, scores = self.inner(images)
        num_anchors, num_classes = scores.shape[1:]
        flat = scores.reshape(-1)
        pick = torch.nonzero(flat > self.score_thr).squeeze(1)
        labels = pick % num_classes
        anchor = torch.div(pick, num_classes, rounding_mode="floor")  # over B·A
        image = torch.div(anchor, num_anchors, rounding_mode="floor")
        picked = boxes.reshape(-1, 4)[anchor]
        # one NMS for all (image, class) groups: boxes of different groups are moved apart
        offset = (image * num_classes + labels).to(picked.dtype)[:, None] * (images.shape[-1] + images.shape[-2] + 1.0)
        keep = tv_ops.nms(picked + offset, flat[pick], self.iou_thr)
        return picked[keep], flat[pick][keep], labels[keep], image[keep]


def detections_from_dense(boxes, scores, test_cfg: TestConfig,
                          image_metas: Optional[Sequence[Mapping]] = None) -> list[dict[str, Tensor]]:
    """Final detections from the graph's outputs: every (anchor, class) pair scoring above
    ``test.score_thr``; boxes clipped to the meta's ``img_shape`` ``(h, w)`` (the resized image
    without its padding) and ÷ ``scale_factor`` ``(w_scale, h_scale)`` (both optional, as
    :func:`locdistill.inference.prepare_image` returns them); empty boxes dropped; the config's
    class-aware NMS (:func:`locdistill.nms.get_nms`); the best ``max_per_img`` kept. As
    :func:`~locdistill.models.postprocess.postprocess` with ``nms_pre ≤ 0`` (all candidates, not the
    top ``nms_pre`` per level).

    Args: ``boxes [B, A, 4]``, ``scores [B, A, C]`` (tensors or numpy arrays).
    Returns per image ``boxes [K, 4]``, ``scores [K]`` (descending), ``labels [K]`` (CPU tensors).
    """
    boxes, scores = torch.as_tensor(boxes).float(), torch.as_tensor(scores).float()
    nms_fn = get_nms(test_cfg.nms)
    results = []
    for i in range(scores.shape[0]):
        anchor, label = (scores[i] > test_cfg.score_thr).nonzero(as_tuple=True)
        b, s = boxes[i][anchor], scores[i][anchor, label]
        meta = image_metas[i] if image_metas is not None else {}
        if "img_shape" in meta:
            h, w = (float(v) for v in meta["img_shape"][:2])
            b = torch.minimum(b, torch.tensor([w, h, w, h]))
        sf = meta.get("scale_factor", (1.0, 1.0))
        ws, hs = (float(v) for v in (list(sf) * 2)[:2])
        b = b / torch.tensor([ws, hs, ws, hs])
        ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, s, label = b[ok], s[ok], label[ok]
        b, s, keep = nms_fn(b, s, label, test_cfg.iou_thr)
        label = label[keep]
        if test_cfg.max_per_img > 0:
            b, s, label = b[: test_cfg.max_per_img], s[: test_cfg.max_per_img], label[: test_cfg.max_per_img]
        results.append({"boxes": b, "scores": s, "labels": label})
    return results


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote."""

    path: Path
    inputs: list  # (name, shape with symbolic dims as strings, dtype)
    outputs: list
    opset: int
    size_bytes: int
    seconds: float
    check: Optional[str] = None  # onnxruntime's verdict on a random batch, None when not run
    nms: bool = False  # hard NMS in the graph

    def summary(self) -> list[str]:
        def fmt(v):  # a long symbolic dimension (the anchor count A of dynamic H, W) prints as "A"
            name, shape, dtype = v
            return f"  {name}: [{', '.join(str(d) if len(str(d)) <= 16 else 'A' for d in shape)}] {dtype}"

        lines = [f"wrote {self.path} ({self.size_bytes / 2 ** 20:.2f} MiB, opset {self.opset}, "
                 f"{self.seconds:.1f} s)", "inputs:"]
        lines += [fmt(v) for v in self.inputs] + ["outputs:"] + [fmt(v) for v in self.outputs]
        lines.append("hard NMS is in the graph (not: clipping to the unpadded image, rescaling, max_per_img)" if self.nms
                     else "NMS is not in the graph: apply it to boxes/scores (docs/tools.md, Export to ONNX)")
        if self.check is not None:
            lines.append(f"check: {self.check}")
        return lines


def _graph_io(path: Path) -> tuple[list, list]:
    onnx = require_onnx()
    m = onnx.load(str(path), load_external_data=False)

    def desc(v):
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return v.name, dims, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name

    return [desc(v) for v in m.graph.input], [desc(v) for v in m.graph.output]


def export_model(model: nn.Module, path: str | os.PathLike, size: Sequence[int], opset: int = OPSET,
                 check: Optional[bool] = None, batch: int = 2, dynamic_size: bool = True,
                 size_divisor: int = 32, nms: Optional[TestConfig] = None) -> ExportResult:
    """Write ``model`` (a detector in eval mode, on the CPU) as ONNX to ``path``.

    The batch dimension is dynamic. With ``dynamic_size`` (default) ``H`` and ``W`` are too, as
    multiples of ``size_divisor`` (the test pipeline pads to ``data.size_divisor``); ``size = (H, W)``
    is then the example traced (a multiple of ``size_divisor``). Without it the graph accepts
    ``size`` only. ``check`` (default: when onnxruntime is importable) runs the graph in onnxruntime
    on random batches (``batch`` images of ``size``; with ``dynamic_size`` also one image one
    ``size_divisor`` larger each way) and compares it with PyTorch. ``nms`` (a ``TestConfig`` with
    ``nms="nms"``) puts hard NMS into the graph (:class:`ExportedModelNMS`, its ``score_thr`` and
    ``iou_thr``).
    """
    require_onnx(check=bool(check))
    if check is None:
        check = onnxruntime_available()
    h, w = (int(v) for v in size)
    div = max(int(size_divisor), 1)
    if h < 1 or w < 1:
        raise ConfigError(f"--size {h} {w}: height and width must be positive")
    if dynamic_size and (h % div or w % div):
        raise ConfigError(f"--size {h} {w}: with dynamic height and width the example size must be a multiple of "
                          f"data.size_divisor={div}; fix: e.g. --size {-(-h // div) * div} {-(-w // div) * div}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(batch, 3, h, w)
    if nms is not None and nms.nms != "nms":
        raise ConfigError(f"--nms puts hard NMS (test.nms='nms') into the graph; test.nms={nms.nms!r} has no ONNX "
                          f"form; fix: --set test.nms=nms, or export without --nms and run it outside the graph")
    ExportedModel(model).check_points(example)
    make = (lambda: ExportedModelNMS(model, nms.score_thr, nms.iou_thr)) if nms is not None else (
        lambda: ExportedModel(model))
    wrapper = make().eval()
    names = ["det_boxes", "det_scores", "det_labels", "det_image"] if nms is not None else ["boxes", "scores"]
    dims = {0: torch.export.Dim("batch", min=1)}
    traced = example
    if dynamic_size:
        # trace where every level has >= 2 rows and columns: torch.export fixes sizes 0 and 1 as constants
        least = -(-(max(int(v) for v in model.strides) + 1) // div) * div
        traced = torch.randn(batch, 3, max(h, least), max(w, least))
        dims.update({2: div * torch.export.Dim("h_blocks", min=1, max=8192 // div),
                     3: div * torch.export.Dim("w_blocks", min=1, max=8192 // div)})
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        # torchvision's NMS shape function uses a deprecated torch name (a FutureWarning per trace)
        warnings.filterwarnings("ignore", category=FutureWarning, module="torchvision")
        program = torch.onnx.export(
            wrapper, (traced,), dynamo=True, opset_version=opset, input_names=["images"],
            output_names=names, dynamic_shapes={"images": dims},
            external_data=False, verbose=False, custom_translation_table=stable_translations())
    program.save(str(path))
    seconds = time.perf_counter() - t0
    inputs, outputs = _graph_io(path)
    result = ExportResult(path, inputs, outputs, opset, path.stat().st_size, seconds, nms=nms is not None)
    if check:  # a fresh wrapper: the traced one's flatten may cache export-time (fake) priors
        batches = [example] + ([torch.randn(1, 3, h + div, w + div)] if dynamic_size else [])
        result.check = check_onnx(make().eval(), path, batches)
    return result


def run_onnx(path: str | os.PathLike, images) -> tuple:
    """The outputs of the ONNX file on ``images`` as numpy arrays (onnxruntime, CPU): ``(boxes, scores)``,
    or with ``--nms`` ``(det_boxes, det_scores, det_labels, det_image)``."""
    require_onnx(check=True)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = images.numpy() if isinstance(images, Tensor) else images
    return tuple(sess.run(None, {"images": images}))


def check_onnx(wrapper: nn.Module, path: Path, batches: Sequence[Tensor], atol: float = 1e-3) -> str:
    """Run the file in onnxruntime and PyTorch on each batch of ``batches``; raise when they differ by
    more than ``atol`` (scores, labels) or ``atol`` × the image side (box pixels; output 0)."""
    worst, found = [0.0, 0.0], 0
    for images in batches:
        with torch.no_grad():
            ref = wrapper(images)
        got = run_onnx(path, images)
        found += len(got[0]) if len(got) == 4 else 0  # --nms: detections compared
        for k, (g, r) in enumerate(zip(got, ref)):
            if tuple(g.shape) != tuple(r.shape):
                raise ExportError(f"onnxruntime gives {path.name}'s output {k} the shape {tuple(g.shape)} on "
                                  f"images {tuple(images.shape)}; PyTorch {tuple(r.shape)}")
            if g.size:  # output 0: boxes (pixels); the others: scores, labels, image indices
                diff = float((torch.from_numpy(g).double() - r.double()).abs().max())
                worst[min(k, 1)] = max(worst[min(k, 1)], diff)
        if not (worst[0] <= atol * max(images.shape[-2:]) and worst[1] <= atol):  # NaN fails too
            break
    shapes = ", ".join("×".join(str(v) for v in b.shape) for b in batches)
    what = f"onnxruntime on random images {shapes}: max |Δ| boxes {worst[0]:.2e} px, scores {worst[1]:.2e}"
    if len(ref) == 4:
        what += f" ({found} detections)"
    if not (worst[0] <= atol * max(max(b.shape[-2:]) for b in batches) and worst[1] <= atol):
        raise ExportError(f"{what}: the ONNX graph does not match PyTorch (tolerance {atol})")
    return what + " (matches PyTorch)"


def default_size(cfg: Config) -> tuple[int, int]:
    """The test pipeline's largest padded input: ``data.img_scale`` (long, short side) padded to
    ``data.size_divisor``, as ``(H, W)`` for a landscape image."""
    scale = [int(v) for v in cfg.data.img_scale]
    long_side, short_side = max(scale), min(scale)
    div = max(int(cfg.data.size_divisor), 1)
    pad = lambda v: -(-v // div) * div  # noqa: E731
    return pad(short_side), pad(long_side)


def export_onnx(config: str, checkpoint: Optional[str], out: str | os.PathLike,
                size: Optional[Sequence[int]] = None, opset: int = OPSET, check: Optional[bool] = None,
                overrides: Sequence[str] = (), dynamic_size: bool = True, nms: bool = False) -> ExportResult:
    """``locdistill export CONFIG CKPT OUT``: load the detector (as ``predict``) and :func:`export_model`
    (``size`` default :func:`default_size`; ``H``, ``W`` dynamic multiples of ``data.size_divisor``
    unless ``dynamic_size=False``; ``nms``: hard NMS in the graph with ``test.score_thr`` / ``iou_thr``)."""
    require_onnx(check=bool(check))  # before loading anything
    cfg = load_config(config, list(overrides))
    det = open_detector(cfg, checkpoint, select_device("cpu"))
    return export_model(det.model, out, size or default_size(cfg), opset=opset, check=check,
                        dynamic_size=dynamic_size, size_divisor=cfg.data.size_divisor,
                        nms=cfg.test if nms else None)
