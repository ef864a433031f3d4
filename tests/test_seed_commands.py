"""The commands a user of the LD code types, run here on tiny data (issue 14, section 3).

``tools/dist_train.sh CONFIG GPUS``, ``tools/dist_test.sh CONFIG CKPT GPUS --eval bbox|mAP``,
``python tools/benchmark.py CONFIG CKPT`` and ``python tools/model_converters/publish_model.py``
with the reference's config paths; the alias table; the NMS spelling; conv-BN fusion;
``convert --format mmdet`` and its round trip through the importer.
"""
from __future__ import annotations

import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from locdistill.checkpoint import save_checkpoint
from locdistill.cli import build_parser
from locdistill.config import config_to_dict, dump_config_py, load_config, resolve_config_path
from locdistill.config_aliases import ALIASES, closest_names, config_alias
from locdistill.errors import ConfigError
from locdistill.models import build_detector

from voc_fixture import CLASSES as VOC_CLASSES
from voc_fixture import draw_image, make_devkit

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
TINY_MODEL = ["model.backbone.base_channels=8", "model.neck.out_channels=16", "model.head.feat_channels=16",
              "model.head.stacked_convs=1", "model.head.num_groups=4"]
TINY_RUN = ["data.img_scale=(64, 64)", "data.workers=0", "train.device=cpu", "test.score_thr=0.0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shell(args: list[str], cwd: Path, timeout: int = 300) -> str:
    """Run a tools/*.sh script as a user would; return stdout + stderr (asserting exit 0)."""
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()), OMP_NUM_THREADS="1",
               LOCDISTILL_NO_PROGRESS="1")
    proc = subprocess.run(["bash", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _script(path: Path, argv: list[str], capsys) -> tuple[int, str]:
    """Run a tools/*.py wrapper as ``python path argv...`` in this process; (exit code, stdout)."""
    old = sys.argv
    sys.argv = [str(path), *argv]
    try:
        runpy.run_path(str(path), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old
    return code, capsys.readouterr().out


# ----------------------------------------------------------------------------------- names


SEED_NAMES = {
    "configs/ld/ld_gflv1_r101_r50_fpn_coco_1x.py": "ld/ld_gflv1_r101_r50_fpn_coco_1x",
    "configs/ld/ld_gflv1_r101_r18_fpn_voc.py": "voc/ld_gflv1_r101_r18_fpn_voc",
    "configs/ld/ld_r50_gflv1_r101_fpn_coco_1x.py": "ld/ld_gflv1_r101_r50_fpn_coco_1x",  # the LD README's train line
    "ld_r18-gflv1-r101_fpn_1x_coco": "ld/ld_gflv1_r101_r18_fpn_coco_1x",
    "ld_r101-gflv1-r101-dcn_fpn_2x_coco": "ld/ld_gflv1_r101dcn_r101_fpn_coco_2x",
    "gfl_r50_fpn_1x_coco": "gfl/gfl_r50_fpn_coco_1x",
    "configs/gfl/gfl_r50_fpn_1x_coco.py": "gfl/gfl_r50_fpn_coco_1x",
    "configs/gfl/gflv2_r50_fpn_1x_coco.py": "gflv2/gflv2_r50_fpn_1x_coco",
    "configs/gfl/gfl_r101_fpn_mstrain_2x_coco.py": "gfl/gfl_r101_fpn_mstrain_2x_coco",
    "gfocal_r101_fpn_ms2x": "gflv2/gflv2_r101_fpn_mstrain_2x_coco",
}


def _name(path: Path) -> str:
    return path.resolve().relative_to(resolve_config_path("gfl/gfl_r50_fpn_coco_1x").resolve().parents[1]) \
        .with_suffix("").as_posix()


@pytest.mark.parametrize("foreign", sorted(SEED_NAMES))
def test_the_reference_config_names_resolve_to_the_shipped_experiment(foreign):
    assert _name(resolve_config_path(foreign)) == SEED_NAMES[foreign]


def test_every_alias_target_loads_and_every_alias_resolves():
    """Catches a shipped config renamed under the table."""
    for foreign, target in sorted(ALIASES.items()):
        cfg = load_config(target)
        assert cfg.name == target.rsplit("/", 1)[-1]
        assert config_alias(foreign) == target
        for typed in (foreign, f"configs/ld/{foreign}.py", f"configs/gfl/{foreign}.py"):
            assert _name(resolve_config_path(typed)) == target, typed


def test_configs_aliases_lists_the_table(capsys):
    from locdistill.cli import main

    assert main(["configs", "--aliases"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert dict(rows) == ALIASES


def test_an_unknown_name_lists_the_closest_shipped_and_foreign_names():
    with pytest.raises(ConfigError) as e:
        load_config("configs/gfl/gfl_r50_fpn_2x_coco.py")
    msg = str(e.value)
    assert "not found" in msg and "did you mean" in msg
    assert "gfl_r50_fpn_1x_coco (= gfl/gfl_r50_fpn_coco_1x)" in msg  # a foreign name, with what it means
    with pytest.raises(ConfigError) as e:
        load_config("configs/ld/ld_gflv2_r101_r50_fpn_coco_1x.py")  # not shipped: the 1x GFLv2 LD run
    assert "ld/ld_gflv2_r101_r50_fpn_coco_2x" in str(e.value)  # a shipped name
    assert closest_names("ld_r34-gflv1-r101_fpn_1x_coc")[0].startswith("ld_r34-gflv1-r101_fpn_1x_coco")


def test_the_reference_nms_spelling_is_accepted():
    from locdistill.nms import get_nms

    cfg = load_config("gfl/gfl_r18_fpn_coco_1x", ["test.nms=voting_cluster_diounms"])
    assert get_nms(cfg.test.nms) is get_nms("voting_cluster_diou")
    with pytest.raises(ConfigError, match="voting_cluster_diou"):
        get_nms("voting_cluster")


# ----------------------------------------------------------------------------------- tiny data


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """A tiny VOC devkit, the overrides that shrink the seed's VOC LD config, and a tiny teacher."""
    root = tmp_path_factory.mktemp("seed_voc")
    devkit = make_devkit(root, {"VOC2007": {"trainval": 3, "test": 3}, "VOC2012": {"trainval": 2}})
    overrides = [f"data.voc_root={devkit}", "data.batch_size=2", "data.repeat=1", "train.epochs=1",
                 "train.warmup_iters=2", *TINY_MODEL, *TINY_RUN]
    teacher_cfg = load_config("voc/gfl_r101_fpn_voc", overrides + ["model.backbone.depth=18"])
    teacher_path = root / "teacher.py"
    teacher_path.write_text(dump_config_py(teacher_cfg))
    torch.manual_seed(0)
    teacher = save_checkpoint(root / "teacher.pth", build_detector(teacher_cfg.model), config_to_dict(teacher_cfg),
                              {"classes": list(VOC_CLASSES)})
    overrides += [f"distill.teacher_config={teacher_path}", f"distill.teacher_checkpoint={teacher}"]
    return root, overrides


@pytest.fixture(scope="module")
def trained(voc):
    """``tools/dist_train.sh configs/ld/ld_gflv1_r101_r18_fpn_voc.py 1 ...``: LD on the tiny VOC data."""
    root, overrides = voc
    work = root / "work_dirs" / "ld_gflv1_r101_r18_fpn_voc"
    out = _shell([str(TOOLS / "dist_train.sh"), "configs/ld/ld_gflv1_r101_r18_fpn_voc.py", "1",
                  "--work-dir", str(work), "--cfg-options", *overrides], cwd=root)
    ckpts = sorted(work.glob("epoch_*.pth")) or sorted(work.glob("*.pth"))
    assert ckpts, out[-3000:]
    return ckpts[-1], out


def test_dist_train_with_the_reference_config_path(trained):
    ckpt, out = trained
    assert "checkpoint:" in out and ckpt.is_file()
    saved = torch.load(ckpt, weights_only=True)
    assert not any(k.startswith("teacher") for k in saved["model"])  # the student alone


def test_dist_test_eval_map_prints_the_seed_voc_table(voc, trained, tmp_path):
    root, overrides = voc
    ckpt, _ = trained
    out = _shell([str(TOOLS / "dist_test.sh"), "configs/ld/ld_gflv1_r101_r18_fpn_voc.py", str(ckpt), "1",
                  "--eval", "mAP", "--cfg-options", *overrides, "test.nms=voting_cluster_diounms"], cwd=root)
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| class "))
    assert lines[head - 1].startswith("+---") and lines[head + 1].startswith("+---")
    assert [c.strip() for c in lines[head].strip("|").split("|")] == ["class", "gts", "dets", "recall", "ap"]
    assert lines[head + 2].startswith("| aeroplane ") and any(line.startswith("| tvmonitor ") for line in lines)
    map_row = next(i for i, line in enumerate(lines) if line.startswith("| mAP "))
    assert lines[map_row - 1].startswith("+---") and lines[map_row + 1].startswith("+---")
    ap_line = lines[map_row + 2]
    assert ap_line.startswith("AP:  ") and 0.0 <= float(ap_line.split()[1]) <= 1.0
    listed = lines[map_row + 3]
    assert listed.startswith("['AP50: ") and listed.endswith("']") and "'AP95: " in listed
    assert len(listed.split(", ")) == 10


def _coco_data(root: Path, classes: list[str]) -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    data = {"images": [], "annotations": [], "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)]}
    rng = np.random.default_rng(0)
    for i in range(3):
        objects = []
        for _ in range(2):
            x, y = int(rng.integers(1, 30)), int(rng.integers(1, 20))
            objects.append((classes[int(rng.integers(0, len(classes)))], x, y, x + 20, y + 16))
        draw_image(images / f"{i}.png", (64, 48), objects, seed=i)
        data["images"].append({"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 48})
        for name, x1, y1, x2, y2 in objects:
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": i + 1,
                                        "category_id": classes.index(name) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                        "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    ann = root / "val.json"
    ann.write_text(json.dumps(data))
    return ann, images


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """Tiny COCO-format data, the overrides for the seed's COCO LD config and a tiny student checkpoint."""
    root = tmp_path_factory.mktemp("seed_coco")
    classes = ["person", "car", "dog"]
    ann, images = _coco_data(root, classes)
    overrides = [f"data.val_json={ann}", f"data.val_images={images}", "data.batch_size=2", *TINY_MODEL, *TINY_RUN]
    cfg = load_config("configs/ld/ld_gflv1_r101_r50_fpn_coco_1x.py", overrides + ["model.num_classes=3"])
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    with torch.no_grad():
        model.bbox_head.gfl_cls.bias.fill_(0.0)  # scores ~0.5: plenty of detections
    work = root / "work_dirs" / "ld_gflv1_r101_r50_fpn_coco_1x"
    ckpt = save_checkpoint(work / "epoch_24.pth", model, config_to_dict(cfg), {"classes": classes})
    cfg_file = root / "tiny_student.py"
    cfg_file.write_text(dump_config_py(cfg))
    return root, overrides, ckpt, model, cfg_file


def test_dist_test_eval_bbox_with_the_reference_config_path(coco):
    root, overrides, ckpt, _, _ = coco
    out = _shell([str(TOOLS / "dist_test.sh"), "configs/ld/ld_gflv1_r101_r50_fpn_coco_1x.py", str(ckpt), "1",
                  "--eval", "bbox", "--cfg-options", *overrides], cwd=root)
    assert "COCO bbox" in out and "AP50" in out and "evaluated 3 images" in out


def test_benchmark_script_as_the_seed_types_it(coco, capsys):
    root, overrides, ckpt, _, _ = coco
    code, out = _script(TOOLS / "benchmark.py", ["configs/ld/ld_gflv1_r101_r50_fpn_coco_1x.py", str(ckpt),
                                                 "--images", "3", "--warmup", "1", "--log-interval", "1",
                                                 "--fuse-conv-bn", "--cfg-options", *overrides], capsys)
    assert code == 0, out
    assert "fused" in out and "conv + BatchNorm pairs" in out
    done = [line for line in out.splitlines() if line.startswith("Done image [")]
    assert [line.split("]")[0] for line in done] == ["Done image [1  / 3", "Done image [2  / 3", "Done image [3  / 3"]
    assert all(line.endswith(" img / s") and ", fps: " in line for line in done)
    overall = [line for line in out.splitlines() if line.startswith("Overall fps: ")]
    assert len(overall) == 1 and overall[0].endswith(" img / s") and float(overall[0].split()[2]) > 0
    code, out = _script(TOOLS / "analysis_tools" / "benchmark.py",
                        ["ld_r50-gflv1-r101_fpn_1x_coco", str(ckpt), "--images", "1", "--warmup", "0",
                         "--cfg-options", *overrides], capsys)
    assert code == 0 and "Overall fps: " in out


def test_benchmark_defaults_follow_the_seed():
    args = build_parser().parse_args(["benchmark", "gfl_r50_fpn_1x_coco", "x.pth"])
    assert (args.images, args.warmup, args.log_interval, args.fuse_conv_bn) == (2000, 5, 50, False)
    import inspect

    from locdistill.tools import benchmark

    defaults = inspect.signature(benchmark.benchmark).parameters
    assert defaults["images"].default == 2000 and defaults["warmup"].default == 5


def test_fuse_conv_bn_keeps_the_outputs(coco):
    from locdistill.tools.benchmark import fuse_conv_bn

    cfg_file = coco[4]
    model = build_detector(load_config(str(cfg_file)).model).eval()
    with torch.no_grad():
        for m in model.modules():  # BatchNorm statistics that are not the identity
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        x = torch.randn(1, 3, 64, 64)
        before = model(x)
        n = fuse_conv_bn(model)
        after = model(x)
    bns = [name for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert n > 0 and not bns  # a ResNet's every BatchNorm folds
    for key in ("cls_logits", "box_logits"):
        for a, b in zip(before[key], after[key]):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------- convert


def test_publish_model_mmdet_format_round_trips_through_the_importer(coco, tmp_path, capsys):
    from locdistill.tools.import_mmdet import import_checkpoint

    _, _, ckpt, model, cfg_file = coco
    code, out = _script(TOOLS / "model_converters" / "publish_model.py",
                        [str(ckpt), str(tmp_path / "published.pth"), "--format", "mmdet"], capsys)
    assert code == 0, out
    published = next(tmp_path.glob("published-*.pth"))
    assert published.name == f"published-{published.name[10:18]}.pth" and "format: mmdet" in out
    obj = torch.load(published, weights_only=True)
    assert set(obj) == {"meta", "state_dict"}
    assert obj["meta"]["CLASSES"] == ("person", "car", "dog") and obj["meta"]["mmdet_version"].startswith("2.")
    want = model.state_dict()
    assert set(obj["state_dict"]) == set(want)
    result = import_checkpoint(published, tmp_path / "back.pth", config=str(cfg_file))
    assert result.source == "mmdetection 2.x" and result.classes == ["person", "car", "dog"]
    back = torch.load(result.path, weights_only=True)
    assert back["meta"]["classes"] == ["person", "car", "dog"]
    assert set(back["model"]) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(back["model"][k], v, rtol=0, atol=0)
    # the default format stays locdistill's
    code, out = _script(TOOLS / "convert_model.py", [str(ckpt), str(tmp_path / "ours.pth")], capsys)
    assert code == 0 and set(torch.load(next(tmp_path.glob("ours-*.pth")), weights_only=True)) == {"model", "meta"}


def test_mmdet_format_of_an_r50_gfl_has_mmdetections_keys_and_shapes(tmp_path):
    """The file mmdetection's gfl_r50_fpn_1x_coco loads: the 368 keys and shapes of its checkpoint."""
    from locdistill.tools.convert import convert_checkpoint

    spec = json.loads((Path(__file__).parent / "data" / "mmdet_gfl_r50_fpn_coco_keys.json").read_text())
    model = build_detector(load_config("gfl_r50_fpn_1x_coco").model)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save({"model": state, "meta": {"classes": [f"c{i}" for i in range(80)]}}, tmp_path / "r50.pth")
    result = convert_checkpoint(tmp_path / "r50.pth", tmp_path / "r50_mmdet.pth", format="mmdet")
    obj = torch.load(result.path, weights_only=True)
    assert {k: list(v.shape) for k, v in obj["state_dict"].items()} == spec
    assert len(obj["meta"]["CLASSES"]) == 80
