"""EMA of the weights (``train.ema``, locdistill/engine/ema.py): the decay formula on hand-computed values,
buffers, config validation, the training loop (update after each taken step, evaluation and checkpoints
use it), exact resume with it, and the loaders that prefer it (``test``, ``convert``)."""
import json
import math

import pytest
import torch
from torch import nn

import locdistill.engine.train as train_module
from locdistill.checkpoint import inference_checkpoint, load_checkpoint
from locdistill.cli import main
from locdistill.config import TrainConfig, load_config
from locdistill.engine.ema import ModelEMA
from locdistill.errors import CheckpointError, ConfigError
from injection import inject

# as tests/test_resume.py: 24 train images / batch 8 = 3 iterations per epoch; float32, deterministic kernels
TINY = ["data.digits_train=24", "data.digits_val=12", "data.digits_image_size=96", "data.img_scale=(96, 96)",
        "data.batch_size=8", "data.workers=0", "data.flip_prob=0.5", "train.epochs=2", "train.warmup_iters=3",
        "train.log_interval=1", "train.eval_interval=0", "train.device=cpu", "train.deterministic=True",
        "model.backbone.base_channels=8", "model.neck.out_channels=32", "model.head.feat_channels=32",
        "model.head.stacked_convs=1", "model.head.num_groups=8",
        # tau = 2 updates: the EMA visibly lags the weights within the 6 steps of a run
        "train.ema=true", "train.ema_tau=2.0"]
CONFIG = "demo/gfl_r18_digits"


def _with(*extra):
    keys = {e.split("=", 1)[0] for e in extra}
    return [o for o in TINY if o.split("=", 1)[0] not in keys] + list(extra)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _records(work_dir, mode):
    recs = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    drop = ("time", "data_time", "iter_time")
    return [{k: v for k, v in r.items() if k not in drop} for r in recs if r["mode"] == mode]


