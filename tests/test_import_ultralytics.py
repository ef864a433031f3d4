"""``locdistill import-ultralytics``: a YOLOv8 ``.pt`` file is read without Ultralytics and without running
pickled code, mapped onto locdistill's YOLO family exactly, and refused clearly when it is something else.

The Ultralytics-like files are built here: stand-in classes (plain ``nn.Module`` subclasses written for this
test, with the published submodule layout and a forward that follows the published layer graph) are
registered under the Ultralytics module paths only while ``torch.save`` pickles them, then removed, so the
import sees a file whose classes it cannot import, as on a machine without Ultralytics."""
from __future__ import annotations

import contextlib
import os
import sys
import types

import pytest
import torch
from torch import nn

from locdistill.cli import main
from locdistill.config import load_config
from locdistill.configs.yolo._coco import SCALES
from locdistill.errors import CheckpointError
from locdistill.models.build import build_detector, load_detector
from locdistill.models.yolo.backbone import scaled_channels, scaled_depth
from locdistill.tools.import_ultralytics import import_ultralytics
from locdistill.ultralytics_format import read_ultralytics, ultralytics_key_to_locdistill

NAMES = {0: "zero", 1: "one", 2: "two"}


# ----------------------------------------------------------------------------- stand-ins of the published layout


class Conv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut):
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    def __init__(self, c1, c2, n, shortcut=False):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c)
        self.cv2 = Conv((2 + n) * self.c, c2)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        ys = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2):
        super().__init__()
        self.cv1, self.cv2 = Conv(c1, c1 // 2), Conv(4 * (c1 // 2), c2)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        ys = [self.cv1(x)]
        for _ in range(3):
            ys.append(self.m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class Concat(nn.Module):
    def forward(self, xs):
        return torch.cat(xs, 1)


class DFL(nn.Module):
    def __init__(self, c1=16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)


class Detect(nn.Module):
    def __init__(self, nc, ch):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), 16
        c2, c3 = max(16, ch[0] // 4, 64), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 64, 1)) for c in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in ch)
        self.dfl = DFL()
        self.stride = torch.tensor([8.0, 16.0, 32.0])  # a plain tensor attribute, as published

    def forward(self, xs):  # the raw per-level maps: 64 box channels then nc class channels
        return [torch.cat((b(x), c(x)), 1) for b, c, x in zip(self.cv2, self.cv3, xs)]


class Segment(Detect):
    def __init__(self, nc, ch):
        super().__init__(nc, ch)
        self.proto = Conv(ch[0], 32, 3)


class C3k2(C2f):  # a YOLO11 block name
    pass


class DetectionModel(nn.Module):
    """``model`` = the layers of yolov8.yaml, each with ``f`` (from) as published."""

    def __init__(self, scale="n", nc=3, head=Detect, block2=C2f):
        super().__init__()
        d, w, mc = SCALES[scale]
        ch = lambda c: scaled_channels(c, w, mc)  # noqa: E731
        n = lambda r: scaled_depth(r, d)  # noqa: E731
        up = lambda: nn.Upsample(scale_factor=2.0, mode="nearest")  # noqa: E731
        layers = [  # (from, module)
            (-1, Conv(3, ch(64), 3, 2)), (-1, Conv(ch(64), ch(128), 3, 2)), (-1, block2(ch(128), ch(128), n(3), True)),
            (-1, Conv(ch(128), ch(256), 3, 2)), (-1, C2f(ch(256), ch(256), n(6), True)),
            (-1, Conv(ch(256), ch(512), 3, 2)), (-1, C2f(ch(512), ch(512), n(6), True)),
            (-1, Conv(ch(512), ch(1024), 3, 2)), (-1, C2f(ch(1024), ch(1024), n(3), True)),
            (-1, SPPF(ch(1024), ch(1024))),
            (-1, up()), ([-1, 6], Concat()), (-1, C2f(ch(1024) + ch(512), ch(512), n(3))),
            (-1, up()), ([-1, 4], Concat()), (-1, C2f(ch(512) + ch(256), ch(256), n(3))),
            (-1, Conv(ch(256), ch(256), 3, 2)), ([-1, 12], Concat()), (-1, C2f(ch(256) + ch(512), ch(512), n(3))),
            (-1, Conv(ch(512), ch(512), 3, 2)), ([-1, 9], Concat()), (-1, C2f(ch(512) + ch(1024), ch(1024), n(3))),
            ([15, 18, 21], head(nc, [ch(256), ch(512), ch(1024)])),
        ]
        for i, (f, m) in enumerate(layers):
            m.f, m.i = f, i
        self.model = nn.Sequential(*(m for _, m in layers))
        self.names = dict(NAMES) if nc == len(NAMES) else {i: f"c{i}" for i in range(nc)}
        self.yaml = {"nc": nc, "scale": scale, "backbone": [[-1, 1, "Conv", [64, 3, 2]]], "head": []}
        self.stride = torch.tensor([8.0, 16.0, 32.0])

    def forward(self, x):
        outs = []
        for m in self.model:
            if m.f != -1:
                x = outs[m.f] if isinstance(m.f, int) else [x if j == -1 else outs[j] for j in m.f]
            x = m(x)
            outs.append(x)
        return x


STAND_INS = {"ultralytics.nn.tasks": [DetectionModel], "ultralytics.nn.modules.conv": [Conv, Concat],
             "ultralytics.nn.modules.block": [C2f, SPPF, Bottleneck, DFL, C3k2],
             "ultralytics.nn.modules.head": [Detect, Segment]}
for _module, _classes in STAND_INS.items():
    for _cls in _classes:
        _cls.__module__, _cls.__qualname__ = _module, _cls.__name__


@contextlib.contextmanager
def ultralytics_modules():
    """The stand-in classes importable under the Ultralytics module paths, then removed from sys.modules."""
    added = []
    for path, classes in STAND_INS.items():
        parts = path.split(".")
        for k in range(1, len(parts) + 1):
            name = ".".join(parts[:k])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        for cls in classes:
            setattr(sys.modules[path], cls.__name__, cls)
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]


def save_ultralytics(path, model, ema_slot=False):
    """``torch.save`` a dict laid out like a published Ultralytics file (half-precision model)."""
    m = model.half().eval()
    for p in m.parameters():
        p.requires_grad = False
    ckpt = {"date": "2026-01-01T00:00:00", "version": "8.1.0", "license": "AGPL-3.0", "epoch": -1,
            "best_fitness": None, "model": None if ema_slot else m, "ema": m if ema_slot else None, "updates": None,
            "optimizer": None, "train_args": {"model": "yolov8n.yaml", "imgsz": 640, "epochs": 1, "half": False}}
    with ultralytics_modules():
        torch.save(ckpt, path)
    assert "ultralytics" not in sys.modules or not hasattr(sys.modules.get("ultralytics.nn.tasks"), "DetectionModel")


def ours_random(scale="n", nc=3, seed=0):
    """Our YOLO with random weights and BN statistics (so every tensor is distinguishable)."""
    torch.manual_seed(seed)
    cfg = load_config(f"yolo/yolov8{scale}_coco")
    cfg.model.num_classes = nc
    model = build_detector(cfg.model)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.1)
    return model.eval()


