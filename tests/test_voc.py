"""Pascal VOC: XML datasets, bad input, repeat, VOC mAP (hand-built cases, an independent
implementation on random data) and `locdistill test --eval mAP` end to end."""
import json
import warnings

import numpy as np
import pytest
import torch

from locdistill.config import Config, list_configs, load_config
from locdistill.data.loader import build_dataset
from locdistill.data.repeat import RepeatDataset
from locdistill.data.voc import VOC_CLASSES, VOCDetection
from locdistill.errors import DatasetError
from locdistill.evaluation.voc import IOU_THRS, average_precision, format_voc_table, summarize, voc_eval
from voc_fixture import draw_image, make_devkit, make_plain, voc_xml


def voc_cfg(devkit, **kw):
    cfg = Config()
    d = cfg.data
    d.dataset, d.voc_root = "voc", str(devkit)
    d.voc_train, d.voc_val = ("VOC2007/trainval", "VOC2012/trainval"), ("VOC2007/test",)
    d.img_scale, d.workers, d.batch_size = (64, 64), 0, 2
    for k, v in kw.items():
        setattr(d, k, v)
    return cfg


@pytest.fixture
def devkit(tmp_path):
    pinned = {"2007_test_000": [("bird", 5, 6, 30, 40, 0), ("cat", 10, 10, 20, 20, 1)]}
    return make_devkit(tmp_path, {"VOC2007": {"trainval": 3, "test": 2}, "VOC2012": {"trainval": 2}},
                       objects=pinned)


# ----------------------------------------------------------------------------------- datasets


def test_devkit_layout_and_difficult_objects(devkit):
    cfg = voc_cfg(devkit)
    train, val = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")
    assert len(train) == 5 and len(val) == 2 and train.classes == list(VOC_CLASSES)
    assert val.is_voc2007 and not train.is_voc2007 and val.default_metric == "mAP"
    # the pinned image: the difficult cat is an ignore box, not a training target
    ann = val.get_annotation(0)
    assert ann["labels"].tolist() == [VOC_CLASSES.index("bird"), VOC_CLASSES.index("cat")]
    assert ann["ignore"].tolist() == [False, True]
    image, target = val[0]
    assert image.shape[0] == 3 and target["labels"].tolist() == [VOC_CLASSES.index("bird")]
    sx, sy = target["scale_factor"]
    torch.testing.assert_close(target["boxes"][0], torch.tensor([5 * sx, 6 * sy, 30 * sx, 40 * sy]))
    coco = val.coco_gt()
    assert [a["iscrowd"] for a in coco["annotations"] if a["image_id"] == 0] == [0, 1]


def test_plain_folder_and_whole_devkit_folder(tmp_path, devkit):
    plain = make_plain(tmp_path / "mine", 3)
    ds = VOCDetection([str(plain)], transforms=None)
    assert len(ds) == 3 and ds.get_raw(0)[0].shape == (3, 48, 64)
    whole = VOCDetection(["VOC2007"], root=devkit)  # every XML of Annotations/
    assert len(whole) == 5


def test_repeat_dataset(devkit):
    cfg = voc_cfg(devkit, repeat=3)
    train = build_dataset(cfg.data, "train")
    assert isinstance(train, RepeatDataset) and len(train) == 15
    assert train.classes == list(VOC_CLASSES) and train.dataset.num_classes == 20
    assert train[7][1]["image_id"] == train.dataset[2][1]["image_id"]
    assert len(build_dataset(cfg.data, "val")) == 2  # val is never repeated


