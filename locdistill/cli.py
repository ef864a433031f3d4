"""``locdistill <command>``: the command-line interface (also ``python -m locdistill``)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__
from .errors import LocDistillError


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", "--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override config fields, e.g. --set train.epochs=2 data.batch_size=4 (--cfg-options, "
                        "the LD code's spelling, is the same option; the keys are locdistill's)")


def _add_launcher(p: argparse.ArgumentParser) -> None:
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                   help=argparse.SUPPRESS)  # the LD code's scripts pass it; torchrun's environment decides here


def _default_work_dir(cfg_name: str) -> Path:
    return Path("work_dirs") / Path(cfg_name).name


# ----------------------------------------------------------------------------------- commands


def cmd_configs(args) -> int:
    from .config import list_configs

    if args.aliases:
        from .config_aliases import ALIASES

        width = max(map(len, ALIASES))
        for foreign, name in sorted(ALIASES.items()):
            print(f"{foreign:<{width}}  {name}")
        return 0
    for name in list_configs():
        print(name)
    return 0


def cmd_train(args) -> int:
    from .config import load_config
    from .engine.train import fit

    cfg = load_config(args.config, args.overrides)
    if args.amp or args.amp_dtype:
        cfg.train.amp = True
    if args.amp_dtype:
        cfg.train.amp_dtype = {"bf16": "bfloat16", "fp16": "float16"}[args.amp_dtype]
    if args.channels_last:
        cfg.train.channels_last = True
    work_dir = Path(args.work_dir) if args.work_dir else _default_work_dir(cfg.name)
    resume = True if args.resume == "auto" else args.resume
    out = fit(cfg, work_dir, resume=resume)
    from .engine.dist import is_main_process

    if is_main_process():  # torchrun: every rank returns here
        print(f"checkpoint: {out['checkpoint']}")
        print(f"work dir:   {work_dir}")
    return 0


def cmd_test(args) -> int:
    from .checkpoint import load_checkpoint
    from .config import load_config
    from .data.loader import build_dataset
    from .engine import dist
    from .engine.evaluate import test
    from .engine.logging import info, metrics_table, print_table

    cfg = load_config(args.config, args.overrides)
    ckpt = load_checkpoint(args.checkpoint)
    device = dist.init_distributed(cfg.train.device)  # under torchrun each process scores a shard
    with dist.main_process_first():
        val_set = build_dataset(cfg.data, "val")
    metric = args.eval or getattr(val_set, "default_metric", "bbox")  # VOC data: mAP
    t0 = time.perf_counter()
    # the class count follows the checkpoint (recorded names, else the classifier's rows of a bare state dict)
    metrics, results = test(cfg, ckpt, val_set, device, source=str(args.checkpoint), distributed=True,
                            out=args.out, metric=metric)
    dt = time.perf_counter() - t0
    kind = {"bbox": "COCO bbox", "mAP": "VOC mAP"}[metric]
    columns = {"columns": ("mAP", "AP", "AP50", "AP75", "AR100")} if metric == "mAP" else {}
    print_table(metrics_table([(cfg.name, metrics)], title=f"{cfg.name}: {val_set.json_path} ({kind})", **columns))
    metrics_path = Path(args.metrics_out) if args.metrics_out else (
        Path(args.out).with_suffix(".metrics.json") if args.out else None)
    if metrics_path is not None and dist.is_main_process():
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text(json.dumps({"config": cfg.name, "checkpoint": str(args.checkpoint),
                                            "num_images": len(val_set), **metrics}, indent=2))
        info(f"metrics: {metrics_path}")
    if args.out:
        info(f"detections ({len(results)}): {args.out}")
    info(f"evaluated {len(val_set)} images in {dt:.1f} s")
    dist.cleanup_distributed()
    return 0


def cmd_import_mmdet(args) -> int:
    from .tools.import_mmdet import import_checkpoint

    result = import_checkpoint(args.input, args.output, config=args.config)
    for line in result.summary():
        print(line)
    return 0


def cmd_import_ultralytics(args) -> int:
    from .tools.import_ultralytics import import_ultralytics

    for line in import_ultralytics(args.input, args.output, fold_input=not args.keep_input_scaling).summary():
        print(line)
    return 0


def cmd_convert(args) -> int:
    from .tools.convert import convert_checkpoint

    result = convert_checkpoint(args.input, args.output, half=args.half, format=args.format)
    for line in result.summary():
        print(line)
    return 0


def cmd_plot(args) -> int:
    from .tools.plot import plot_metrics

    print(f"plot: {plot_metrics(args.work_dir, args.out)}")
    return 0


def cmd_demo(args) -> int:
    from .tools.demo import run_demo

    run_demo(work_dir=args.work_dir, quick=args.quick, train_teacher=args.train_teacher,
             sequential=args.sequential)
    return 0


def cmd_benchmark(args) -> int:
    from .tools.benchmark import benchmark

    benchmark(args.config, args.checkpoint, compare=args.compare, images=args.images, warmup=args.warmup,
              amp=args.amp, overrides=args.overrides, synthetic=args.synthetic, log_interval=args.log_interval,
              fuse=args.fuse_conv_bn)
    return 0


def cmd_check_teacher(args) -> int:
    from .tools.check_teacher import check_teacher, format_report

    check = check_teacher(args.student_config, args.student_checkpoint, args.teacher_config,
                          args.teacher_checkpoint, split=args.split, images=args.images,
                          overrides=args.overrides, teacher_overrides=args.teacher_overrides)
    print("\n".join(format_report(check)))
    return 0


def cmd_predict(args) -> int:
    from .tools.predict import predict_images

    path = predict_images(args.config, args.checkpoint, args.images, args.out_dir, score_thr=args.score_thr,
                          overrides=args.overrides)
    print(f"pictures and detections: {path.parent} ({path.name})")
    return 0


def cmd_export(args) -> int:
    from .tools.export import export_onnx

    result = export_onnx(args.config, args.checkpoint, args.output, size=args.size, opset=args.opset,
                         check=args.check, overrides=args.overrides, dynamic_size=not args.static_size,
                         nms=args.nms)
    print("\n".join(result.summary()))
    return 0


def cmd_visualize_distribution(args) -> int:
    from .tools.visualize import visualize_distribution

    fig, boxes = visualize_distribution(args.config, args.checkpoint, args.image, args.out, teacher=args.teacher,
                                        top=args.top, overrides=args.overrides)
    print(f"distributions: {fig}\nboxes:         {boxes}")
    return 0


# ----------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="locdistill",
        description="Localization Distillation (LD) for dense object detectors, in pure PyTorch.",
    )
    p.add_argument("--version", action="version", version=f"locdistill {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("demo", help="teacher vs student vs student + LD on the bundled digits data (the main job)")
    s.add_argument("--work-dir", default="work_dirs/demo")
    s.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    s.add_argument("--train-teacher", action="store_true",
                   help="train the teacher too instead of using the shipped checkpoint")
    s.add_argument("--sequential", action="store_true",
                   help="train the baseline and the LD student one after the other (default on a CPU with 2+ "
                        "threads: side by side, the baseline in a background process)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("train", help="train a detector: locdistill train CONFIG")
    s.add_argument("config", help="config name (e.g. gfl/gfl_r50_fpn_coco_1x) or path to a .py file")
    s.add_argument("--work-dir", help="output folder (default work_dirs/<config name>)")
    s.add_argument("--resume", "--resume-from", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="resume from CKPT, or from the latest checkpoint in the work dir (--resume-from CKPT, "
                        "the LD code's spelling, is the same option)")
    s.add_argument("--amp", action="store_true", help="bf16 autocast for the forward passes (losses stay float32)")
    s.add_argument("--amp-dtype", choices=["bf16", "fp16"],
                   help="autocast dtype (implies --amp); fp16 needs CUDA and trains with a GradScaler")
    s.add_argument("--channels-last", action="store_true",
                   help="channels-last (NHWC) memory format for model and images (faster convolutions on GPUs)")
    _add_set(s)
    _add_launcher(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("test", help="evaluate a checkpoint: locdistill test CONFIG CKPT")
    s.add_argument("config")
    s.add_argument("checkpoint")
    s.add_argument("--eval", default=None, choices=["bbox", "mAP"],
                   help="metric: COCO box AP (bbox) or Pascal VOC mAP (mAP, with the per-class table and "
                        "AP50…AP95); default: bbox, or mAP on VOC data")
    s.add_argument("--out", help="write COCO-format detections to this JSON")
    s.add_argument("--metrics-out", help="write the metrics JSON here (default: next to --out)")
    _add_set(s)
    _add_launcher(s)
    s.set_defaults(func=cmd_test)

    s = sub.add_parser("convert", help="strip teacher weights and training state, publish as OUT-<sha256>.pth",
                       description="Read a locdistill, mmdetection or LD-repo checkpoint, remove teacher weights "
                                   "(teacher*, bbox_head.teacher_models.*), optimizer/scheduler/scaler state and "
                                   "metadata that is not plain data, and write OUT-<sha256[:8]>.pth (as the LD "
                                   "code's tools/model_converters/publish_model.py names it). --format mmdet writes "
                                   "the layout mmdetection and the LD code load.")
    s.add_argument("input", metavar="IN", help="checkpoint to convert")
    s.add_argument("output", metavar="OUT", help="output path; the hash is inserted before .pth")
    s.add_argument("--half", action="store_true", help="store floating-point weights as float16")
    s.add_argument("--format", choices=["locdistill", "mmdet"], default="locdistill",
                   help="locdistill (default): {'model', 'meta'}; mmdet: {'meta': {CLASSES, mmdet_version, ...}, "
                        "'state_dict'} in mmdetection's key names, for mmdetection 2.x/3.x and the LD code "
                        "(locdistill reads both)")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("plot", help="draw loss terms, learning rate and AP of a run into a PNG")
    s.add_argument("work_dir", metavar="WORK_DIR", help="a training work dir (reads its metrics.jsonl)")
    s.add_argument("--out", help="PNG to write (default WORK_DIR/metrics.png)")
    s.set_defaults(func=cmd_plot)

    s = sub.add_parser("import-mmdet", help="import an mmdetection / GFocalV2 / LD-repo GFL checkpoint",
                       description="Read an mmdetection 2.x/3.x, GFocalV2-repo or LD-repo GFL checkpoint safely "
                                   "(no pickled code runs), drop teacher weights, check every key and shape "
                                   "against the config (given, or the shipped config its architecture matches) "
                                   "and write a locdistill checkpoint with that config and the class names. "
                                   "train/test/distillation also read such files directly.")
    s.add_argument("input", metavar="IN", help="checkpoint to import (.pth)")
    s.add_argument("output", metavar="OUT", help="locdistill checkpoint to write")
    s.add_argument("--config", metavar="NAME", help="config the weights must fit (default: guessed from the keys)")
    s.set_defaults(func=cmd_import_mmdet)

    s = sub.add_parser("import-ultralytics", help="import an Ultralytics YOLOv8 detection checkpoint (.pt)",
                       description="Read an Ultralytics YOLOv8 detection .pt file without Ultralytics and without "
                                   "running pickled code (modules become inert placeholders; only tensors and plain "
                                   "metadata are kept), map its keys onto locdistill's YOLO family, load them "
                                   "strictly into the model of the matching yolo/yolov8<scale>_coco config and write "
                                   "a locdistill checkpoint with the class names (docs/yolo.md).")
    s.add_argument("input", metavar="MODEL.pt", help="Ultralytics checkpoint to import")
    s.add_argument("output", metavar="OUT", help="locdistill checkpoint to write")
    s.add_argument("--keep-input-scaling", action="store_true",
                   help="keep every tensor as in the file (the model then expects RGB pixels / 255, not locdistill's "
                        "normalised images); by default that scaling is folded into the stem conv")
    s.set_defaults(func=cmd_import_ultralytics)

    s = sub.add_parser("benchmark", help="inference speed (FPS) of a detector: locdistill benchmark CONFIG [CKPT]",
                       description="Images per second of model + post-processing, one image at a time from the "
                                   "val set (data loading excluded): 2000 images after 5 warm-up by default, "
                                   "printed as the seed's tools/benchmark.py does. Prints device, threads, image "
                                   "size and AMP.")
    s.add_argument("config")
    s.add_argument("checkpoint", nargs="?", help="weights (default: random initialisation)")
    s.add_argument("--compare", nargs="+", metavar=("CONFIG2", "CKPT2"),
                   help="time a second detector on the same images in the same run and print the ratio")
    s.add_argument("--images", type=int, default=2000,
                   help="images timed (default 2000, as the seed; a smaller val set is cycled through)")
    s.add_argument("--warmup", type=int, default=5, help="images run first and not timed (default 5)")
    s.add_argument("--amp", action="store_true", help="autocast (bfloat16 on CPU, float16 on CUDA)")
    s.add_argument("--synthetic", action="store_true", help="random images at data.img_scale instead of the val set")
    s.add_argument("--log-interval", type=int, default=50, help="print the running FPS every N images")
    s.add_argument("--fuse-conv-bn", action="store_true",
                   help="fold BatchNorm layers into the convolutions before them (slightly faster; same outputs)")
    _add_set(s)
    s.set_defaults(func=cmd_benchmark)

    s = sub.add_parser("check-teacher",
                       help="can a teacher help a student? LD headroom, box comparison and a verdict",
                       description="Before training with LD: evaluate the student (trained without LD) with the "
                                   "teacher's box logits swapped in at its ATSS positives (main LD), at the VLR, "
                                   "both and everywhere, with the teacher's class logits, and the teacher alone "
                                   "(AP and the change against the student); compare the teacher's and the "
                                   "student's boxes at the positives (mean IoU with the annotated box, share "
                                   "where the teacher's is better); and say in words whether LD is likely to "
                                   "help. The thresholds are rules of thumb (docs/distillation.md).")
    s.add_argument("student_config", metavar="STUDENT_CONFIG")
    s.add_argument("student_checkpoint", metavar="STUDENT_CKPT", help="the student trained without LD")
    s.add_argument("teacher_config", metavar="TEACHER_CONFIG")
    s.add_argument("teacher_checkpoint", metavar="TEACHER_CKPT")
    s.add_argument("--split", choices=["val", "train"], default="val",
                   help="the student's val images (default) or its training images, without augmentation")
    s.add_argument("--images", type=int, default=None, metavar="N", help="only the first N images (default all)")
    _add_set(s)
    s.add_argument("--teacher-set", nargs="+", default=[], metavar="KEY=VALUE", dest="teacher_overrides",
                   help="override fields of the teacher's config (only its model section is used)")
    s.set_defaults(func=cmd_check_teacher)

    s = sub.add_parser("predict", help="draw detections on images: locdistill predict CONFIG CKPT IMAGES... --out-dir D")
    s.add_argument("config")
    s.add_argument("checkpoint")
    s.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders of images")
    s.add_argument("--out-dir", required=True, help="where the pictures and detections.json go")
    s.add_argument("--score-thr", type=float, default=0.3, help="draw detections scoring at least this (default 0.3)")
    _add_set(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="write a detector as ONNX: locdistill export CONFIG CKPT model.onnx",
                       description="Export the detector with its box decoding as an ONNX graph: input images "
                                   "[B,3,H,W] (normalised and padded as the test pipeline does; B dynamic, H and W "
                                   "dynamic multiples of data.size_divisor unless --static-size), outputs boxes "
                                   "[B,A,4] (xyxy input pixels) and scores [B,A,C] (sigmoid; GFLv2: joint scores). "
                                   "NMS is not in the graph (docs/tools.md). Needs pip install "
                                   "\"locdistill[export]\".")
    s.add_argument("config")
    s.add_argument("checkpoint", help="weights to export")
    s.add_argument("output", metavar="OUT", help="ONNX file to write (e.g. model.onnx)")
    s.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                   help="image size of the onnxruntime check, and with --static-size the only size the graph "
                        "accepts (default data.img_scale padded to data.size_divisor, landscape)")
    s.add_argument("--static-size", action="store_true", help="fix H and W to --size in the graph")
    s.add_argument("--nms", action="store_true",
                   help="put hard NMS (test.nms=nms, test.score_thr, test.iou_thr) into the graph: outputs det_boxes "
                        "[N,4], det_scores [N], det_labels [N], det_image [N] (input pixels, no max_per_img)")
    s.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    s.add_argument("--check", action=argparse.BooleanOptionalAction, default=None,
                   help="run the file in onnxruntime on a random batch and compare with PyTorch "
                        "(default: on when onnxruntime is installed)")
    _add_set(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("visualize-distribution",
                       help="plot the per-side box distributions of the top detections (student, teacher)",
                       description="For the top detections of IMAGE, plot the four per-side distance "
                                   "distributions (left, top, right, bottom) next to a crop with the box; with "
                                   "--teacher the teacher's distributions at the same locations too. Writes "
                                   "FILE (PNG) and FILE's stem + _boxes.png (the image with the numbered boxes).")
    s.add_argument("config")
    s.add_argument("checkpoint")
    s.add_argument("image")
    s.add_argument("--teacher", nargs=2, metavar=("CONFIG", "CKPT"), help="a teacher to compare with")
    s.add_argument("--out", required=True, help="PNG to write")
    s.add_argument("--top", type=int, default=3, help="number of detections (default 3)")
    _add_set(s)
    s.set_defaults(func=cmd_visualize_distribution)

    s = sub.add_parser("configs", help="list the shipped configs")
    s.add_argument("--aliases", action="store_true",
                   help="list the LD code's, mmdetection's and GFocalV2's config names that map to them instead "
                        "(docs/from_ld_code.md)")
    s.set_defaults(func=cmd_configs)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except LocDistillError as e:
        if args.debug:
            raise
        if not getattr(e, "quiet", False):  # set on the ranks > 0 of an error every rank raises
            print(f"locdistill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("locdistill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
