"""End-to-end: train on a tiny digits split, checkpoints/metrics files, `test` agrees with pycocotools."""
import json

import pytest

from locdistill.checkpoint import load_checkpoint
from locdistill.cli import main
from locdistill.config import load_config

TINY = ["data.digits_train=24", "data.digits_val=12", "data.digits_image_size=96", "data.img_scale=(96, 96)",
        "data.batch_size=8", "data.workers=0", "train.epochs=2", "train.warmup_iters=3",
        "train.log_interval=1", "train.eval_interval=1", "train.device=cpu", "model.backbone.base_channels=8",
        "model.neck.out_channels=32", "model.head.feat_channels=32", "model.head.stacked_convs=1",
        "model.head.num_groups=8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = tmp_path_factory.mktemp("train")
    rc = main(["train", "demo/gfl_r18_digits", "--work-dir", str(wd), "--set", *TINY])
    assert rc == 0
    return wd


def test_train_writes_work_dir(trained):
    files = {p.name for p in trained.iterdir()}
    assert {"config.py", "config.json", "metrics.jsonl", "epoch_1.pth", "epoch_2.pth", "latest.pth"} <= files
    recs = [json.loads(l) for l in (trained / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["mode"] == "train"]
    val_recs = [r for r in recs if r["mode"] == "val"]
    assert len(train_recs) == 6  # 3 iterations per epoch, logged every iteration
    assert all({"loss", "loss_cls", "loss_bbox", "loss_dfl", "lr"} <= set(r) for r in train_recs)
    assert len(val_recs) == 2 and all(0.0 <= r["AP"] <= 1.0 for r in val_recs)
    ck = load_checkpoint(trained / "epoch_2.pth")
    assert ck["meta"]["epoch"] == 2 and ck["meta"]["iter"] == 6
    assert ck["meta"]["classes"] == [str(i) for i in range(10)]
    assert ck["config"]["train"]["epochs"] == 2
    # the work-dir snapshot reproduces the config
    assert load_config(trained / "config.py").train.epochs == 2


def test_test_command_matches_pycocotools(trained, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "results.json"
    rc = main(["test", str(trained / "config.py"), str(trained / "latest.pth"), "--out", str(out)])
    assert rc == 0
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    results = json.loads(out.read_text())
    cfg = load_config(trained / "config.py")
    from locdistill.data.loader import build_dataset
    val = build_dataset(cfg.data, "val")
    gt = COCO(str(val.json_path))
    assert {r["category_id"] for r in results} <= set(gt.getCatIds())
    assert {r["image_id"] for r in results} <= set(gt.getImgIds())
    if not results:
        assert metrics["AP"] == 0.0
        return
    dt = gt.loadRes(str(out))
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate(); ev.accumulate(); ev.summarize()
    assert metrics["AP"] == pytest.approx(max(ev.stats[0], 0.0), abs=1e-6)
    assert metrics["AP50"] == pytest.approx(max(ev.stats[1], 0.0), abs=1e-6)
    assert metrics["AR100"] == pytest.approx(max(ev.stats[8], 0.0), abs=1e-6)


def test_checkpoint_that_does_not_match_config(trained, capsys):
    rc = main(["test", "demo/gfl_r18_digits", str(trained / "latest.pth"), "--set", *TINY[:4],
               "model.backbone.depth=34"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "does not match the model" in err and "latest.pth" in err


@pytest.mark.slow
def test_short_training_learns(tmp_path):
    """A few minutes on digits: the loss falls and AP is clearly above chance (~0).
    Exact boxes: with the demo's annotation noise the box losses have a floor well above 0."""
    over = ["data.digits_box_noise=0.0", "data.digits_train=600", "data.digits_val=100", "train.epochs=8", "train.milestones=(7,)",
            "train.warmup_iters=20", "train.log_interval=5", "train.eval_interval=0", "train.device=cpu"]
    rc = main(["train", "demo/gfl_r18_digits", "--work-dir", str(tmp_path), "--set", *over])
    assert rc == 0
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in recs if r["mode"] == "train"]
    val = [r for r in recs if r["mode"] == "val"]
    assert sum(train[-3:]) / 3 < 0.65 * sum(train[:3]) / 3
    assert len(val) == 1 and val[-1]["AP"] > 0.08 and val[-1]["AP50"] > 0.18


def test_bf16_autocast_training_runs(tmp_path):
    over = [o for o in TINY if not o.startswith("train.epochs")] + ["train.epochs=1", "train.amp=True"]
    assert main(["train", "demo/gfl_r18_digits", "--work-dir", str(tmp_path), "--set", *over]) == 0
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["mode"] == "train"]
    assert losses and all(isinstance(v, float) for v in losses)  # finite floats (non-finite are strings)


def test_nonfinite_loss_stops_with_message(tmp_path, capsys):
    over = [o for o in TINY if not o.startswith("train.epochs")] + ["train.epochs=1", "train.lr=1e30",
                                                                    "train.warmup_iters=0"]
    rc = main(["train", "demo/gfl_r18_digits", "--work-dir", str(tmp_path), "--set", *over])
    assert rc == 2
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "iteration" in err
