"""`train` on hostile input and after hostile events: resume with a new lr, Ctrl-C in the final
evaluation, a full disk, epochs <= 0, orphaned temp files, truthful stop messages, bad checkpoint files,
evenly spaced metrics.jsonl records, no empty work dir after a failed start."""
import errno
import json

import pytest
import torch

from locdistill.checkpoint import atomic_torch_save, load_checkpoint
from locdistill.cli import main
from locdistill.config import load_config
from locdistill.errors import CheckpointError, TrainingError
from injection import inject as _inject

# 24 train images / batch 8 = 3 iterations per epoch
TINY = ["data.digits_train=24", "data.digits_val=12", "data.digits_image_size=96", "data.img_scale=(96, 96)",
        "data.batch_size=8", "data.workers=0", "train.epochs=1", "train.warmup_iters=3", "train.milestones=()",
        "train.log_interval=1", "train.eval_interval=0", "train.device=cpu", "train.deterministic=True",
        "model.backbone.base_channels=8", "model.neck.out_channels=32", "model.head.feat_channels=32",
        "model.head.stacked_convs=1", "model.head.num_groups=8"]
CONFIG = "demo/gfl_r18_digits"


def _with(*extra):
    keys = {e.split("=", 1)[0] for e in extra}
    return [o for o in TINY if o.split("=", 1)[0] not in keys] + list(extra)


def _records(work_dir, mode="train"):
    recs = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["mode"] == mode]


def _train(work_dir, *over, resume=False):
    return main(["train", CONFIG, "--work-dir", str(work_dir), *(["--resume"] if resume else []),
                 "--set", *_with(*over)])


def _out(capsys):
    out, err = capsys.readouterr()
    return " ".join(out.split()), " ".join(err.split())


def _nan_bbox(losses):
    return {**losses, "loss_bbox": losses["loss_bbox"] * float("nan")}


# ----------------------------------------------------------------------------- case 1: lr on resume


def test_resume_with_a_new_train_lr_trains_at_it(tmp_path, capsys):
    assert _train(tmp_path, "train.lr=0.01") == 0
    capsys.readouterr()
    assert _train(tmp_path, "train.lr=0.002", "train.epochs=2", resume=True) == 0
    out, _ = _out(capsys)
    assert "lr from the checkpoint 0.01 → 0.002 (train.lr)" in out
    # epoch 2 is past the 3 warm-up iterations and there are no milestones: lr = the new train.lr
    assert [r["lr"] for r in _records(tmp_path) if r["epoch"] == 2] == [0.002] * 3
    ck = load_checkpoint(tmp_path / "latest.pth")
    assert ck["scheduler"]["base_lr"] == 0.002
    assert all(g["lr"] == 0.002 for g in ck["optimizer"]["param_groups"])


def test_resume_without_a_pinned_lr_keeps_the_checkpoints(tmp_path, capsys):
    assert _train(tmp_path, "train.lr=0.01") == 0
    capsys.readouterr()
    # train.lr=None: the scaling rule would give 0.01 * 8 / 16 = 0.005; the checkpoint's 0.01 is kept
    assert _train(tmp_path, "train.lr=None", "train.epochs=2", resume=True) == 0
    out, _ = _out(capsys)
    assert "lr 0.01 (from the checkpoint" in out and "train.lr" in out
    assert [r["lr"] for r in _records(tmp_path) if r["epoch"] == 2] == [0.01] * 3


# ----------------------------------------------------------------------------- case 6: Ctrl-C in the final evaluation


