"""Checkpoints: atomic writes, safe loads, readable key diffs.

Layout written by locdistill::

    {"model": state_dict, "config": dict, "meta": {"version", "classes", "epoch", "iter"},
     "optimizer": ..., "scheduler": ..., "scaler": ...}

Files are written to a temporary file in the same folder and renamed, so a crash
never leaves a truncated checkpoint. Loading uses ``torch.load(weights_only=True)``:
a checkpoint can never execute code. mmdetection files (``{"meta", "state_dict"}``)
load through the same path.
"""
from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from . import __version__
from .errors import CheckpointError


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` through a temp file + ``os.replace`` (never truncated)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the model to save: unwraps DDP and Distiller (student only), on CPU."""
    m = getattr(model, "module", model)  # DDP
    m = getattr(m, "student", m)  # Distiller: never save the teacher
    return {k: v.detach().cpu() for k, v in m.state_dict().items()}


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    config: Mapping | None = None,
    meta: Mapping | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    extra: Mapping | None = None,
) -> Path:
    """Atomically write a locdistill checkpoint (student weights only)."""
    obj: dict[str, Any] = {
        "model": model_state_dict(model),
        "config": dict(config) if config is not None else {},
        "meta": {"version": __version__, **(dict(meta) if meta else {})},
    }
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        obj["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        obj["scaler"] = scaler.state_dict()
    if extra:
        obj.update(extra)
    return atomic_torch_save(obj, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint file safely (``weights_only=True``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle with code, truncated zip, not a checkpoint...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise CheckpointError(
                f"checkpoint {path} contains pickled Python objects that a safe load refuses "
                f"({msg}); if it is an mmdetection / LD-repo file, convert it with "
                f"`locdistill import-mmdet {path} OUT.pth`"
            ) from e
        raise CheckpointError(f"checkpoint {path} could not be read ({type(e).__name__}: {msg}); "
                              "the file may be truncated or not a PyTorch checkpoint") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def extract_state_dict(ckpt: Mapping, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model weights inside a checkpoint dict (locdistill ``model`` or mmdet ``state_dict``)."""
    for key in ("model", "state_dict"):
        sd = ckpt.get(key)
        if isinstance(sd, Mapping):
            break
    else:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            sd = ckpt  # a bare state dict
        else:
            raise CheckpointError(f"{source} has no 'model' or 'state_dict' entry (keys: {sorted(ckpt)[:8]})")
    sd = dict(sd)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _group(keys: list[str], depth: int = 2) -> str:
    groups: dict[str, int] = defaultdict(int)
    for k in keys:
        groups[".".join(k.split(".")[:depth])] += 1
    return ", ".join(f"{g}.* ({n})" for g, n in sorted(groups.items()))


def state_dict_diff(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, list]:
    """Missing / unexpected / shape-mismatched keys between a model and a state dict."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shape = [
        (k, tuple(state_dict[k].shape), tuple(own[k].shape))
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    return {"missing": missing, "unexpected": unexpected, "shape": shape}


def format_diff(diff: dict[str, list], limit: int = 6) -> str:
    lines = []
    if diff["missing"]:
        lines.append(f"  missing in file ({len(diff['missing'])}): {_group(diff['missing'])}")
    if diff["unexpected"]:
        lines.append(f"  unexpected in file ({len(diff['unexpected'])}): {_group(diff['unexpected'])}")
    for k, got, want in diff["shape"][:limit]:
        lines.append(f"  shape mismatch {k}: file {list(got)} vs model {list(want)}")
    if len(diff["shape"]) > limit:
        lines.append(f"  ... and {len(diff['shape']) - limit} more shape mismatches")
    return "\n".join(lines)


def load_model_weights(
    model: nn.Module, ckpt: Mapping | str | os.PathLike, strict: bool = True, source: str | None = None
) -> dict[str, list]:
    """Load weights into ``model``; with ``strict`` any key/shape difference is a clear error.

    Returns the diff (empty lists when everything matched).
    """
    if not isinstance(ckpt, Mapping):
        source = source or str(ckpt)
        ckpt = load_checkpoint(ckpt)
    source = source or "checkpoint"
    sd = extract_state_dict(ckpt, source)
    diff = state_dict_diff(model, sd)
    if diff["shape"] or (strict and (diff["missing"] or diff["unexpected"])):
        hint = ""
        cfg = ckpt.get("config") if isinstance(ckpt, Mapping) else None
        if isinstance(cfg, Mapping) and cfg.get("name"):
            hint = f" (it was trained with config '{cfg['name']}')"
        raise CheckpointError(
            f"{source} does not match the model built from the config{hint}:\n{format_diff(diff)}\n"
            "Use the config the checkpoint was trained with (a work dir holds it as config.py), "
            "or check model.num_classes / backbone depth / head settings."
        )
    sd = {k: v for k, v in sd.items() if k not in diff["unexpected"]}
    model.load_state_dict(sd, strict=strict)
    return diff