class Tiny(nn.Module):
    """One weight, one bias, a BatchNorm (float running stats + integer num_batches_tracked), a fixed buffer."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 1)
        self.bn = nn.BatchNorm1d(1)
        self.register_buffer("project", torch.tensor([0.1, 0.7, 3.0]))

    def set(self, w, b, mean, tracked):
        with torch.no_grad():
            self.fc.weight.fill_(w)
            self.fc.bias.fill_(b)
            self.bn.running_mean.fill_(mean)
            self.bn.num_batches_tracked.fill_(tracked)


# ----------------------------------------------------------------------------- the average itself


def test_decay_ramps_up_as_decay_times_one_minus_exp():
    ema = ModelEMA(Tiny(), decay=0.9999, tau=2000.0)
    assert ema.decay_at(1) == pytest.approx(0.9999 * (1 - math.exp(-1 / 2000)))
    assert ema.decay_at(1) == pytest.approx(4.99825e-4, rel=1e-5)
    assert ema.decay_at(2000) == pytest.approx(0.9999 * (1 - math.exp(-1)), rel=1e-12)  # 0.63206
    assert ema.decay_at(2000) == pytest.approx(0.632057, abs=1e-6)
    assert ema.decay_at(100_000) == pytest.approx(0.9999, abs=1e-12)


def test_three_updates_match_hand_computed_values():
    model = Tiny()
    model.set(w=1.0, b=0.0, mean=0.0, tracked=0)
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    assert ema.updates == 0 and not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    # d(1) = 0.9 (1 - e^-1) = 0.568909, d(2) = 0.9 (1 - e^-2) = 0.778199, d(3) = 0.9 (1 - e^-3) = 0.855192
    d = [0.9 * (1 - math.exp(-u)) for u in (1, 2, 3)]
    assert d == pytest.approx([0.568909, 0.778198, 0.855192], abs=1e-6)
    model.set(w=2.0, b=1.0, mean=4.0, tracked=1)
    ema.update(model)
    # w: 0.568909 · 1 + 0.431091 · 2 = 1.431091; b: 0.431091 · 1; running_mean: 0.431091 · 4 = 1.724366
    assert ema.module.fc.weight.item() == pytest.approx(1.431091, abs=2e-6)
    assert ema.module.fc.bias.item() == pytest.approx(0.431091, abs=2e-6)
    assert ema.module.bn.running_mean.item() == pytest.approx(1.724366, abs=2e-6)
    model.set(w=4.0, b=-1.0, mean=0.0, tracked=2)
    ema.update(model)
    # w: 0.778198 · 1.431091 + 0.221802 · 4 = 2.000880; b: 0.778198 · 0.431091 − 0.221802 = 0.113673
    assert ema.module.fc.weight.item() == pytest.approx(2.000880, abs=2e-6)
    assert ema.module.fc.bias.item() == pytest.approx(0.113673, abs=2e-6)
    assert ema.module.bn.running_mean.item() == pytest.approx(1.341899, abs=2e-6)
    model.set(w=0.0, b=0.0, mean=1.0, tracked=3)
    ema.update(model)
    # w: 0.855192 · 2.000880 = 1.711136; running_mean: 0.855192 · 1.341899 + 0.144808 = 1.292389
    assert ema.module.fc.weight.item() == pytest.approx(1.711136, abs=2e-6)
    assert ema.module.bn.running_mean.item() == pytest.approx(1.292389, abs=2e-6)
    assert ema.updates == 3
    # the integer buffer is copied, a constant buffer stays bit-exact, the running variance (1 everywhere) too
    assert ema.module.bn.num_batches_tracked.item() == 3
    assert torch.equal(ema.module.project, torch.tensor([0.1, 0.7, 3.0]))
    assert torch.equal(ema.module.bn.running_var, torch.ones(1))
    # the average is a copy: the model's weights are untouched by it
    assert model.fc.weight.item() == 0.0


def test_state_dict_round_trip_reset_and_mismatch():
    model = Tiny()
    model.set(w=1.0, b=0.0, mean=0.0, tracked=0)
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    model.set(w=3.0, b=2.0, mean=1.0, tracked=5)
    ema.update(model)
    state = ema.state_dict()
    assert state["updates"] == 1 and state["decay"] == 0.9 and state["tau"] == 1.0
    assert set(state["state_dict"]) == set(model.state_dict())
    ema.update(model)
    assert state["state_dict"]["fc.weight"].item() != ema.module.fc.weight.item()  # a copy, not a view
    other = ModelEMA(Tiny(), decay=0.9, tau=1.0)
    other.load_state_dict(state)
    assert other.updates == 1
    _assert_same(other.module.state_dict(), state["state_dict"])
    other.reset(model)
    assert other.updates == 0
    _assert_same(other.module.state_dict(), model.state_dict())
    with pytest.raises(CheckpointError, match="do not match"):
        other.load_state_dict({"state_dict": {"fc.weight": torch.zeros(1, 1)}, "updates": 1})
    with pytest.raises(CheckpointError, match="no state_dict"):
        other.load_state_dict({"updates": 1})


def test_inference_checkpoint_prefers_the_ema_weights():
    raw, avg = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    ck = {"model": raw, "meta": {"epoch": 1}, "ema": {"state_dict": avg, "updates": 3}}
    seen = inference_checkpoint(ck)
    assert seen["model"] is avg and seen["meta"] == {"epoch": 1} and ck["model"] is raw  # the file's dict unchanged
    plain = {"model": raw}
    assert inference_checkpoint(plain) is plain
    assert inference_checkpoint({"model": raw, "ema": object()})["model"] is raw  # e.g. a pickled module: ignored


def test_optimizer_step_reports_a_step_the_grad_scaler_skipped():
    """fp16 + GradScaler: a step skipped for inf gradients must not update the EMA."""
    cfg = load_config(CONFIG, ["train.device=cpu"])
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = train_module.TrainContext(model, None, optimizer, None, cfg, torch.device("cpu"),
                                    ema=ModelEMA(model))
    scaler = ctx.precision.scaler = torch.amp.GradScaler("cpu", init_scale=8.0, enabled=True)

    def backward(grad):
        optimizer.zero_grad()
        scaler.scale(model(torch.ones(1, 2)).sum()).backward()
        for p in model.parameters():
            p.grad.fill_(grad)

    backward(float("inf"))
    before = model.weight.detach().clone()
    assert train_module._optimizer_step(ctx) is False
    assert torch.equal(model.weight, before) and scaler.get_scale() == 4.0
    backward(1.0)
    assert train_module._optimizer_step(ctx) is True
    assert not torch.equal(model.weight, before)


# ----------------------------------------------------------------------------- config


def test_config_defaults_override_and_validation():
    t = TrainConfig()
    assert (t.ema, t.ema_decay, t.ema_tau) == (False, 0.9999, 2000.0)
    cfg = load_config(CONFIG, ["train.ema=true", "train.ema_decay=0.999", "train.ema_tau=100"])
    assert cfg.train.ema is True and cfg.train.ema_decay == 0.999 and cfg.train.ema_tau == 100.0
    assert load_config(CONFIG, ["train.ema=False"]).train.ema is False
    for bad, needle in [("train.ema_decay=1.0", "train.ema_decay"), ("train.ema_decay=0", "train.ema_decay"),
                        ("train.ema_decay=-0.5", "(0, 1)"), ("train.ema_tau=0", "train.ema_tau"),
                        ("train.ema_tau=-5", "> 0"), ("train.ema=maybe", "True or False")]:
        with pytest.raises(ConfigError, match=None) as e:
            load_config(CONFIG, [bad])
        assert needle in str(e.value), (bad, str(e.value))
    with pytest.raises(ConfigError, match="train.ema_tau"):
        TrainConfig(ema_tau=0.0)


def test_ema_is_on_in_the_yolo_coco_configs_only():
    for scale in "nsmlx":
        assert load_config(f"yolo/yolov8{scale}_coco").train.ema is True
    for name in ("yolo/yolov8n_digits", "yolo/yolov8s_digits", "yolo/ld_yolov8s_yolov8n_digits",
                 "yolo/ld_gfl_r34_yolov8n_digits", "demo/gfl_r18_digits", "gfl/gfl_r50_fpn_coco_1x"):
        assert load_config(name).train.ema is False, name


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Reference: 2 epochs (6 steps) in one go with the EMA on, evaluated at the end."""
    wd = tmp_path_factory.mktemp("ema_straight")
    assert main(["train", CONFIG, "--work-dir", str(wd), "--set", *TINY]) == 0
    return wd