def test_shipped_voc_configs_follow_the_paper_schedule():
    names = [n for n in list_configs() if n.startswith("voc/")]
    assert {"voc/gfl_r101_fpn_voc", "voc/gfl_r101_fpn_dconv_c3-c5_voc", "voc/gfl_r50_fpn_voc", "voc/gfl_r34_fpn_voc",
            "voc/gfl_r18_fpn_voc", "voc/ld_gflv1_r101_r18_fpn_voc", "voc/ld_gflv1_r101_r34_fpn_voc",
            "voc/ld_gflv1_r34_r18_fpn_voc_ta", "voc/ld_gflv1_r101_r50_fpn_voc", "voc/ld_gflv1_r101dcn_r34_fpn_voc",
            "voc/ld_gflv1_r101dcn_r101_fpn_voc"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.model.num_classes == 20 and cfg.data.dataset == "voc" and cfg.data.repeat == 3
        assert (cfg.train.epochs, cfg.train.milestones, cfg.data.batch_size) == (4, (3,), 3)
        if name.startswith("voc/ld_"):
            d = cfg.distill  # main-region LD only, as the README's VOC table
            assert (d.ld_weight, d.vlr_weight, d.kd_weight, d.reduction) == (0.25, 0.0, 0.0, "sum")
            assert d.recipe(20) == "ld"
            assert load_config(d.teacher_config).model.num_classes == 20
    assert load_config("ld_gflv1_r101_r18_fpn_voc").model.backbone.depth == 18  # the seed's name


# ----------------------------------------------------------------------------------- bad input


def test_folder_without_annotations_or_images(tmp_path):
    (tmp_path / "VOC2007" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"VOC2007 has no Annotations/"):
        VOCDetection(["VOC2007"], root=tmp_path)
    (tmp_path / "other" / "Annotations").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"other has no JPEGImages/"):
        VOCDetection([str(tmp_path / "other")])
    with pytest.raises(DatasetError, match="does not exist"):
        VOCDetection(["nowhere"], root=tmp_path)
    (tmp_path / "other" / "JPEGImages").mkdir()
    with pytest.raises(DatasetError, match=r"ImageSets/Main/test.txt does not exist"):
        VOCDetection(["other/test"], root=tmp_path)


@pytest.mark.parametrize("objects,message", [
    ([("unicorn", 1, 1, 20, 20)], "unknown class 'unicorn'"),
    ([("dog", 1, 1, "abc", 20)], "malformed box: <xmax> is 'abc'"),
    ([("dog", 30, 1, 10, 20)], "malformed box: xmin=30"),
])
def test_bad_xml_names_the_file_and_skip_bad_counts(tmp_path, objects, message):
    folder = make_plain(tmp_path / "d", 2)
    (folder / "bad.xml").write_text(voc_xml("bad.png", (64, 48), objects))
    draw_image(folder / "bad.png", (64, 48), [], 0)
    with pytest.raises(DatasetError, match=message) as e:
        VOCDetection([str(folder)])
    assert "bad.xml" in str(e.value) and "skip_bad" in str(e.value)
    with pytest.warns(UserWarning, match="skipped 1 bad annotation file"):
        ds = VOCDetection([str(folder)], skip_bad=True)
    assert len(ds) == 2 and ds.num_bad_files == 1


def test_unparsable_xml_and_undecodable_image(tmp_path):
    folder = make_plain(tmp_path / "d", 2)
    (folder / "broken.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError, match=r"broken.xml is not valid XML"):
        VOCDetection([str(folder)])
    (folder / "broken.xml").unlink()
    (folder / "img1.png").write_bytes(b"not an image at all")
    ds = VOCDetection([str(folder)])
    with pytest.raises(DatasetError, match=r"cannot decode image file .*img1.png"):
        ds[1]
    ds = VOCDetection([str(folder)], skip_bad=True)
    with pytest.warns(UserWarning, match="img1.png"):
        image, target = ds[1]  # the next readable image instead
    assert target["image_id"] == 0


def test_missing_image_and_tiny_boxes(tmp_path):
    folder = make_plain(tmp_path / "d", 2)
    (folder / "img1.png").unlink()
    with pytest.raises(DatasetError, match=r"1 annotation file\(s\) have no image file: .*img1.xml"):
        VOCDetection([str(folder)])
    (folder / "img0.xml").write_text(voc_xml("img0.png", (64, 48), [("dog", 5, 5, 5.5, 30), ("cat", 1, 1, 30, 30)]))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = VOCDetection([str(folder)], skip_bad=True)
    assert len(ds) == 1 and ds.num_dropped_boxes == 1 and ds.num_missing_images == 1
    assert any("narrower or lower than 1 pixel" in str(x.message) for x in w)


# ----------------------------------------------------------------------------------- VOC AP


def det(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float),
            "labels": np.asarray(labels, int)}


