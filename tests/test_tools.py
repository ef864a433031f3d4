"""User tools: `predict`, `visualize-distribution` and `benchmark` with a tiny random model."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from locdistill.checkpoint import save_checkpoint
from locdistill.cli import main
from locdistill.config import Config, config_to_dict, dump_config_py
from locdistill.models import build_detector
from voc_fixture import make_devkit

CLASSES = ["cat", "dog", "bird"]


def tiny_config(tmp_path, devkit=None, reg_max=16, name="tiny"):
    cfg = Config(name=name)
    m = cfg.model
    m.num_classes, m.backbone.depth, m.backbone.base_channels = 3, 18, 8
    m.neck.out_channels, m.head.feat_channels, m.head.stacked_convs, m.head.num_groups = 16, 16, 1, 4
    m.head.reg_max = reg_max
    cfg.data.img_scale, cfg.data.workers = (96, 64), 0
    cfg.train.device, cfg.test.score_thr = "cpu", 0.0
    if devkit is not None:
        cfg.data.dataset, cfg.data.voc_root, cfg.data.voc_val = "voc", str(devkit), ("VOC2007/test",)
        cfg.data.classes = ("aeroplane", "bicycle", "bird")
    path = tmp_path / f"{name}.py"
    path.write_text(dump_config_py(cfg))
    return cfg, path


def tiny_checkpoint(tmp_path, cfg, seed=0, name="tiny"):
    torch.manual_seed(seed)
    model = build_detector(cfg.model)
    with torch.no_grad():
        model.bbox_head.gfl_cls.bias.fill_(0.0)  # scores ~0.5: something to draw
    return save_checkpoint(tmp_path / f"{name}.pth", model, config_to_dict(cfg), {"classes": CLASSES})


@pytest.fixture
def tiny(tmp_path):
    cfg, cfg_path = tiny_config(tmp_path)
    return cfg_path, tiny_checkpoint(tmp_path, cfg)


def write_image(path, size, seed=0):
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    arr[size[1] // 4: size[1] // 2, size[0] // 4: size[0] // 2] = (250, 20, 20)
    Image.fromarray(arr).save(path)
    return path


def test_predict_draws_pictures_of_the_input_size_and_writes_json(tmp_path, tiny):
    cfg_path, ckpt = tiny
    a = write_image(tmp_path / "a.jpg", (120, 80))
    folder = tmp_path / "more"
    folder.mkdir()
    b = write_image(folder / "b.png", (70, 90), seed=1)
    out = tmp_path / "out"
    assert main(["predict", str(cfg_path), str(ckpt), str(a), str(folder), "--out-dir", str(out),
                 "--score-thr", "0.0"]) == 0
    for src, name, fmt in ((a, "a.jpg", "JPEG"), (b, "b.png", "PNG")):
        with Image.open(out / name) as im:
            im.load()
            assert im.format == fmt and im.size == Image.open(src).size
            drawn = np.asarray(im.convert("RGB"), dtype=np.int16)
        assert np.abs(drawn - np.asarray(Image.open(src).convert("RGB"), dtype=np.int16)).max() > 50  # boxes drawn
    data = json.loads((out / "detections.json").read_text())
    assert data["classes"] == CLASSES and len(data["images"]) == 2
    first = data["images"][0]
    assert (first["width"], first["height"]) == (120, 80) and 0 < len(first["detections"]) <= 100
    d = first["detections"][0]
    assert d["class"] in CLASSES and len(d["bbox"]) == 4 and 0.0 <= d["score"] <= 1.0


def test_predict_missing_image_is_a_clean_error(tmp_path, tiny, capsys):
    cfg_path, ckpt = tiny
    assert main(["predict", str(cfg_path), str(ckpt), str(tmp_path / "nope.jpg"), "--out-dir", str(tmp_path)]) == 2
    assert "nope.jpg" in capsys.readouterr().err


def test_visualize_distribution_with_teacher(tmp_path, tiny):
    cfg_path, ckpt = tiny
    tcfg, tcfg_path = tiny_config(tmp_path, name="teacher")
    tckpt = tiny_checkpoint(tmp_path, tcfg, seed=1, name="teacher")
    image = write_image(tmp_path / "img.png", (100, 75))
    out = tmp_path / "vis" / "dist.png"
    assert main(["visualize-distribution", str(cfg_path), str(ckpt), str(image), "--teacher", str(tcfg_path),
                 str(tckpt), "--out", str(out), "--top", "2"]) == 0
    with Image.open(out) as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 200  # 5 panels x 2 rows
    with Image.open(out.with_name("dist_boxes.png")) as im:
        im.load()
        assert im.size == (100, 75)


def test_visualize_distribution_checks_the_teacher_and_detections(tmp_path, tiny, capsys):
    cfg_path, ckpt = tiny
    tcfg, tcfg_path = tiny_config(tmp_path, reg_max=8, name="teacher8")
    tckpt = tiny_checkpoint(tmp_path, tcfg, name="teacher8")
    image = write_image(tmp_path / "img.png", (64, 64))
    assert main(["visualize-distribution", str(cfg_path), str(ckpt), str(image), "--teacher", str(tcfg_path),
                 str(tckpt), "--out", str(tmp_path / "x.png")]) == 2
    assert "reg_max" in capsys.readouterr().err
    assert main(["visualize-distribution", str(cfg_path), str(ckpt), str(image), "--out", str(tmp_path / "x.png"),
                 "--set", "test.score_thr=0.999"]) == 2
    assert "no detection" in capsys.readouterr().err


def test_benchmark_on_a_val_set_and_compare(tmp_path, capsys):
    devkit = make_devkit(tmp_path, {"VOC2007": {"test": 3}})
    cfg, cfg_path = tiny_config(tmp_path, devkit)
    ckpt = tiny_checkpoint(tmp_path, cfg)
    from locdistill.tools.benchmark import benchmark

    lines = []
    results = benchmark(str(cfg_path), str(ckpt), compare=[str(cfg_path)], images=4, warmup=1, log_interval=2,
                        say=lines.append)
    assert len(results) == 2 and all(r.images == 4 and r.fps > 0 for r in results)
    assert results[0].input_hw == (64.0, 96.0)  # 48x64 VOC images resized into (96, 64), padded to 32
    text = "\n".join(lines)
    assert "device: cpu" in text and "threads:" in text and "AMP: off" in text and "img_scale (96, 64)" in text
    assert "Done image [   2/4]" in text and "Overall fps" in text and "speed ratio" in text
    assert "(random weights)" in text  # the compared config was given without weights
    assert main(["benchmark", str(cfg_path), "--synthetic", "--images", "2", "--warmup", "0", "--amp"]) == 0
    out = capsys.readouterr().out
    assert "AMP: on (bfloat16)" in out and "synthetic" in out and "Overall fps" in out
