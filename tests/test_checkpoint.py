import os

import pytest
import torch
from torch import nn

from locdistill.checkpoint import (atomic_torch_save, extract_state_dict, load_checkpoint, load_model_weights,
                                   save_checkpoint)
from locdistill.errors import CheckpointError


class Tiny(nn.Module):
    def __init__(self, c=3):
        super().__init__()
        self.conv = nn.Conv2d(c, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


class Wrapper(nn.Module):  # looks like a Distiller: student + teacher
    def __init__(self):
        super().__init__()
        self.student = Tiny()
        self.teacher = Tiny()


def test_save_load_round_trip(tmp_path):
    m = Tiny()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    p = save_checkpoint(tmp_path / "a.pth", m, {"name": "x"}, {"epoch": 3}, opt)
    ck = load_checkpoint(p)
    assert ck["meta"]["epoch"] == 3 and "version" in ck["meta"] and ck["config"] == {"name": "x"}
    m2 = Tiny()
    load_model_weights(m2, ck)
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    assert "optimizer" in ck and ck["optimizer"]["state"]


def test_distiller_saves_student_only(tmp_path):
    w = Wrapper()
    ck = load_checkpoint(save_checkpoint(tmp_path / "s.pth", w))
    assert not any(k.startswith("teacher") for k in ck["model"])
    assert set(ck["model"]) == set(Tiny().state_dict())


def test_atomic_write_never_truncates(tmp_path, monkeypatch):
    p = tmp_path / "c.pth"
    atomic_torch_save({"model": {"w": torch.ones(3)}}, p)
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        atomic_torch_save({"model": {"w": torch.zeros(3)}}, p)
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["c.pth"]  # no temp file left behind


def test_mismatch_is_a_readable_error(tmp_path):
    p = save_checkpoint(tmp_path / "t.pth", Tiny(c=3), {"name": "cfg_a"})
    with pytest.raises(CheckpointError) as e:
        load_model_weights(Tiny(c=5), p)
    msg = str(e.value)
    assert "conv.weight" in msg and "[4, 3, 3, 3]" in msg and "cfg_a" in msg and str(p) in msg


def test_missing_and_unexpected_keys_grouped(tmp_path):
    sd = Tiny().state_dict()
    sd["extra.layer.weight"] = torch.zeros(1)
    del sd["bn.weight"]
    with pytest.raises(CheckpointError) as e:
        load_model_weights(Tiny(), {"state_dict": sd}, source="x.pth")
    assert "missing in file (1): bn.weight" in str(e.value)
    assert "unexpected in file (1): extra.layer.*" in str(e.value)


def test_mmdet_layout_and_module_prefix():
    sd = {"module." + k: v for k, v in Tiny().state_dict().items()}
    out = extract_state_dict({"meta": {}, "state_dict": sd})
    assert set(out) == set(Tiny().state_dict())


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"model": {}, "meta": Evil()}, p)
    with pytest.raises(CheckpointError, match="safe load refuses"):
        load_checkpoint(p)


def test_garbage_and_missing_files(tmp_path):
    g = tmp_path / "g.pth"
    g.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(g)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pth")