def gt(boxes, labels, ignore=None):
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "labels": np.asarray(labels, int),
            "ignore": None if ignore is None else np.asarray(ignore, bool)}


@pytest.mark.parametrize("mode", ["area", "11points"])
def test_perfect_detections_give_ap_one(mode):
    gts = [gt([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1]), gt([[5, 5, 30, 30]], [0])]
    dets = [det(g["boxes"], [0.9] * len(g["labels"]), g["labels"]) for g in gts]
    r = voc_eval(dets, gts, 2, IOU_THRS, mode)
    assert np.allclose(r["ap"], 1.0) and np.allclose(r["map"], 1.0) and np.allclose(r["recall"], 1.0)
    m = summarize(r)
    assert m["mAP"] == pytest.approx(1.0) and m["AP"] == pytest.approx(1.0) and m["AP95"] == pytest.approx(1.0)


def test_one_false_positive_ranked_first():
    gts = [gt([[0, 0, 10, 10]], [0])]
    dets = [det([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    # precision at recall 1 is 1/2: all-point AP 0.5, VOC07 11-point AP 0.5
    assert voc_eval(dets, gts, 1, mode="area")["ap"][0, 0] == pytest.approx(0.5)
    assert voc_eval(dets, gts, 1, mode="11points")["ap"][0, 0] == pytest.approx(0.5)
    # ranked last instead, it costs nothing
    dets = [det([[50, 50, 60, 60], [0, 0, 10, 10]], [0.1, 0.8], [0, 0])]
    assert voc_eval(dets, gts, 1)["ap"][0, 0] == pytest.approx(1.0)


def test_difficult_is_neither_miss_nor_false_positive():
    gts = [gt([[0, 0, 10, 10], [30, 30, 50, 50]], [0, 0], ignore=[False, True])]
    found = [det([[30, 30, 50, 50], [0, 0, 10, 10]], [0.95, 0.9], [0, 0])]  # the difficult one ranked first
    missed = [det([[0, 0, 10, 10]], [0.9], [0])]  # the difficult one not detected
    for dets in (found, missed):
        r = voc_eval(dets, gts, 1)
        assert r["num_gts"][0] == 1 and r["ap"][0, 0] == pytest.approx(1.0) and r["recall"][0, 0] == 1.0
    # a duplicate on an already matched box is a false positive
    dup = [det([[0, 0, 10, 10], [0, 0, 10, 10.5]], [0.9, 0.8], [0, 0])]
    assert voc_eval(dup, gts, 1)["ap"][0, 0] == pytest.approx(1.0)
    dup = [det([[0, 0, 10, 10.5], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])]
    r = voc_eval(dup, [gt([[0, 0, 10, 10], [100, 100, 120, 120]], [0, 0])], 1)
    assert r["ap"][0, 0] == pytest.approx(0.5)  # TP then FP; recall stops at 1/2


def test_classes_without_ground_truth_are_left_out_of_the_mean():
    gts = [gt([[0, 0, 10, 10]], [0])]
    dets = [det([[0, 0, 10, 10], [5, 5, 9, 9]], [0.9, 0.9], [0, 1])]
    r = voc_eval(dets, gts, 3)
    assert r["num_dets"].tolist() == [1, 1, 0] and r["map"][0] == pytest.approx(1.0)
    text = format_voc_table(voc_eval(dets, gts, 3, IOU_THRS), ["a", "b", "c"])
    assert "| mAP" in text and "'AP50: 1.000000'" in text and "'AP95:" in text and "AP: " in text


def reference_voc_ap(dets, gts, num_classes, thr, mode):
    """Straightforward VOC evaluation: per class, one detection at a time in score order."""
    aps = []
    for c in range(num_classes):
        records = []  # (score, image, box)
        for i, d in enumerate(dets):
            for b, s, l in zip(d["boxes"], d["scores"], d["labels"]):
                if l == c:
                    records.append((s, i, b))
        records.sort(key=lambda r: -r[0])
        npos = 0
        used = {}
        for i, g in enumerate(gts):
            ign = g["ignore"] if g["ignore"] is not None else np.zeros(len(g["labels"]), bool)
            npos += int(sum(1 for l, h in zip(g["labels"], ign) if l == c and not h))
            used[i] = [False] * len(g["labels"])
        tp, fp = [], []
        for s, i, b in records:
            g = gts[i]
            ign = g["ignore"] if g["ignore"] is not None else np.zeros(len(g["labels"]), bool)
            best, best_k = -1.0, -1
            for k, (gb, gl) in enumerate(zip(g["boxes"], g["labels"])):
                if gl != c:
                    continue
                iw = min(b[2], gb[2]) - max(b[0], gb[0])
                ih = min(b[3], gb[3]) - max(b[1], gb[1])
                inter = max(iw, 0) * max(ih, 0)
                union = (b[2] - b[0]) * (b[3] - b[1]) + (gb[2] - gb[0]) * (gb[3] - gb[1]) - inter
                o = inter / union
                if o > best:
                    best, best_k = o, k
            if best >= thr:
                if ign[best_k]:
                    continue
                if not used[i][best_k]:
                    used[i][best_k] = True
                    tp.append(1), fp.append(0)
                else:
                    tp.append(0), fp.append(1)
            else:
                tp.append(0), fp.append(1)
        if npos == 0:
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / npos
        prec = tp / np.maximum(tp + fp, 1e-12)
        if mode == "11points":
            ap = sum((prec[rec >= t].max() if np.any(rec >= t) else 0.0) for t in np.arange(0, 1.1, 0.1)) / 11
        else:
            r = np.concatenate([[0], rec, [1]])
            p = np.concatenate([[0], prec, [0]])
            for k in range(len(p) - 2, -1, -1):
                p[k] = max(p[k], p[k + 1])
            ap = sum((r[k + 1] - r[k]) * p[k + 1] for k in range(len(r) - 1) if r[k + 1] != r[k])
        aps.append(ap)
    return float(np.mean(aps)) if aps else 0.0


def random_case(rng, num_images=12, num_classes=4):
    gts, dets = [], []
    for _ in range(num_images):
        n = rng.integers(0, 6)
        xy = rng.uniform(0, 80, (n, 2))
        wh = rng.uniform(5, 40, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, num_classes, n)
        gts.append(gt(boxes, labels, rng.random(n) < 0.2))
        m = rng.integers(0, 10)
        src = rng.integers(0, max(n, 1), m)
        jitter = rng.normal(0, 4, (m, 4))
        dboxes = boxes[src] + jitter if n else rng.uniform(0, 100, (m, 4))
        dboxes[:, 2:] = np.maximum(dboxes[:, 2:], dboxes[:, :2] + 1)
        dlabels = np.where(rng.random(m) < 0.8, labels[src] if n else 0, rng.integers(0, num_classes, m))
        dets.append(det(dboxes, rng.random(m), dlabels))
    return dets, gts


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", ["area", "11points"])
def test_agrees_with_a_straightforward_implementation(seed, mode):
    rng = np.random.default_rng(seed)
    dets, gts = random_case(rng)
    r = voc_eval(dets, gts, 4, IOU_THRS, mode)
    for t, thr in enumerate(IOU_THRS):
        assert r["map"][t] == pytest.approx(reference_voc_ap(dets, gts, 4, thr, mode), abs=1e-9)


def test_average_precision_modes():
    rec, prec = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert average_precision(rec, prec, "area") == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert average_precision(rec, prec, "11points") == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)


# ----------------------------------------------------------------------------------- end to end


def test_test_command_eval_map_agrees_with_reference(tmp_path, devkit, capsys):
    """`locdistill test --eval mAP` on a VOC folder with a tiny random model: its numbers
    equal the straightforward implementation run on the written detections and the XMLs."""
    from locdistill.checkpoint import save_checkpoint
    from locdistill.cli import main
    from locdistill.config import config_to_dict, dump_config_py
    from locdistill.models import build_detector

    cfg = voc_cfg(devkit)
    m = cfg.model
    m.num_classes, m.backbone.depth, m.backbone.base_channels = 20, 18, 8
    m.neck.out_channels, m.head.feat_channels, m.head.stacked_convs, m.head.num_groups = 16, 16, 1, 4
    cfg.train.device, cfg.test.score_thr = "cpu", 0.0
    cfg.data.map_mode = "area"
    cfg_file = tmp_path / "tiny_voc.py"
    cfg_file.write_text(dump_config_py(cfg))
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    with torch.no_grad():
        model.bbox_head.gfl_cls.bias.fill_(0.0)  # scores ~0.5: plenty of detections
    ckpt = save_checkpoint(tmp_path / "tiny.pth", model, config_to_dict(cfg), {"classes": list(VOC_CLASSES)})
    out = tmp_path / "res.json"
    assert main(["test", str(cfg_file), str(ckpt), "--eval", "mAP", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| class" in printed and "AP50" in printed and "VOC mAP" in printed
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    results = json.loads(out.read_text())
    assert results
    val = build_dataset(cfg.data, "val")
    dets = []
    for i in val.img_ids:
        rows = [r for r in results if r["image_id"] == i]
        boxes = [[r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]] for r in rows]
        dets.append(det(boxes, [r["score"] for r in rows], [r["category_id"] - 1 for r in rows]))
    gts = [gt(*(val.get_annotation(i)[k] for k in ("boxes", "labels", "ignore"))) for i in val.img_ids]
    want = [reference_voc_ap(dets, gts, 20, thr, "area") for thr in IOU_THRS]
    assert metrics["mAP"] == pytest.approx(want[0], abs=1e-6)
    assert metrics["AP"] == pytest.approx(np.mean(want), abs=1e-6)
    assert metrics["AP75"] == pytest.approx(want[5], abs=1e-6)


def test_a_voc_folder_trains_and_evaluates(tmp_path, devkit, capsys):
    from locdistill.cli import main

    rc = main(["train", "voc/gfl_r18_fpn_voc", "--work-dir", str(tmp_path / "w"), "--set", f"data.voc_root={devkit}",
               "data.img_scale=(64, 64)", "data.workers=0", "data.batch_size=4", "train.epochs=1",
               "train.device=cpu", "train.warmup_iters=2", "model.backbone.base_channels=8",
               "model.neck.out_channels=16", "model.head.feat_channels=16", "model.head.stacked_convs=1",
               "model.head.num_groups=4", "test.score_thr=0.0", "test.nms=voting_cluster_diou"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "VOC mAP @ IoU 0.50 (11points)" in out and "| tvmonitor" in out and "'AP95:" in out
    assert "(val, VOC)" in out and "(val, COCO bbox)" not in out  # the final table uses VOC columns
    recs = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in recs if r.get("mode") == "val"]
    assert val and {"mAP", "AP", "AP50", "AP95", "AR100"} <= set(val[-1])


def test_map_on_coco_format_data_ignores_crowd(tmp_path):
    from types import SimpleNamespace

    from locdistill.evaluation.voc import voc_metrics

    data = {"images": [{"id": 7, "file_name": "a.png"}, {"id": 9, "file_name": "b.png"}],
            "categories": [{"id": 3, "name": "x"}, {"id": 5, "name": "y"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 10, 10]},
                            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [50, 50, 10, 10], "iscrowd": 1},
                            {"id": 3, "image_id": 9, "category_id": 5, "bbox": [5, 5, 20, 20]}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    dataset = SimpleNamespace(json_path=path, cat_ids=[3, 5], classes=["x", "y"])
    dets = [det([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], [0, 0]), det([[5, 5, 25, 25]], [0.7], [1])]
    metrics, result = voc_metrics(dataset, dets, [7, 9], mode="area")
    assert result["num_gts"].tolist() == [1, 1] and metrics["mAP"] == pytest.approx(1.0)