def standin_from(ours, scale="n", nc=3, **kw):
    """The stand-in DetectionModel holding ``ours``' weights (every key of it must map onto one of ours)."""
    fake = DetectionModel(scale, nc, **kw)
    own = ours.state_dict()
    sd = {}
    for k, v in fake.state_dict().items():
        new = ultralytics_key_to_locdistill(k)
        sd[k] = v if new is None else own[new]
    assert len([k for k in sd if ultralytics_key_to_locdistill(k)]) == len(own)
    fake.load_state_dict(sd)
    return fake.eval()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ultra")
    ours = ours_random()
    fake = standin_from(ours)
    reference = standin_from(ours).half().float().eval()  # the file's weights, back in float32
    src = tmp / "yolov8n-custom.pt"
    save_ultralytics(src, fake)
    return ours, reference, src, tmp


# ----------------------------------------------------------------------------- tests


def test_stand_ins_are_gone_and_the_file_has_whole_modules(pair):
    _, _, src, _ = pair
    assert "ultralytics.nn.tasks" not in sys.modules
    with pytest.raises(Exception):  # plain torch.load needs the classes
        torch.load(src, weights_only=False)
    ck = read_ultralytics(src)
    assert ck.model_class == "ultralytics.nn.tasks.DetectionModel" and ck.entry == "model"
    assert ck.classes == ["zero", "one", "two"] and ck.yaml["scale"] == "n" and ck.yaml["nc"] == 3
    assert ck.layer_classes[22] == "ultralytics.nn.modules.head.Detect"
    assert ck.layer_classes[10] == "torch.nn.modules.upsampling.Upsample"
    assert ck.state["model.0.conv.weight"].dtype == torch.float16 and "model.22.dfl.conv.weight" in ck.state
    assert ck.metadata["version"] == "8.1.0" and ck.bn_eps == {1e-3}


