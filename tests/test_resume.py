"""Exact resume, Ctrl-C checkpoints, non-finite losses, OOM messages, AMP and `plot` (issue 6)."""
import json
import os
import signal

import pytest
import torch

from locdistill.checkpoint import load_checkpoint
from locdistill.cli import main
from locdistill.config import load_config
from locdistill.errors import ConfigError, TrainingError
from injection import inject as _inject

# 24 train images / batch 8 = 3 iterations per epoch; float32, deterministic kernels
TINY = ["data.digits_train=24", "data.digits_val=12", "data.digits_image_size=96", "data.img_scale=(96, 96)",
        "data.batch_size=8", "data.workers=0", "data.flip_prob=0.5", "train.epochs=2", "train.warmup_iters=3",
        "train.log_interval=1", "train.eval_interval=0", "train.device=cpu", "train.deterministic=True",
        "model.backbone.base_channels=8", "model.neck.out_channels=32", "model.head.feat_channels=32",
        "model.head.stacked_convs=1", "model.head.num_groups=8"]
CONFIG = "demo/gfl_r18_digits"


def _with(*extra):
    keys = {e.split("=", 1)[0] for e in extra}
    return [o for o in TINY if o.split("=", 1)[0] not in keys] + list(extra)


def _train_records(work_dir):
    recs = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    drop = ("time", "data_time", "iter_time")
    return [{k: v for k, v in r.items() if k not in drop} for r in recs if r["mode"] == "train"]


