"""`locdistill convert` and the restricted loader for third-party (mmdetection / LD-repo) files."""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import types

import numpy as np
import pytest
import torch

from locdistill.checkpoint import UnloadedObject, load_checkpoint, load_model_weights
from locdistill.cli import main
from locdistill.config import Config, ModelConfig, dump_config_py, load_config
from locdistill.errors import CheckpointError
from locdistill.models import build_detector
from locdistill.tools.convert import convert_checkpoint, is_teacher_key, publish_path

CLASSES = ("cat", "dog", "bird")


def tiny_cfg(depth=18) -> Config:
    m = ModelConfig(num_classes=len(CLASSES))
    m.backbone.depth, m.backbone.base_channels = depth, 8
    m.neck.out_channels = m.head.feat_channels = 16
    m.head.stacked_convs, m.head.num_groups = 1, 8
    return Config(name="tiny", model=m)


@contextlib.contextmanager
def fake_mmcv():
    """Importable ``mmcv.utils.config.ConfigDict`` / ``mmengine...HistoryBuffer`` while saving only:
    the loader must read files that pickle them without importing either package."""
    cfg_mod = types.ModuleType("mmcv.utils.config")
    buf_mod = types.ModuleType("mmengine.logging.history_buffer")

    class ConfigDict(dict):
        pass

    class HistoryBuffer:
        def __init__(self):
            self._log_history = np.array([0.5, 0.25])
            self.max_length = 2

    for cls, mod in ((ConfigDict, cfg_mod), (HistoryBuffer, buf_mod)):
        cls.__module__, cls.__qualname__ = mod.__name__, cls.__name__
        setattr(mod, cls.__name__, cls)
    added = {"mmcv": types.ModuleType("mmcv"), "mmcv.utils": types.ModuleType("mmcv.utils"),
             "mmcv.utils.config": cfg_mod, "mmengine": types.ModuleType("mmengine"),
             "mmengine.logging": types.ModuleType("mmengine.logging"),
             "mmengine.logging.history_buffer": buf_mod}
    assert not any(k in sys.modules for k in added)
    sys.modules.update(added)
    try:
        yield ConfigDict, HistoryBuffer
    finally:
        for k in added:
            sys.modules.pop(k, None)


def ld_repo_checkpoint(tmp_path):
    """A checkpoint in the original LD code's layout: mmdet ``{"meta", "state_dict", "optimizer"}``
    with the student's keys, the teacher's under ``teacher_model.*`` and ``bbox_head.teacher_models.*``,
    and metadata holding numpy values and mmcv/mmengine objects."""
    cfg = tiny_cfg()
    cfg_path = tmp_path / "student_cfg.py"
    cfg_path.write_text(dump_config_py(cfg))
    torch.manual_seed(0)
    student = build_detector(cfg.model)
    teacher = build_detector(tiny_cfg(depth=34).model)
    sd = dict(student.state_dict())
    t_sd = teacher.state_dict()
    sd.update({f"teacher_model.{k}": v for k, v in t_sd.items()})
    head_keys = [k for k in t_sd if k.startswith("bbox_head.")]
    sd.update({f"bbox_head.teacher_models.0.{k[len('bbox_head.'):]}": t_sd[k] for k in head_keys})
    params = list(student.parameters())
    optimizer = {"state": {i: {"momentum_buffer": torch.randn_like(p)} for i, p in enumerate(params[:5])},
                 "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": list(range(len(params)))}]}
    with fake_mmcv() as (ConfigDict, HistoryBuffer):
        meta = {"mmdet_version": "2.11.0", "CLASSES": CLASSES, "epoch": 12, "iter": 58632,
                "config": "model = dict(type='GFL')", "hook_msgs": {"best_score": np.float64(0.365),
                                                                  "last_ckpt": "work_dirs/x/epoch_12.pth"},
                "cfg_dict": ConfigDict(lr=0.01), "history": HistoryBuffer(), "scores": np.arange(3)}
        path = tmp_path / "ld_r18_epoch_12.pth"
        torch.save({"meta": meta, "state_dict": sd, "optimizer": optimizer}, path)
    counts = {"teacher_model": len(t_sd), "bbox_head.teacher_models": len(head_keys)}
    return path, cfg_path, student, counts


def test_restricted_loader_reads_mmdet_metadata_without_importing_it(tmp_path):
    path, _, student, _ = ld_repo_checkpoint(tmp_path)
    with pytest.raises(Exception, match="Weights only load failed"):  # plain weights_only refuses the file
        torch.load(path, weights_only=True)
    ck = load_checkpoint(path)
    assert "mmcv" not in sys.modules and "mmengine" not in sys.modules
    meta = ck["meta"]
    assert isinstance(meta["cfg_dict"], UnloadedObject) and dict(meta["cfg_dict"]) == {"lr": 0.01}
    assert meta["cfg_dict"].pickled_name == "mmcv.utils.config.ConfigDict"
    assert meta["history"].state["max_length"] == 2
    assert meta["hook_msgs"]["best_score"] == pytest.approx(0.365) and meta["scores"].tolist() == [0, 1, 2]
    for k, v in student.state_dict().items():
        assert torch.equal(ck["state_dict"][k], v)