def test_ctrl_c_in_the_final_evaluation_is_finished_by_resume(tmp_path, monkeypatch, capsys):
    import locdistill.engine.train as train

    real = train.evaluate
    calls = []

    def interrupted_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "evaluate", interrupted_once)
    assert _train(tmp_path) == 130
    assert "--resume" in _out(capsys)[0] and _records(tmp_path, "val") == []
    assert _train(tmp_path, resume=True) == 0
    out, _ = _out(capsys)
    assert len(calls) == 2 and "epoch 1 val: AP" in out
    val = _records(tmp_path, "val")
    assert [r["epoch"] for r in val] == [1]
    # a finished run: nothing trained or evaluated, says so, returns the last metrics
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: pytest.fail("evaluated a finished run"))
    result = train.fit(load_config(CONFIG, TINY), tmp_path, resume=True)
    assert result["metrics"]["AP"] == val[0]["AP"] and result["metrics"]["AP50"] == val[0]["AP50"]
    out, _ = _out(capsys)
    assert "already finished" in out and "train.epochs" in out
    assert len(_records(tmp_path, "val")) == 1 and len(_records(tmp_path)) == 3


# ----------------------------------------------------------------------------- case 7: disk full


def test_disk_full_while_saving_is_a_clean_error(tmp_path, monkeypatch, capsys):
    import locdistill.checkpoint as checkpoint

    real = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the checkpoint of epoch 2
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)
    monkeypatch.setattr(checkpoint.torch, "save", save)
    assert _train(tmp_path, "train.epochs=2") == 2
    _, err = _out(capsys)
    assert "Traceback" not in err
    assert f"no space left on device while writing {tmp_path / 'epoch_2.pth'}" in err
    assert "the previous checkpoints are intact" in err and f"the last is {tmp_path / 'epoch_1.pth'} (epoch 1)" in err
    assert sorted(p.name for p in tmp_path.glob("*.pth*")) == ["epoch_1.pth", "latest.pth"]
    assert not list(tmp_path.glob(".*.tmp"))
    assert load_checkpoint(tmp_path / "latest.pth")["meta"]["epoch"] == 1


def test_torch_writer_failure_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    p = tmp_path / "c.pth"
    atomic_torch_save({"w": torch.ones(3)}, p)
    before = p.read_bytes()

    def save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointError, match=r"no space left on device .*while writing .*c\.pth"):
        atomic_torch_save({"w": torch.zeros(3)}, p)
    assert p.read_bytes() == before and [f.name for f in tmp_path.iterdir()] == ["c.pth"]


# ----------------------------------------------------------------------------- case 11: epochs <= 0


@pytest.mark.parametrize("epochs", [0, -3])
def test_no_epochs_is_refused_before_anything_is_written(tmp_path, capsys, epochs):
    wd = tmp_path / "run"
    assert _train(wd, f"train.epochs={epochs}") == 2
    _, err = _out(capsys)
    assert f"train.epochs={epochs}" in err and "--set train.epochs=" in err
    assert not wd.exists()


# ----------------------------------------------------------------------------- case 12: orphaned temp files


def test_orphaned_checkpoint_temp_files_are_removed(tmp_path, capsys):
    orphans = [".epoch_3.pth.k2j_x9ab.tmp", ".latest.pth.a1b2c3d4.tmp", ".latest.pth.link.tmp"]
    others = ["notes.tmp", ".epoch_3.pth.tmp.keep", "epoch_3.pth.x.tmp", ".other.pth.abc.tmp"]
    for name in orphans + others:
        (tmp_path / name).write_bytes(b"x")
    assert _train(tmp_path, "train.max_iters_per_epoch=1") == 0
    out, _ = _out(capsys)
    assert "removed 3 unfinished checkpoint file(s)" in out
    names = {p.name for p in tmp_path.iterdir()}
    assert not names & set(orphans) and set(others) <= names


# ----------------------------------------------------------------------------- case 13: truthful messages


def test_nonfinite_loss_before_any_checkpoint_says_so(tmp_path, monkeypatch, capsys):
    _inject(monkeypatch, 2, _nan_bbox)
    assert _train(tmp_path) == 2
    _, err = _out(capsys)
    assert "non-finite loss (loss_bbox) at iteration 2" in err
    assert "no checkpoint was written yet" in err and "intact" not in err


