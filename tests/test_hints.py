"""Fix hints in error messages work when followed.

A hint that points at the wrong model (``--set model.…`` for a teacher, which changes the
student) or at a value the command then overwrites (``--set model.num_classes`` in
``test``) sends the user round in a loop. Each test here triggers the error, follows the
printed fix literally, and checks the error is gone.
"""
from __future__ import annotations

import re
import shlex

import pytest
import torch

from locdistill.cli import main
from locdistill.config import load_config
from locdistill.distill import build_teacher
from locdistill.errors import CheckpointError
from locdistill.models.build import build_detector

DATA = ["data.digits_train=8", "data.digits_val=6", "data.digits_image_size=96", "data.img_scale=(96, 96)",
        "data.batch_size=6", "data.workers=0", "train.device=cpu"]


def _bare_state_dict(tmp_path, config: str, num_classes: int):
    """A bare ``state_dict`` file (no metadata: no classes, no config), as users often have."""
    cfg = load_config(config, [f"model.num_classes={num_classes}"])
    path = tmp_path / "bare.pth"
    torch.save(build_detector(cfg.model).state_dict(), path)
    return path


def test_teacher_mismatch_hint_names_a_teacher_config_and_following_it_works(tmp_path, monkeypatch):
    ckpt = _bare_state_dict(tmp_path, "demo/gfl_r18_digits", 10)  # R-18 weights, R-34 teacher config
    with pytest.raises(CheckpointError) as e:
        build_teacher("demo/gfl_r34_digits_teacher", str(ckpt), num_classes=10)
    msg = str(e.value)
    assert "teacher config demo/gfl_r34_digits_teacher" in msg
    assert "--set model." not in msg  # would change the student, not the teacher
    # follow the hint: write the file it shows, pass it as distill.teacher_config
    body = re.search(r"my_teacher\.py holding\n(.*?)\n  and pass", msg, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_teacher.py").write_text("\n".join(line.strip() for line in body.splitlines()) + "\n")
    teacher = build_teacher("my_teacher.py", str(ckpt), num_classes=10)
    ref = build_detector(load_config("demo/gfl_r18_digits").model)
    assert sum(p.numel() for p in teacher.parameters()) == sum(p.numel() for p in ref.parameters())


def test_teacher_class_count_is_read_from_a_bare_state_dict(tmp_path):
    ckpt = _bare_state_dict(tmp_path, "demo/gfl_r34_digits_teacher", 3)
    teacher = build_teacher("demo/gfl_r34_digits_teacher", str(ckpt), num_classes=10)
    assert teacher.num_classes == 3  # the file's, not the student data's (a strict load would fail)


def test_test_reads_the_class_count_of_a_bare_state_dict(tmp_path, capsys):
    ckpt = _bare_state_dict(tmp_path, "demo/gfl_r18_digits", 3)  # digits val has 10 classes
    rc = main(["test", "demo/gfl_r18_digits", str(ckpt), "--set", *DATA])
    err = capsys.readouterr().err
    assert rc == 2
    assert "predicts 3 classes" in err and "has 10" in err
    assert "model.num_classes" not in err  # test sets it from the checkpoint: that hint could not work


def test_test_architecture_hint_works_when_followed(tmp_path, capsys):
    ckpt = _bare_state_dict(tmp_path, "demo/gfl_r18_digits", 10)
    assert main(["test", "demo/gfl_r34_digits_teacher", str(ckpt), "--set", *DATA]) == 2
    err = capsys.readouterr().err
    fix = re.search(r"Or override the config: --set (.*)", err).group(1)
    assert "model.backbone.depth=18" in fix
    assert main(["test", "demo/gfl_r34_digits_teacher", str(ckpt), "--set", *DATA, *shlex.split(fix)]) == 0
