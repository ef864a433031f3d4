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
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override config fields, e.g. --set train.epochs=2 data.batch_size=4")


def _default_work_dir(cfg_name: str) -> Path:
    return Path("work_dirs") / Path(cfg_name).name


# ----------------------------------------------------------------------------------- commands


def cmd_configs(args) -> int:
    from .config import list_configs

    for name in list_configs():
        print(name)
    return 0


def cmd_train(args) -> int:
    from .config import load_config
    from .engine.train import fit

    cfg = load_config(args.config, args.overrides)
    if args.amp:
        cfg.train.amp = True
    work_dir = Path(args.work_dir) if args.work_dir else _default_work_dir(cfg.name)
    resume = True if args.resume == "auto" else args.resume
    out = fit(cfg, work_dir, resume=resume)
    print(f"checkpoint: {out['checkpoint']}")
    print(f"work dir:   {work_dir}")
    return 0


def cmd_test(args) -> int:

    from .checkpoint import load_checkpoint, load_model_weights
    from .config import load_config
    from .data.loader import build_dataloader, build_dataset
    from .engine.evaluate import evaluate
    from .engine.logging import info, metrics_table, print_table
    from .engine.train import select_device
    from .models.build import build_detector

    cfg = load_config(args.config, args.overrides)
    ckpt = load_checkpoint(args.checkpoint)
    val_set = build_dataset(cfg.data, "val")
    classes = (ckpt.get("meta") or {}).get("classes")
    num_classes = len(classes) if classes else len(val_set.classes)
    if cfg.model.num_classes != num_classes:
        cfg.model.num_classes = num_classes
    if classes and len(classes) != len(val_set.classes):
        raise LocDistillError(
            f"checkpoint {args.checkpoint} was trained on {len(classes)} classes but {val_set.json_path} "
            f"has {len(val_set.classes)}; evaluate on the dataset it was trained for")
    device = select_device(cfg.train.device)
    model = build_detector(cfg.model)
    load_model_weights(model, ckpt, strict=True, source=str(args.checkpoint))
    model.to(device)
    loader = build_dataloader(val_set, cfg.data.batch_size, cfg.data.workers, shuffle=False)
    t0 = time.perf_counter()
    metrics, results = evaluate(model, loader, cfg, val_set, device, out=args.out)
    dt = time.perf_counter() - t0
    print_table(metrics_table([(cfg.name, metrics)], title=f"{cfg.name}: {val_set.json_path} (COCO bbox)"))
    metrics_path = Path(args.metrics_out) if args.metrics_out else (
        Path(args.out).with_suffix(".metrics.json") if args.out else None)
    if metrics_path is not None:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text(json.dumps({"config": cfg.name, "checkpoint": str(args.checkpoint),
                                            "num_images": len(val_set), **metrics}, indent=2))
        info(f"metrics: {metrics_path}")
    if args.out:
        info(f"detections ({len(results)}): {args.out}")
    info(f"evaluated {len(val_set)} images in {dt:.1f} s")
    return 0


def cmd_convert(args) -> int:
    from .tools.convert import convert_checkpoint

    result = convert_checkpoint(args.input, args.output, half=args.half)
    for line in result.summary():
        print(line)
    return 0


def cmd_demo(args) -> int:
    from .tools.demo import run_demo

    run_demo(work_dir=args.work_dir, quick=args.quick, train_teacher=args.train_teacher)
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
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("train", help="train a detector: locdistill train CONFIG")
    s.add_argument("config", help="config name (e.g. gfl/gfl_r50_fpn_coco_1x) or path to a .py file")
    s.add_argument("--work-dir", help="output folder (default work_dirs/<config name>)")
    s.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="resume from CKPT, or from the latest checkpoint in the work dir")
    s.add_argument("--amp", action="store_true", help="bf16 autocast for the forward passes (losses stay float32)")
    _add_set(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("test", help="evaluate a checkpoint: locdistill test CONFIG CKPT")
    s.add_argument("config")
    s.add_argument("checkpoint")
    s.add_argument("--eval", default="bbox", choices=["bbox"], help="metric (COCO bbox)")
    s.add_argument("--out", help="write COCO-format detections to this JSON")
    s.add_argument("--metrics-out", help="write the metrics JSON here (default: next to --out)")
    _add_set(s)
    s.set_defaults(func=cmd_test)

    s = sub.add_parser("convert", help="strip teacher weights and training state, publish as OUT-<sha256>.pth",
                       description="Read a locdistill, mmdetection or LD-repo checkpoint, remove teacher weights "
                                   "(teacher*, bbox_head.teacher_models.*), optimizer/scheduler/scaler state and "
                                   "metadata that is not plain data, and write OUT-<sha256[:8]>.pth.")
    s.add_argument("input", metavar="IN", help="checkpoint to convert")
    s.add_argument("output", metavar="OUT", help="output path; the hash is inserted before .pth")
    s.add_argument("--half", action="store_true", help="store floating-point weights as float16")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("configs", help="list the shipped configs")
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
        print(f"locdistill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("locdistill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
