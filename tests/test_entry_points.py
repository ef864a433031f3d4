"""The entry points: ``models.build.load_detector`` (build + load), ``inference`` (one image)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from PIL import Image

from locdistill.checkpoint import load_checkpoint, save_checkpoint
from locdistill.config import load_config
from locdistill.data.loader import build_dataset
from locdistill.errors import CheckpointError
from locdistill.inference import detect, open_detector, prepare_image, prepare_tensor
from locdistill.models.build import build_detector, load_detector

SMALL = ["model.backbone.base_channels=8", "model.neck.out_channels=32", "model.head.feat_channels=32",
         "model.head.stacked_convs=1", "model.head.num_groups=8", "model.backbone.pretrained=",
         "data.digits_train=8", "data.digits_val=4", "data.digits_image_size=96", "data.img_scale=(96, 96)",
         "train.device=cpu", "test.score_thr=0.0"]
CONFIG = "demo/gfl_r18_digits"


def _cfg(*extra):
    return load_config(CONFIG, SMALL + list(extra))


def test_load_detector_follows_the_checkpoint(tmp_path):
    model = build_detector(_cfg("model.num_classes=3").model)
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)  # no metadata: the classifier's rows give the class count
    cfg = _cfg("model.num_classes=10")
    loaded, classes = load_detector(cfg, bare)
    assert cfg.model.num_classes == 3 and loaded.num_classes == 3 and classes is None
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)

    named = save_checkpoint(tmp_path / "named.pth", model, meta={"classes": ["a", "b", "c"]})
    loaded, classes = load_detector(_cfg(), load_checkpoint(named), num_classes=7)  # a dict works too
    assert loaded.num_classes == 3 and classes == ["a", "b", "c"]

    cfg = _cfg()
    fresh, classes = load_detector(cfg, None, num_classes=5)  # no checkpoint: the given class count
    assert fresh.num_classes == 5 and classes is None


def test_load_detector_is_strict_and_names_the_file(tmp_path):
    model = build_detector(_cfg("model.num_classes=3").model)
    sd = model.state_dict()
    sd.pop("bbox_head.gfl_reg.bias")
    path = tmp_path / "broken.pth"
    torch.save({"model": sd, "meta": {"classes": ["a", "b", "c"]}}, path)
    with pytest.raises(CheckpointError, match=r"broken\.pth does not match.*\n.*missing in file \(1\)"):
        load_detector(_cfg(), path)
    loaded, _ = load_detector(_cfg(), path, strict=False)  # the rest is loaded
    assert torch.equal(loaded.state_dict()["bbox_head.gfl_cls.weight"], sd["bbox_head.gfl_cls.weight"])


def test_inference_prepares_an_image_as_the_val_set_does(tmp_path):
    cfg = _cfg()
    val = build_dataset(cfg.data, "val")
    image, target = val.get_raw(0)
    batch, meta = prepare_tensor(image, target, cfg)
    ref_image, ref_target = val[0]
    h, w = ref_image.shape[1:]
    assert torch.equal(batch[0, :, :h, :w], ref_image)
    assert meta["img_shape"] == ref_target["img_shape"] and meta["scale_factor"] == ref_target["scale_factor"]

    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    from_pil, meta_pil = prepare_image(pil, cfg)
    assert torch.equal(from_pil, batch) and meta_pil == meta

    model = build_detector(_cfg("model.num_classes=10").model)
    ckpt = save_checkpoint(tmp_path / "m.pth", model, meta={"classes": list(val.classes)})
    det = open_detector(_cfg(), ckpt, torch.device("cpu"))
    assert not det.model.training and det.classes == list(val.classes)
    out = detect(det, pil)
    assert set(out) == {"boxes", "scores", "labels"} and out["boxes"].shape[1] == 4


def test_no_function_level_imports_of_locdistill_outside_the_cli():
    root = Path(__file__).resolve().parents[1] / "locdistill"
    found = []
    for f in sorted(root.rglob("*.py")):
        if f.name == "cli.py" or "configs" in f.parts:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.level or (inner.module or "").startswith("locdistill")):
                    found.append(f"{f.relative_to(root)}:{inner.lineno}")
    assert found == []