def test_import_maps_every_weight_exactly(pair):
    ours, _, src, tmp = pair
    out = tmp / "imported.pth"
    assert main(["import-ultralytics", str(src), str(out), "--keep-input-scaling"]) == 0
    saved = torch.load(out, weights_only=True)  # a plain locdistill checkpoint
    meta = saved["meta"]
    assert meta["input_scaling_folded"] is False
    assert meta["classes"] == ["zero", "one", "two"] and meta["converted_from"] == "yolov8n-custom.pt"
    assert meta["scale"] == "n" and meta["source"] == "ultralytics" and meta["ultralytics_version"] == "8.1.0"
    assert meta["dropped_keys"] == ["model.22.dfl.conv.weight"]
    own = ours.state_dict()
    assert set(saved["model"]) == set(own)
    for k, v in own.items():
        got = saved["model"][k]
        want = v.half().float() if v.is_floating_point() else v
        assert got.dtype == v.dtype and torch.equal(got, want), k


def test_imported_checkpoint_loads_strictly_and_gives_the_original_outputs(pair):
    ours, reference, src, tmp = pair
    out = tmp / "imported2.pth"
    result = import_ultralytics(src, out, fold_input=False)
    assert result.scale == "n" and result.num_classes == 3 and result.config_name == "yolo/yolov8n_coco"
    model, classes = load_detector(load_config("yolo/yolov8n_coco"), str(out))  # as `locdistill test` does
    assert classes == ["zero", "one", "two"] and model.num_classes == 3
    model.eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        got = model(x)
        raw = reference(x)
    for level, r in enumerate(raw):  # Detect's raw maps: 64 box channels, then the classes
        torch.testing.assert_close(got["box_logits"][level], r[:, :64], rtol=0, atol=1e-5)
        torch.testing.assert_close(got["cls_logits"][level], r[:, 64:], rtol=0, atol=1e-5)