def _weights(path):
    return load_checkpoint(path)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Reference: 2 epochs in one go."""
    wd = tmp_path_factory.mktemp("straight")
    assert main(["train", CONFIG, "--work-dir", str(wd), "--set", *TINY]) == 0
    return wd


def test_resume_after_an_epoch_matches_a_straight_run(straight, tmp_path):
    assert main(["train", CONFIG, "--work-dir", str(tmp_path), "--set", *_with("train.epochs=1")]) == 0
    assert load_checkpoint(tmp_path / "latest.pth")["meta"]["epoch"] == 1
    assert main(["train", CONFIG, "--work-dir", str(tmp_path), "--resume", "--set", *TINY]) == 0
    _assert_same_weights(_weights(straight / "epoch_2.pth"), _weights(tmp_path / "epoch_2.pth"))
    assert _train_records(straight) == _train_records(tmp_path)
    ck = load_checkpoint(tmp_path / "latest.pth")
    assert ck["meta"]["epoch"] == 2 and ck["meta"]["iter"] == 6 and ck["meta"]["epoch_iter"] == 0
    assert {"python", "numpy", "torch"} <= set(ck["rng"]) and "optimizer" in ck and "scheduler" in ck


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(straight, tmp_path, monkeypatch, capsys):
    # SIGINT during the 2nd step: the step finishes, a resumable checkpoint is written, exit code 130
    _inject(monkeypatch, 2, lambda losses: os.kill(os.getpid(), signal.SIGINT))
    assert main(["train", CONFIG, "--work-dir", str(tmp_path), "--set", *TINY]) == 130
    assert "interrupted at iteration 2" in capsys.readouterr().out
    ck = load_checkpoint(tmp_path / "latest.pth")
    assert ck["meta"]["interrupted"] and ck["meta"]["epoch"] == 0 and ck["meta"]["epoch_iter"] == 2
    assert not (tmp_path / "epoch_1.pth").exists()
    monkeypatch.undo()
    interrupted = tmp_path / "interrupted.pth"
    interrupted.write_bytes((tmp_path / "latest.pth").read_bytes())
    assert main(["train", CONFIG, "--work-dir", str(tmp_path), "--resume", "--set", *TINY]) == 0
    _assert_same_weights(_weights(straight / "epoch_2.pth"), _weights(tmp_path / "epoch_2.pth"))
    assert _train_records(straight) == _train_records(tmp_path)
    # another batch size cannot continue the same epoch: it restarts it, with a warning
    capsys.readouterr()
    other = tmp_path / "other"
    assert main(["train", CONFIG, "--work-dir", str(other), "--resume", str(interrupted),
                 "--set", *_with("train.epochs=1", "data.batch_size=4")]) == 0
    assert "restarts from its first batch" in " ".join(capsys.readouterr().out.split())
    meta = load_checkpoint(other / "latest.pth")["meta"]
    assert meta["epoch"] == 1 and meta["iter"] == 6  # 6 batches of 4


def test_resume_from_an_explicit_path_and_missing_checkpoint(straight, tmp_path, capsys):
    # a path resumes from it: epoch 1 of the straight run + 1 epoch = the straight run's weights
    assert main(["train", CONFIG, "--work-dir", str(tmp_path), "--resume", str(straight / "epoch_1.pth"),
                 "--set", *TINY]) == 0
    _assert_same_weights(_weights(straight / "epoch_2.pth"), _weights(tmp_path / "epoch_2.pth"))
    assert main(["train", CONFIG, "--work-dir", str(tmp_path / "empty"), "--resume", "--set", *TINY]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_nonfinite_loss_stops_naming_iteration_and_term(tmp_path, monkeypatch, capsys):
    # NaN in loss_bbox at the 5th step (epoch 2): stop, and epoch 1's checkpoint stays loadable
    _inject(monkeypatch, 5, lambda losses: {**losses, "loss_bbox": losses["loss_bbox"] * float("nan")})
    assert main(["train", CONFIG, "--work-dir", str(tmp_path), "--set", *TINY]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss (loss_bbox) at iteration 5 (epoch 2)" in err and "skip_nonfinite" in err
    ck = load_checkpoint(tmp_path / "latest.pth")
    assert ck["meta"]["epoch"] == 1 and ck["meta"]["iter"] == 3
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert {p.name for p in tmp_path.glob("*.pth")} == {"epoch_1.pth", "latest.pth"}


def test_skip_nonfinite_counts_and_continues(tmp_path, monkeypatch):
    _inject(monkeypatch, 2, lambda losses: {**losses, "loss_dfl": losses["loss_dfl"] * float("inf")})
    over = _with("train.epochs=1", "train.skip_nonfinite=True")
    assert main(["train", CONFIG, "--work-dir", str(tmp_path), "--set", *over]) == 0
    recs = _train_records(tmp_path)
    assert [r["skipped"] for r in recs] == [0, 1, 1]
    assert "loss" not in recs[1] and all(isinstance(r["loss"], float) for r in (recs[0], recs[2]))
    ck = load_checkpoint(tmp_path / "latest.pth")
    assert ck["train_state"]["skipped"] == 1 and ck["meta"]["iter"] == 3
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_out_of_memory_names_batch_image_size_and_fix(tmp_path, monkeypatch):
    from locdistill.engine.train import fit

    def oom(losses):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    _inject(monkeypatch, 1, oom)
    with pytest.raises(TrainingError, match=r"8 image\(s\) per GPU of 96x96.*data.batch_size=4"):
        fit(load_config(CONFIG, _with("train.epochs=1")), tmp_path)


def test_bf16_autocast_step_gives_float32_losses_and_learns():
    """One batch, repeated: under CPU bf16 autocast the losses are float32, finite, and fall."""
    from locdistill.data.loader import build_dataloader, build_dataset
    from locdistill.engine.device import Precision, targets_to
    from locdistill.distill import build_criterion
    from locdistill.models.build import build_detector

    cfg = load_config(CONFIG, _with("train.amp=True"))
    data = build_dataset(cfg.data, "train")
    images, targets = next(iter(build_dataloader(data, 8, 0, shuffle=True)))
    torch.manual_seed(0)
    model, criterion = build_detector(cfg.model), build_criterion(cfg)
    precision = Precision(cfg.train, torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    totals = []
    for _ in range(8):
        with precision.autocast():
            out = model(images)
        assert out["cls_logits"][0].dtype == torch.bfloat16
        losses = criterion(out, targets_to(targets, torch.device("cpu")),
                           image_sizes=[t["pad_shape"] for t in targets])
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(float(total.detach()))
    assert totals[-1] < 0.8 * totals[0]


def test_fp16_needs_cuda_and_unknown_dtype(tmp_path):
    from locdistill.engine.device import Precision

    with pytest.raises(ConfigError, match="needs a CUDA device"):
        Precision(load_config(CONFIG, ["train.amp=True", "train.amp_dtype=float16"]).train, torch.device("cpu"))
    with pytest.raises(ConfigError, match="amp_dtype"):
        Precision(load_config(CONFIG, ["train.amp_dtype=int8"]).train, torch.device("cpu"))
    assert main(["train", CONFIG, "--work-dir", str(tmp_path), "--amp-dtype", "fp16", "--set", *TINY]) == 2
    # bf16 + channels-last through the CLI: runs, logs finite float losses
    over = _with("train.epochs=1", "train.max_iters_per_epoch=2")
    assert main(["train", CONFIG, "--work-dir", str(tmp_path), "--amp", "--channels-last", "--set", *over]) == 0
    assert all(isinstance(r["loss"], float) for r in _train_records(tmp_path))
    cfg = load_config(tmp_path / "config.py")
    assert cfg.train.amp and cfg.train.amp_dtype == "bfloat16" and cfg.train.channels_last


def test_plot_writes_a_png_and_tensorboard_events(straight, tmp_path):
    out = tmp_path / "curves.png"
    assert main(["plot", str(straight), "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    import matplotlib.image

    assert matplotlib.image.imread(str(out)).shape[2] in (3, 4)
    assert list((straight / "tb").glob("events.out.tfevents.*"))


def test_plot_without_metrics_is_a_clean_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
