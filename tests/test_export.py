"""``locdistill export``: the ONNX graph (detector + in-graph decoding) run in onnxruntime matches
PyTorch's decoded outputs and, after the project's NMS, its detections.

Tolerances: boxes 1e-3 px (inputs of 64×96 px), scores 1e-5 (observed: ~2e-5 px and ~1e-7).
"""
from __future__ import annotations

import sys

import pytest
import torch

from locdistill.checkpoint import save_checkpoint
from locdistill.cli import main
from locdistill.config import load_config
from locdistill.errors import LocDistillError
from locdistill.models.build import build_detector
from locdistill.models.postprocess import postprocess
from locdistill.models.yolo import YOLOCriterion
from locdistill.models.yolo.postprocess import yolo_postprocess
from locdistill.errors import ConfigError
from locdistill.tools.export import ExportedModel, detections_from_dense, export_model, export_onnx, run_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

SIZE, SIZE2 = (64, 96), (96, 128)  # H, W
BOX_ATOL, SCORE_ATOL = 1e-3, 1e-5


def _tiny_model(head: str):
    cfg = load_config("demo/gfl_r18_digits", [f"model.head.type={head}"])
    torch.manual_seed(0)
    model = build_detector(cfg.model).eval()
    with torch.no_grad():  # spread the scores so that NMS has clear winners (no near-ties)
        torch.nn.init.normal_(model.bbox_head.gfl_cls.weight, std=0.3)
        torch.nn.init.normal_(model.bbox_head.gfl_reg.weight, std=0.3)
    return cfg, model


def _tiny_yolo():
    """yolov8n_digits shrunk (depth 0.1, width 1/16, 64 channels at most: ~150k parameters) for speed."""
    cfg = load_config("yolo/yolov8n_digits", ["model.yolo.depth=0.1", "model.yolo.width=0.0625",
                                              "model.yolo.max_channels=64"])
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    with torch.no_grad():  # spread the scores and distances (the class prior bias would leave no detection)
        for branch in (*model.bbox_head.cls_branches, *model.bbox_head.reg_branches):
            torch.nn.init.normal_(branch[-1].weight, std=0.05)
            branch[-1].bias.zero_()
        for branch in model.bbox_head.reg_branches:  # favour the low bins: boxes mostly inside the image
            branch[-1].bias.copy_((-0.6 * torch.arange(16.0)).repeat(4))
        for m in model.modules():  # BN statistics of one random batch: activations do not vanish with depth
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 1.0
        model.train()(torch.randn(2, 3, *SIZE))
    return cfg, model.eval()


def _same_detections(a, b):
    assert len(a) == len(b)
    for da, db in zip(a, b):
        assert da["labels"].tolist() == db["labels"].tolist()
        torch.testing.assert_close(da["boxes"], db["boxes"], atol=BOX_ATOL, rtol=0)
        torch.testing.assert_close(da["scores"], db["scores"], atol=SCORE_ATOL, rtol=0)


@pytest.mark.parametrize("head", ["gfl", "gflv2"])
def test_onnx_matches_pytorch_for_batch_1_and_2(tmp_path, head):
    cfg, model = _tiny_model(head)
    path = tmp_path / "model.onnx"
    result = export_model(model, path, SIZE, check=True)
    assert result.inputs == [("images", ["batch", 3, "32*h_blocks", "32*w_blocks"], "float32")]
    assert [o[0] for o in result.outputs] == ["boxes", "scores"]
    assert "matches PyTorch" in result.check and path.stat().st_size == result.size_bytes

    cfg.test.score_thr, cfg.test.nms_pre = 0.3, 0  # nms_pre <= 0: all candidates, as detections_from_dense
    for batch, size in ((1, SIZE), (2, SIZE2)):  # dynamic batch, height and width
        images = torch.randn(batch, 3, *size)
        boxes, scores = (torch.from_numpy(v) for v in run_onnx(path, images))
        with torch.no_grad():
            ref_boxes, ref_scores = ExportedModel(model)(images)
            outputs = model(images)
        assert boxes.shape == (batch, ref_boxes.shape[1], 4) and scores.shape == (batch, ref_boxes.shape[1], 10)
        torch.testing.assert_close(boxes, ref_boxes, atol=BOX_ATOL, rtol=0)
        torch.testing.assert_close(scores, ref_scores, atol=SCORE_ATOL, rtol=0)

        # image 0 fills the input; image 1 (batch 2) is smaller, padded, and resized by 1.5
        metas = [{"img_shape": size, "scale_factor": (1.0, 1.0)},
                 {"img_shape": (size[0] - 20, size[1] - 30), "scale_factor": (1.5, 1.5)}][:batch]
        got = detections_from_dense(boxes, scores, cfg.test, metas)
        ref = postprocess(outputs, metas, cfg.test, model.strides, model.reg_max)
        assert all(len(d["scores"]) > 0 for d in ref), "the test needs detections to compare"
        _same_detections(got, ref)
        _same_detections(detections_from_dense(ref_boxes, ref_scores, cfg.test, metas), ref)