def test_default_import_folds_the_input_scaling_into_the_stem(pair):
    """By default the model takes locdistill's normalised images: on them it gives what the original gives on
    pixels / 255 (the stem's interior; only its zero padding differs); every other tensor is the file's."""
    ours, reference, src, tmp = pair
    result = import_ultralytics(src, tmp / "folded.pth")
    assert any("folded" in n for n in result.notes)
    saved = torch.load(result.path, weights_only=True)
    assert saved["meta"]["input_scaling_folded"] is True
    changed = {"backbone.stem.conv.weight", "backbone.stem.bn.running_mean"}
    for k, v in ours.state_dict().items():
        want = v.half().float() if v.is_floating_point() else v
        assert torch.equal(saved["model"][k], want) != (k in changed), k
    model, _ = load_detector(load_config("yolo/yolov8n_coco"), str(result.path))
    model.eval()
    torch.manual_seed(2)
    pixels = torch.randint(0, 256, (1, 3, 64, 96)).float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    with torch.no_grad():
        got = model.backbone.stem((pixels - mean) / std)
        want = reference.model[0](pixels / 255)
    torch.testing.assert_close(got[..., 1:-1, 1:-1], want[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got[..., 0, :], want[..., 0, :], atol=1e-4)  # the padded frame differs


def test_ema_entry_is_preferred(tmp_path):
    ours = ours_random(seed=3)
    src = tmp_path / "last.pt"
    save_ultralytics(src, standin_from(ours), ema_slot=True)
    result = import_ultralytics(src, tmp_path / "o.pth")
    saved = torch.load(result.path, weights_only=True)
    assert saved["meta"]["ultralytics_entry"] == "ema"
    assert torch.equal(saved["model"]["bbox_head.cls_branches.2.2.bias"],
                       ours.state_dict()["bbox_head.cls_branches.2.2.bias"].half().float())


def test_scale_is_read_from_the_shapes_when_the_yaml_lacks_it(tmp_path):
    ours = ours_random("s", nc=3)
    fake = standin_from(ours, "s")
    fake.yaml = {"nc": 3}
    src = tmp_path / "noscale.pt"
    save_ultralytics(src, fake)
    assert import_ultralytics(src, tmp_path / "o.pth").scale == "s"


class _Payload:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.parametrize("where", ["top", "inside_model"])
def test_malicious_pickle_is_refused_without_running(tmp_path, where):
    sentinel = tmp_path / "pwned"
    src = tmp_path / "evil.pt"
    if where == "top":
        torch.save({"model": _Payload(sentinel), "version": "8.1.0"}, src)
    else:  # hidden in an attribute of a (stand-in) module
        fake = DetectionModel("n", 3)
        fake.args = _Payload(sentinel)
        with ultralytics_modules():
            torch.save({"model": fake, "ema": None}, src)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*(posix|os)\.system.*not allowed"):
        import_ultralytics(src, tmp_path / "o.pth")
    assert not sentinel.exists()
    assert not (tmp_path / "o.pth").exists()


def test_builtins_eval_is_refused(tmp_path):
    class Eval:
        def __reduce__(self):
            return (eval, ("1+1",))

    src = tmp_path / "eval.pt"
    torch.save({"model": Eval()}, src)
    with pytest.raises(CheckpointError, match=r"(__builtin__|builtins)\.eval' is not allowed"):
        read_ultralytics(src)


def test_segmentation_model_is_not_a_detection_model(tmp_path):
    src = tmp_path / "seg.pt"
    save_ultralytics(src, DetectionModel("n", 3, head=Segment))
    with pytest.raises(CheckpointError, match=r"seg\.pt is an instance-segmentation model.*not a detection model"):
        import_ultralytics(src, tmp_path / "o.pth")


def test_yolo11_layout_names_the_layers(tmp_path):
    src = tmp_path / "yolo11n.pt"
    save_ultralytics(src, DetectionModel("n", 3, block2=C3k2))
    with pytest.raises(CheckpointError, match=r"YOLO11(.|\n)*model\.2 is ultralytics\.nn\.modules\.block\.C3k2"):
        import_ultralytics(src, tmp_path / "o.pth")


def test_unknown_shapes_name_the_mismatching_keys(tmp_path):
    ours = ours_random()
    fake = standin_from(ours)
    fake.model[22].cv2[1][2] = nn.Conv2d(fake.model[22].cv2[1][2].in_channels, 64, 3, padding=1)  # 3x3, not 1x1
    fake.model[22].cv2[1][2].f = None
    src = tmp_path / "odd.pt"
    save_ultralytics(src, fake)
    match = r"odd\.pt: its weights fit none(.|\n)*bbox_head\.reg_branches\.1\.2\.weight"
    with pytest.raises(CheckpointError, match=match):
        import_ultralytics(src, tmp_path / "o.pth")


def test_not_an_ultralytics_file(tmp_path):
    src = tmp_path / "plain.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}}, src)
    with pytest.raises(CheckpointError, match="not an Ultralytics model file"):
        import_ultralytics(src, tmp_path / "o.pth")


def test_equivalence_with_ultralytics(tmp_path):
    """Optional: with the real package installed, its model and the imported one give the same raw outputs."""
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel as UltraModel  # only the test, only when installed

    torch.manual_seed(0)
    model = UltraModel("yolov8n.yaml", nc=3, verbose=False).eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and "dfl" not in name:
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.1)
    model.names = dict(NAMES)
    src = tmp_path / "real.pt"
    torch.save({"model": model, "ema": None, "version": "?"}, src)
    out = import_ultralytics(src, tmp_path / "o.pth", fold_input=False).path
    ours, classes = load_detector(load_config("yolo/yolov8n_coco"), str(out))
    assert classes == ["zero", "one", "two"]
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        raw = model(x)[1]  # eval mode: (decoded, raw per-level maps)
        got = ours.eval()(x)
    if isinstance(raw, dict):  # newer versions: {"boxes": [B, 64, A], "scores": [B, C, A], ...}, levels flattened
        flat = {k: torch.cat([t.flatten(2) for t in got[k]], 2) for k in ("box_logits", "cls_logits")}
        torch.testing.assert_close(flat["box_logits"], raw["boxes"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(flat["cls_logits"], raw["scores"], rtol=1e-4, atol=1e-4)
        return
    for level, r in enumerate(raw):  # older versions: per level [B, 64 + C, H, W]
        torch.testing.assert_close(got["box_logits"][level], r[:, :64], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got["cls_logits"][level], r[:, 64:], rtol=1e-4, atol=1e-4)