def test_training_writes_the_ema_and_evaluates_it(straight, tmp_path, monkeypatch):
    ck = load_checkpoint(straight / "epoch_2.pth")
    ema = ck["ema"]
    assert ema["updates"] == 6 and ema["decay"] == 0.9999 and ema["tau"] == 2.0
    assert ema["state_dict"].keys() == ck["model"].keys()
    differ = [k for k, v in ck["model"].items() if v.is_floating_point() and not torch.equal(v, ema["state_dict"][k])]
    assert differ, "the EMA equals the raw weights"
    # epoch 1's checkpoint: 3 updates
    assert load_checkpoint(straight / "epoch_1.pth")["ema"]["updates"] == 3
    # the shared loader (test, predict, export, teachers) loads the EMA weights, not the raw ones
    from locdistill.models.build import load_detector

    model, classes = load_detector(load_config(straight / "config.py"), straight / "latest.pth")
    _assert_same(model.state_dict(), ema["state_dict"])
    assert classes == [str(i) for i in range(10)]
    # `locdistill test` reads them: its AP is the one the run's final evaluation logged
    val = _records(straight, "val")
    assert len(val) == 1 and val[0]["epoch"] == 2
    out = tmp_path / "results.json"
    assert main(["test", str(straight / "config.py"), str(straight / "latest.pth"), "--out", str(out)]) == 0
    tested = json.loads(out.with_suffix(".metrics.json").read_text())
    for k in ("AP", "AP50", "AP75", "AR100"):
        assert tested[k] == val[0][k], k
    # convert publishes the EMA weights
    from locdistill.tools.convert import convert_checkpoint

    res = convert_checkpoint(straight / "latest.pth", tmp_path / "pub.pth")
    published = load_checkpoint(res.path)
    assert res.ema and published["meta"]["ema_updates"] == 6 and "ema" in res.dropped_entries
    _assert_same(published["model"], ema["state_dict"])