def test_nonfinite_loss_names_the_intact_checkpoint_and_resume_lowers_lr(tmp_path, monkeypatch, capsys):
    _inject(monkeypatch, 5, _nan_bbox)
    assert _train(tmp_path, "train.epochs=2") == 2
    _, err = _out(capsys)
    assert f"the last checkpoint, {tmp_path / 'epoch_1.pth'} (epoch 1), is intact" in err
    assert "--resume" in err and "train.lr=" in err
    monkeypatch.undo()
    # the advice works: resume with a lower lr trains at it
    assert _train(tmp_path, "train.epochs=2", "train.lr=0.0005", resume=True) == 0
    assert [r["lr"] for r in _records(tmp_path) if r["epoch"] == 2] == [0.0005] * 3


def test_out_of_memory_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    from locdistill.engine.train import fit

    def oom(losses):
        raise torch.OutOfMemoryError("CUDA out of memory")
    _inject(monkeypatch, 1, oom)
    with pytest.raises(TrainingError) as e:
        fit(load_config(CONFIG, TINY), tmp_path)
    assert "no checkpoint was written yet" in str(e.value) and "intact" not in str(e.value)


def test_bad_checkpoint_files_are_named_and_described(tmp_path):
    text = tmp_path / "text.pth"
    text.write_text("hello, I am not a checkpoint\n")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(text)
    msg = str(e.value)
    assert str(text) in msg and "not a PyTorch checkpoint" in msg and "hello, I am not" in msg
    assert "KeyError" not in msg
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth could not be read: it is empty \(0 bytes\)"):
        load_checkpoint(empty)
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(1000)}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:1500])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(cut)
    msg = str(e.value)
    assert str(cut) in msg and "zip" in msg and "1500 bytes" in msg and "cut short" in msg


# ----------------------------------------------------------------------------- metrics.jsonl spacing


def test_metrics_records_every_log_interval_and_each_epoch_end(tmp_path):
    every, spaced = tmp_path / "every", tmp_path / "spaced"
    assert _train(every, "train.epochs=2") == 0
    assert _train(spaced, "train.epochs=2", "train.log_interval=2") == 0
    step = {r["iter"]: r["loss"] for r in _records(every)}
    recs = _records(spaced)
    # 3 iterations per epoch: every 2nd global iteration, plus the last of each epoch
    assert [(r["epoch"], r["iter"]) for r in recs] == [(1, 2), (1, 3), (2, 4), (2, 6)]
    covered = {2: (1, 2), 3: (3,), 4: (4,), 6: (5, 6)}  # steps since the previous record
    for r in recs:
        want = sum(step[i] for i in covered[r["iter"]]) / len(covered[r["iter"]])
        assert r["loss"] == pytest.approx(want, rel=1e-5)


def test_undefined_val_metrics_show_as_na(tmp_path, monkeypatch, capsys):
    import locdistill.engine.train as train

    metrics = {"AP": 0.5, "AP50": 0.75, "AP75": -1.0, "APs": -1.0, "APm": 0.5, "APl": 0.5, "AR100": 0.625}
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: (dict(metrics), []))
    assert _train(tmp_path, "train.max_iters_per_epoch=1") == 0
    out, _ = _out(capsys)
    assert "epoch 1 val: AP 50.0 AP50 75.0 AP75 n/a AR100 62.5" in out and "-100.0" not in out


# ----------------------------------------------------------------------------- no empty work dir after a failed start


def test_failed_start_leaves_no_work_dir(tmp_path, capsys):
    wd = tmp_path / "runs" / "a"
    assert _train(wd, "data.dataset=coco", f"data.train_json={tmp_path / 'missing.json'}") == 2
    assert not wd.exists() and not wd.parent.exists()
    assert _train(wd, resume=True) == 2
    assert "no checkpoint" in _out(capsys)[1]
    assert not wd.exists()