def test_convert_ld_repo_checkpoint(tmp_path, capsys):
    src, cfg_path, student, counts = ld_repo_checkpoint(tmp_path)
    out = tmp_path / "published" / "ld_r18.pth"
    assert main(["convert", str(src), str(out)]) == 0
    printed = capsys.readouterr().out

    files = list(out.parent.iterdir())
    assert len(files) == 1  # no temp file left behind
    final = files[0]
    digest = hashlib.sha256(final.read_bytes()).hexdigest()
    assert final.name == f"ld_r18-{digest[:8]}.pth"
    assert f"wrote {final}" in printed and digest in printed
    total = sum(counts.values())
    assert (f"stripped {total} teacher tensors: bbox_head.teacher_models.* ({counts['bbox_head.teacher_models']}), "
            f"teacher_model.* ({counts['teacher_model']})") in printed
    assert "optimizer" in printed

    ck = torch.load(final, weights_only=True)  # the published file needs no fallback
    assert set(ck) == {"model", "meta"}
    meta = ck["meta"]
    assert meta["converted_from"] == src.name and meta["classes"] == list(CLASSES)
    assert meta["epoch"] == 12 and meta["hook_msgs"]["best_score"] == pytest.approx(0.365)
    assert not {"cfg_dict", "history", "scores"} & set(meta)
    assert not any(is_teacher_key(k) for k in ck["model"])

    cfg = load_config(cfg_path)
    fresh = build_detector(cfg.model)
    diff = load_model_weights(fresh, final, strict=True)
    assert diff == {"missing": [], "unexpected": [], "shape": []}
    for k, v in student.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_publish_name_and_other_layouts(tmp_path):
    assert publish_path("a/b.pth", "0123456789ab").as_posix() == "a/b-01234567.pth"
    assert publish_path("a/b", "0123456789ab").as_posix() == "a/b-01234567.pth"
    assert publish_path("a/b.v1.pt", "fedcba9876").as_posix() == "a/b.v1-fedcba98.pt"
    assert is_teacher_key("teacher.backbone.conv1.weight") and is_teacher_key("bbox_head.teacher_models.0.x")
    assert not is_teacher_key("bbox_head.gfl_cls.weight")

    # a whole Distiller's state dict saved by hand: student.* + teacher.*
    torch.manual_seed(0)
    student, teacher = build_detector(tiny_cfg().model), build_detector(tiny_cfg().model)
    sd = {f"student.{k}": v for k, v in student.state_dict().items()}
    sd.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})
    torch.save(sd, tmp_path / "distiller_sd.pth")
    result = convert_checkpoint(tmp_path / "distiller_sd.pth", tmp_path / "plain")
    assert result.path.name == f"plain-{result.sha256[:8]}.pth"
    assert result.stripped == {"teacher": len(teacher.state_dict())} and result.dropped_prefix == "student."
    load_model_weights(build_detector(tiny_cfg().model), result.path, strict=True)

    # a file of teacher weights only has nothing to publish
    torch.save({"state_dict": {f"teacher_model.{k}": v for k, v in teacher.state_dict().items()}},
               tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match=r"t\.pth holds no student weights"):
        convert_checkpoint(tmp_path / "t.pth", tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": {"x": np.float64(1.0), "e": Evil(marker)}}, src)
    with pytest.raises(CheckpointError, match=r"safe load refuses.*system' is not allowed"):
        load_checkpoint(src)
    assert main(["convert", str(src), str(tmp_path / "out.pth")]) == 2
    assert "safe load refuses" in capsys.readouterr().err
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth"]  # nothing published


def test_pickle_cannot_patch_an_allowed_function(tmp_path):
    # GLOBAL torch._utils._rebuild_tensor_v2, then BUILD with state (None, {"__defaults__": (1,)}):
    # would set an attribute on the function itself if BUILD were unrestricted
    import torch._utils as tu

    before = tu._rebuild_tensor_v2.__defaults__
    payload = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b.")
    assert pickletools_ok(payload)
    path = tmp_path / "patch.pth"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match="safe load refuses"):
        load_checkpoint(path)
    assert tu._rebuild_tensor_v2.__defaults__ == before


def pickletools_ok(payload: bytes) -> bool:
    """The crafted payload is a well-formed pickle (so a refusal is the loader's doing)."""
    import pickletools

    ops = [op.name for op, _, _ in pickletools.genops(payload)]
    return ops[0] == "PROTO" and "GLOBAL" in ops and "BUILD" in ops and ops[-1] == "STOP"


def test_half_conversion_loads_into_float32_model(tmp_path):
    from locdistill.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
    from locdistill.config import ModelConfig
    from locdistill.models import build_detector
    from locdistill.tools.convert import convert_checkpoint

    mc = ModelConfig(num_classes=3)
    mc.backbone.depth, mc.backbone.base_channels = 18, 8
    mc.neck.out_channels = mc.head.feat_channels = 16
    mc.head.stacked_convs, mc.head.num_groups = 1, 4
    model = build_detector(mc)
    src = save_checkpoint(tmp_path / "full.pth", model, {}, {"classes": ["a", "b", "c"]})
    res = convert_checkpoint(src, tmp_path / "small.pth", half=True)
    ck = load_checkpoint(res.path)
    assert all(v.dtype == torch.float16 for v in ck["model"].values() if v.is_floating_point())
    assert res.path.stat().st_size < 0.6 * src.stat().st_size
    fresh = build_detector(mc)
    load_model_weights(fresh, ck, strict=True)
    for k, v in model.state_dict().items():
        w = fresh.state_dict()[k]
        assert w.dtype == v.dtype
        if v.is_floating_point():
            torch.testing.assert_close(w, v.half().float(), rtol=0, atol=0)