def test_evaluation_is_given_the_ema_module(tmp_path, monkeypatch):
    seen = []
    real = train_module.evaluate

    def spy(model, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", spy)
    over = _with("train.epochs=1", "train.max_iters_per_epoch=2")
    assert main(["train", CONFIG, "--work-dir", str(tmp_path), "--set", *over]) == 0
    ck = load_checkpoint(tmp_path / "latest.pth")
    assert len(seen) == 1 and ck["ema"]["updates"] == 2
    _assert_same(seen[0], ck["ema"]["state_dict"])


def test_skipped_nonfinite_steps_do_not_update_the_ema(tmp_path, monkeypatch):
    inject(monkeypatch, 2, lambda losses: {**losses, "loss_dfl": losses["loss_dfl"] * float("inf")})
    over = _with("train.epochs=1", "train.skip_nonfinite=True")
    assert main(["train", CONFIG, "--work-dir", str(tmp_path), "--set", *over]) == 0
    ck = load_checkpoint(tmp_path / "latest.pth")
    assert ck["train_state"]["skipped"] == 1 and ck["meta"]["iter"] == 3 and ck["ema"]["updates"] == 2


def test_resume_with_the_ema_matches_a_straight_run(straight, tmp_path):
    assert main(["train", CONFIG, "--work-dir", str(tmp_path), "--set", *_with("train.epochs=1")]) == 0
    assert load_checkpoint(tmp_path / "latest.pth")["ema"]["updates"] == 3
    assert main(["train", CONFIG, "--work-dir", str(tmp_path), "--resume", "--set", *TINY]) == 0
    a, b = load_checkpoint(straight / "epoch_2.pth"), load_checkpoint(tmp_path / "epoch_2.pth")
    _assert_same(a["model"], b["model"])
    _assert_same(a["ema"]["state_dict"], b["ema"]["state_dict"])
    assert a["ema"]["updates"] == b["ema"]["updates"] == 6
    assert _records(straight, "train") == _records(tmp_path, "train")
    assert _records(straight, "val")[-1] == _records(tmp_path, "val")[-1]  # (the 1-epoch run evaluated epoch 1)


def test_resume_without_an_ema_in_the_checkpoint_starts_it_from_the_weights(tmp_path, capsys):
    assert main(["train", CONFIG, "--work-dir", str(tmp_path),
                 "--set", *_with("train.epochs=1", "train.ema=False")]) == 0
    assert "ema" not in load_checkpoint(tmp_path / "latest.pth")  # EMA off: no entry, as before
    capsys.readouterr()
    assert main(["train", CONFIG, "--work-dir", str(tmp_path), "--resume", "--set", *TINY]) == 0
    assert "the EMA starts from its weights" in " ".join(capsys.readouterr().out.split())
    assert load_checkpoint(tmp_path / "latest.pth")["ema"]["updates"] == 3


def test_yolo_teacher_with_ema_distils_into_a_student_with_ema(tmp_path):
    """A YOLO run with the EMA on is loaded as a teacher with its EMA weights; the student of a Distiller
    (DDP-free here) gets its own EMA, without teacher keys."""
    from locdistill.distill import build_teacher
    from locdistill.models.yolo import YOLO

    small = ["data.digits_train=16", "data.digits_val=8", "data.digits_image_size=64", "data.img_scale=(64, 64)",
             "data.batch_size=8", "data.workers=0", "train.epochs=1", "train.max_iters_per_epoch=2",
             "train.warmup_iters=2", "train.log_interval=1", "train.eval_interval=1", "train.device=cpu",
             "train.ema=true", "train.ema_tau=2.0"]
    teacher = tmp_path / "teacher"
    assert main(["train", "yolo/yolov8n_digits", "--work-dir", str(teacher), "--set", *small,
                 "model.yolo.width=0.125"]) == 0
    t_ck = load_checkpoint(teacher / "latest.pth")
    assert t_ck["ema"]["updates"] == 2
    t_model = build_teacher(str(teacher / "config.py"), str(teacher / "latest.pth"), 10)
    assert isinstance(t_model, YOLO)
    _assert_same(t_model.state_dict(), t_ck["ema"]["state_dict"])
    wd = tmp_path / "student"
    with pytest.warns(UserWarning):
        assert main(["train", "demo/ld_r34_r18_digits", "--work-dir", str(wd), "--set", *small,
                     "model.backbone.base_channels=8", "model.neck.out_channels=32", "model.head.feat_channels=32",
                     "model.head.stacked_convs=1", "model.head.num_groups=8",
                     f"distill.teacher_config={teacher / 'config.py'}",
                     f"distill.teacher_checkpoint={teacher / 'latest.pth'}", "distill.recipe=ld"]) == 0
    s_ck = load_checkpoint(wd / "latest.pth")
    assert s_ck["ema"]["updates"] == 2 and s_ck["ema"]["state_dict"].keys() == s_ck["model"].keys()
    assert not any(k.startswith("teacher") for k in s_ck["ema"]["state_dict"])