def test_nms_in_the_graph_matches_the_projects_nms(tmp_path):
    cfg, model = _tiny_model("gfl")
    cfg.test.score_thr, cfg.test.max_per_img = 0.3, 0  # the graph applies no max_per_img
    path = tmp_path / "nms.onnx"
    result = export_model(model, path, SIZE, check=True, dynamic_size=False, nms=cfg.test)
    assert [o[0] for o in result.outputs] == ["det_boxes", "det_scores", "det_labels", "det_image"]
    images = torch.randn(2, 3, *SIZE)
    det_boxes, det_scores, det_labels, det_image = (torch.from_numpy(v) for v in run_onnx(path, images))
    with torch.no_grad():
        ref = detections_from_dense(*ExportedModel(model)(images), cfg.test)
    got = [{"boxes": det_boxes[det_image == i], "scores": det_scores[det_image == i],
            "labels": det_labels[det_image == i]} for i in range(2)]
    assert all(len(d["scores"]) > 0 for d in ref)
    _same_detections(got, ref)
    cfg.test.nms = "voting_cluster_diou"
    with pytest.raises(ConfigError, match="test.nms=nms"):
        export_model(model, path, SIZE, check=False, nms=cfg.test)


def test_cli_export_of_a_digits_checkpoint(tmp_path, capsys):
    cfg, model = _tiny_model("gfl")
    ckpt = save_checkpoint(tmp_path / "tiny.pth", model, meta={"classes": [str(i) for i in range(10)]})
    out = tmp_path / "out.onnx"
    assert main(["export", "demo/gfl_r18_digits", str(ckpt), str(out), "--size", "64", "96", "--static-size"]) == 0
    text = capsys.readouterr().out
    assert out.is_file()
    assert "images: [batch, 3, 64, 96] float32" in text and "scores: [batch, 129, 10] float32" in text
    assert "opset 18" in text and "matches PyTorch" in text and "NMS is not in the graph" in text


def test_missing_onnx_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    with pytest.raises(LocDistillError, match=r'pip install "locdistill\[export\]"'):
        export_onnx("demo/gfl_r18_digits", None, tmp_path / "x.onnx", size=SIZE)
    assert main(["export", "demo/gfl_r18_digits", "none.pth", str(tmp_path / "x.onnx")]) == 2
    assert 'pip install "locdistill[export]"' in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_yolo_onnx_matches_the_familys_decoding_and_nms(tmp_path, capsys):
    """A YOLO model (points at cell centres, offset 0.5; 16 bins = distances 0..15 strides): the graph's
    boxes / scores equal PyTorch's for batch 1 and 2 and, after the project's NMS, the detections of the
    family's own post-processing (:func:`yolo_postprocess`)."""
    cfg, model = _tiny_yolo()
    assert model.anchor_offset == 0.5 and model.reg_max == 15
    images = torch.randn(2, 3, *SIZE2)
    with torch.no_grad():  # the model's flatten = the criterion's (points, strides, logits)
        outputs = model(images)
        own, crit = model.flatten(outputs), YOLOCriterion(10).flatten(outputs)
    for name in ("cls_logits", "box_logits", "points", "strides", "level_ids", "centers"):
        torch.testing.assert_close(getattr(own, name), getattr(crit, name), atol=0, rtol=0)
    assert own.level_sizes == crit.level_sizes and own.reg_max == 15

    path = tmp_path / "yolo.onnx"
    result = export_model(model, path, SIZE, check=True)
    assert result.inputs == [("images", ["batch", 3, "32*h_blocks", "32*w_blocks"], "float32")]
    assert "matches PyTorch" in result.check

    cfg.test.score_thr, cfg.test.nms_pre = 0.5, 0
    for batch, size in ((1, SIZE), (2, SIZE2)):
        images = torch.randn(batch, 3, *size)
        boxes, scores = (torch.from_numpy(v) for v in run_onnx(path, images))
        with torch.no_grad():
            ref_boxes, ref_scores = ExportedModel(model)(images)
            outputs = model(images)
        num_anchors = sum((size[0] // s) * (size[1] // s) for s in (8, 16, 32))
        assert boxes.shape == (batch, num_anchors, 4) and scores.shape == (batch, num_anchors, 10)
        torch.testing.assert_close(boxes, ref_boxes, atol=BOX_ATOL, rtol=0)
        torch.testing.assert_close(scores, ref_scores, atol=SCORE_ATOL, rtol=0)
        # the first anchor: cell centre (4, 4) of stride 8 -/+ the expected bin value (0..15) x 8
        dist = (model.flatten(outputs).box_logits[0, 0].softmax(-1) * torch.arange(16.0)).sum(-1) * 8
        corner = torch.cat([4 - dist[:2], 4 + dist[2:]]).clamp(min=0).minimum(torch.tensor([size[1], size[0]] * 2))
        torch.testing.assert_close(boxes[0, 0], corner, atol=BOX_ATOL, rtol=0)

        metas = [{"img_shape": size, "scale_factor": (1.0, 1.0)},
                 {"img_shape": (size[0] - 20, size[1] - 30), "scale_factor": (1.5, 1.5)}][:batch]
        ref = yolo_postprocess(outputs, metas, cfg.test, model.strides, model.reg_max)
        assert all(len(d["scores"]) > 0 for d in ref), "the test needs detections to compare"
        _same_detections(detections_from_dense(boxes, scores, cfg.test, metas), ref)
        _same_detections(model.predict(images, metas, cfg.test), ref)

    ckpt = save_checkpoint(tmp_path / "yolo.pth", model, meta={"classes": [str(i) for i in range(10)]})
    out = tmp_path / "cli.onnx"
    overrides = ["model.yolo.depth=0.1", "model.yolo.width=0.0625", "model.yolo.max_channels=64"]
    assert main(["export", "yolo/yolov8n_digits", str(ckpt), str(out), "--size", "64", "96", "--static-size",
                 "--no-check", "--set", *overrides]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "scores: [batch, 126, 10] float32" in text
