"""DDP on the CPU (gloo): 2 processes × batch 2 train like 1 process × batch 4 (issue 6).

The processes are started with ``torch.multiprocessing`` and join the group through the
same environment variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), so ``fit`` takes exactly the torchrun path.
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from locdistill.checkpoint import load_checkpoint
from locdistill.config import load_config
from locdistill.data.loader import EpochSampler

CONFIG = "demo/gfl_r18_digits"
# SGD (Adam would magnify float32 rounding), BN in eval mode (per-rank batch statistics differ),
# one image size (padding per rank = padding of the whole batch), flips on (seeded per image)
TINY = ["data.digits_train=24", "data.digits_val=12", "data.digits_image_size=96", "data.img_scale=(96, 96)",
        "data.workers=0", "data.flip_prob=0.5", "train.epochs=1", "train.max_iters_per_epoch=3",
        "train.warmup_iters=3", "train.log_interval=1", "train.device=cpu", "train.deterministic=True",
        "train.optimizer=sgd", "train.lr=0.01", "train.tensorboard=False", "model.backbone.base_channels=8",
        "model.backbone.norm_eval=True", "model.neck.out_channels=32", "model.head.feat_channels=32",
        "model.head.stacked_convs=1", "model.head.num_groups=8"]


def _confident_head(cfg, model, device):
    """Class prior 0.5 instead of 0.01, so the box-loss weight sum per batch is > 1 from the start.

    (The criterion clamps the rank-mean of that sum at 1, as mmdetection does; below 1 the loss
    scale would depend on the number of processes, which is not what this test is about.)
    """
    with torch.no_grad():
        model.bbox_head.gfl_cls.bias.zero_()
    return model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distiller_step_check(rank: int) -> None:
    """Only the student is wrapped in DDP: the teacher gets no gradients and no DDP hooks."""
    from locdistill.config import ModelConfig
    from locdistill.distill import Distiller
    from locdistill.engine.dist import wrap_ddp
    from locdistill.models.build import build_detector

    small = ModelConfig(num_classes=3)
    small.backbone.depth, small.backbone.base_channels, small.backbone.norm_eval = 18, 8, True
    small.neck.out_channels, small.head.feat_channels, small.head.stacked_convs = 16, 16, 1
    small.head.num_groups = 4
    torch.manual_seed(0)
    distiller = Distiller(build_detector(small), build_detector(small))
    model = wrap_ddp(distiller, torch.device("cpu"))
    assert model is distiller and type(distiller.student).__name__ == "DistributedDataParallel"
    assert type(distiller.teacher).__name__ != "DistributedDataParallel" and distiller.strides
    torch.manual_seed(rank)  # different data on each rank
    s_out, t_out = model(torch.randn(1, 3, 64, 64))
    outputs = [x for out in (s_out, t_out) for key in ("cls_logits", "box_logits") for x in out[key]]
    sum(x.float().pow(2).mean() for x in outputs).backward()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    grad = distiller.student.module.bbox_head.gfl_reg.weight.grad
    both = [torch.empty_like(grad) for _ in range(2)]
    torch.distributed.all_gather(both, grad)
    assert torch.equal(both[0], both[1])  # averaged by DDP


def _rank_main(rank: int, world: int, port: int, work_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LOCDISTILL_NO_PROGRESS="1")
    torch.set_num_threads(1)
    from locdistill.engine import dist
    from locdistill.engine.train import fit

    dist.init_distributed("cpu")  # joined here so the Distiller check below can share the group
    try:
        out = fit(load_config(CONFIG, TINY + ["data.batch_size=2"]), work_dir, model_factory=_confident_head)
        assert set(out["metrics"]) >= {"AP", "AP50"}  # rank 1 gets rank 0's metrics
        _distiller_step_check(rank)
    finally:
        dist.cleanup_distributed()


def _records(work_dir):
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from locdistill.engine.train import fit

    one = tmp_path_factory.mktemp("one_process")
    fit(load_config(CONFIG, TINY + ["data.batch_size=4"]), one, model_factory=_confident_head)
    two = tmp_path_factory.mktemp("two_processes")
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), str(two)), nprocs=2, join=True)
    return one, two


def test_two_processes_match_one_process_with_the_same_total_batch(runs):
    one, two = runs
    r1 = [r for r in _records(one) if r["mode"] == "train"]
    r2 = [r for r in _records(two) if r["mode"] == "train"]
    assert len(r1) == len(r2) == 3  # rank 0 alone logs
    for a, b in zip(r1, r2):
        assert a["iter"] == b["iter"] and a["lr"] == b["lr"]
        for k in ("loss", "loss_cls", "loss_bbox", "loss_dfl"):
            assert b[k] == pytest.approx(a[k], abs=1e-5), (a["iter"], k)
    w1, w2 = load_checkpoint(one / "latest.pth")["model"], load_checkpoint(two / "latest.pth")["model"]
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k
    # detections of both ranks were gathered: one val record, scored on all 12 images
    val = [r for r in _records(two) if r["mode"] == "val"]
    assert len(val) == 1 and val[0]["AP"] == pytest.approx(
        [r for r in _records(one) if r["mode"] == "val"][0]["AP"], abs=1e-3)


def test_only_rank_zero_writes_one_checkpoint(runs):
    _, two = runs
    assert sorted(p.name for p in two.glob("*.pth")) == ["epoch_1.pth", "latest.pth"]
    assert os.path.samefile(two / "epoch_1.pth", two / "latest.pth")  # one file, two names
    assert not list(two.glob(".*tmp*"))
    meta = load_checkpoint(two / "latest.pth")["meta"]
    assert meta["world_size"] == 2 and meta["batch_size"] == 2 and meta["iter"] == 3


def test_sampler_shards_a_batch_like_one_process():
    """Batch k of rank r is items k·B·W + r, +W, ... of the epoch order: the same images as one
    process with batch B·W; starting mid-epoch skips this rank's first items."""
    full = list(EpochSampler(24, shuffle=True, seed=3, seeded=True))
    shards = [list(EpochSampler(24, shuffle=True, seed=3, rank=r, world_size=2, seeded=True)) for r in range(2)]
    for k in range(6):
        assert sorted(shards[0][2 * k: 2 * k + 2] + shards[1][2 * k: 2 * k + 2]) == sorted(full[4 * k: 4 * k + 4])
    s = EpochSampler(24, shuffle=True, seed=3, rank=1, world_size=2, seeded=True)
    s.set_epoch(0, start=4)
    assert list(s) == shards[1][4:] and len(s) == 8 and s.epoch_length == 12
    with pytest.raises(ValueError):
        s.set_epoch(0, start=13)


@pytest.mark.slow
def test_torchrun_cli(tmp_path):
    """The documented launch: torchrun --nproc_per_node=2 -m locdistill train CONFIG."""
    env = dict(os.environ, LOCDISTILL_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "locdistill",
           "train", CONFIG, "--work-dir", str(tmp_path), "--set", *TINY, "data.batch_size=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 processes × 2 images" in " ".join(proc.stdout.split())  # rich wraps long lines
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["epoch_1.pth", "latest.pth"]
