"""Checkpoints: atomic writes, safe loads, readable key diffs.

Layout written by locdistill::

    {"model": state_dict, "config": dict, "meta": {"version", "classes", "epoch", "iter"},
     "optimizer": ..., "scheduler": ..., "scaler": ...,
     "ema": {"state_dict", "updates", "decay", "tau"}}   # with train.ema

``model`` holds the raw weights (training resumes from them); inference, evaluation, teachers
and ``convert`` read the ``ema`` weights when a file holds them (:func:`inference_checkpoint`).

Files are written to a temporary file in the same folder and renamed, so a crash
never leaves a truncated checkpoint. Loading uses ``torch.load(weights_only=True)``:
a checkpoint can never execute code. mmdetection files (``{"meta", "state_dict"}``)
load through the same path. Files from mmdetection / the LD code whose metadata holds
numpy values or mmcv/mmengine objects (which ``weights_only`` refuses) are read again
by :func:`restricted_load`: an unpickler that resolves only a short list of globals
(tensor rebuilding, ``OrderedDict``, numpy arrays/scalars/dtypes, a few builtins),
turns classes of ``mmcv`` / ``mmengine`` / ``mmdet`` / ``addict`` into inert
:class:`~locdistill.mmdet_format.UnloadedObject` stand-ins without importing them, and refuses anything else:
it never imports a module the file names and never calls a function outside its list.
"""
from __future__ import annotations

import _codecs
import collections
import errno
import os
import pickle
import tempfile
import types
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch._utils as tu
from torch import nn

from . import __version__
from .errors import CheckpointError
from .mmdet_format import (STAND_IN_ROOTS, UnloadedObject, stand_in, checkpoint_classes, mismatch_hint,
                           normalize_state_dict)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class DiskFullError(CheckpointError):
    """The disk (or quota) filled up while a file was written; the partial file is removed."""

    def __init__(self, path: Path, reason: str, advice: str):
        super().__init__(f"{reason} while writing {path}; {advice}")
        self.path, self.reason = path, reason


def _disk_full_reason(e: BaseException) -> str | None:
    """Why a write failed when the disk is full, else None. PyTorch's zip writer, when it writes to a
    path, reports a short write only as ``[enforce fail at inline_container.cc] unexpected pos``."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device" if e.errno == errno.ENOSPC else "disk quota exceeded"
    if isinstance(e, RuntimeError) and "unexpected pos" in str(e):
        return "no space left on device (or a disk error: PyTorch's writer stopped part-way)"
    return None


def atomic_torch_save(obj: Any, path: str | os.PathLike, final_name: Any = None) -> Path:
    """``torch.save`` to ``path`` through a temp file + ``os.replace`` (never truncated).

    ``final_name(tmp_path) -> Path`` may choose the final name from the written bytes
    (``convert`` inserts the file's sha256); returns the final path. A full disk raises
    :class:`DiskFullError` (the temp file is removed; files already there are untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        if final_name is not None:
            path = Path(final_name(Path(tmp)))
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        reason = _disk_full_reason(e)
        if reason:
            raise DiskFullError(path, reason, "the partial file was removed and the files already in "
                                f"{path.parent} are intact; free some space there and try again") from e
        raise
    return path


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the model to save: unwraps DDP and Distiller (student only), on CPU."""
    m = getattr(model, "module", model)  # DDP
    m = getattr(m, "student", m)  # Distiller: never save the teacher
    m = getattr(m, "module", m)  # its student wrapped in DDP
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
    """Read a checkpoint file safely; errors name the file.

    ``torch.load(weights_only=True)`` first; a file it refuses only because of pickled
    metadata objects (numpy values, mmcv ``ConfigDict``...) is read by
    :func:`restricted_load`, which still refuses anything that could run code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle with code, truncated zip, not a checkpoint...
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text or "GLOBAL" in text:
            obj = restricted_load(path, map_location)
        else:
            raise CheckpointError(f"checkpoint {path} could not be read: {_what_is_wrong(path, e)}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def _what_is_wrong(path: Path, e: Exception) -> str:
    """What a file ``torch.load`` failed on looks like: empty, a cut zip, text, other bytes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
    error = f"{type(e).__name__}: {str(e).splitlines()[0].split('. ')[0]}" if str(e) else type(e).__name__
    fix = "copy or download it again, or use another checkpoint"
    if size == 0:
        return f"it is empty (0 bytes); {fix}"
    if head.startswith(b"PK\x03\x04"):  # the zip format of PyTorch checkpoints
        return f"it is a zip archive of {size} bytes that is cut short or damaged ({error}); {fix}"
    if head.startswith(b"\x80"):  # a pickle: PyTorch's legacy format
        return f"it is a pickle of {size} bytes that cannot be read ({error}); {fix}"
    text = head.decode("utf-8", "replace")
    if any(c == "\ufffd" or (c < " " and c not in "\t\r\n") for c in text[:-3]):  # (a cut last character)
        return f"it is not a PyTorch checkpoint: its first bytes are {head[:16]!r} ({size} bytes); {fix}"
    return f"it is not a PyTorch checkpoint but text that starts with {text[:40]!r} ({size} bytes); {fix}"


# ----------------------------------------------------------------------------------
# restricted unpickling of third-party checkpoints


def _allowed_global(module: str, name: str):
    """The object a pickle may reference as ``module.name``, or None if it is not allowed."""
    if module in ("builtins", "__builtin__"):
        return {"set": set, "frozenset": frozenset, "complex": complex, "bytearray": bytearray}.get(name)
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    if (module, name) == ("_codecs", "encode"):  # how protocol 2 stores bytes
        return _codecs.encode
    if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
                                             "_rebuild_parameter", "_rebuild_parameter_with_state"):
        return getattr(tu, name)
    if module == "torch":
        if name in ("Size", "device"):
            return getattr(torch, name)
        value = vars(torch).get(name)  # no getattr: torch's lazy module loading is not triggered
        return value if isinstance(value, torch.dtype) else None
    if (module, name) == ("torch.torch_version", "TorchVersion"):
        return str
    if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy is a torch dependency in practice
            return None
        if module == "numpy":
            return {"ndarray": np.ndarray, "dtype": np.dtype}.get(name)
        # the functions numpy's own pickles call, taken from numpy rather than imported by name
        return {"_reconstruct": np.empty(0).__reduce__()[0], "scalar": np.float64(0).__reduce__()[0]}.get(name)
    return None


def _build_targets() -> tuple[type, ...]:
    targets: tuple[type, ...] = (torch.Tensor, collections.OrderedDict, UnloadedObject)
    try:
        import numpy as np

        targets += (np.ndarray, np.dtype, np.generic)
    except ImportError:  # pragma: no cover
        pass
    return targets


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler, so BUILD can be checked too
    """Unpickler that resolves only :func:`_allowed_global` names and stand-ins.

    Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``...) raises
    :class:`pickle.UnpicklingError` before anything is imported or called; ``BUILD``
    (setting an object's state) is allowed only on tensors, ``OrderedDict``, numpy
    values and stand-ins, so a pickle cannot patch a function or class either.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        value = _allowed_global(module, name)
        if value is not None:
            return value
        if module.split(".")[0] in STAND_IN_ROOTS:
            return stand_in(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")

    def load_build(self):
        inst = self.stack[-2]  # stack[-1] is the state BUILD will apply to it
        if not isinstance(inst, _build_targets()) or isinstance(inst, type):
            raise pickle.UnpicklingError(f"setting the state of a {type(inst).__name__} is not allowed")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def _restricted_pickle_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# what torch.load needs of a pickle module: an Unpickler class and a load function
restricted_pickle_module = types.SimpleNamespace(
    __name__="locdistill_restricted_pickle", Unpickler=RestrictedUnpickler, load=_restricted_pickle_load)


def restricted_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a third-party checkpoint whose metadata ``weights_only`` refuses, without running code.

    Raises :class:`CheckpointError` (naming the file and the refused global) when the
    pickle references anything outside the allow-list.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=False,
                          pickle_module=restricted_pickle_module)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} contains pickled Python objects that a safe load refuses ({e}): it could run "
            "code when loaded. Only tensors, numpy values and mmcv/mmengine metadata are read. If you trust "
            "the file, load it in the environment that wrote it and save only its state_dict "
            "(torch.save({'state_dict': ckpt['state_dict']}, 'clean.pth')), then run "
            "`locdistill convert clean.pth OUT.pth`"
        ) from e
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be read: {_what_is_wrong(path, e)}") from e


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


def checkpoint_num_classes(ckpt: Mapping) -> Optional[int]:
    """How many classes a checkpoint's detector predicts: its recorded class names, else the
    rows of its classifier (``bbox_head.gfl_cls.weight``, a bare state dict too), else None."""
    classes = checkpoint_classes(ckpt)
    if classes:
        return len(classes)
    try:
        state, _ = normalize_state_dict(extract_state_dict(ckpt))
    except CheckpointError:
        return None
    weight = state.get("bbox_head.gfl_cls.weight")
    return int(weight.shape[0]) if weight is not None else None


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
    model: nn.Module, ckpt: Mapping | str | os.PathLike, strict: bool = True, source: str | None = None,
    teacher_config: str = "",
) -> dict[str, list]:
    """Load weights into ``model``; with ``strict`` any key/shape difference is a clear error.

    ``teacher_config`` (the ``distill.teacher_config`` that built ``model``) makes the error's
    fix name a teacher config instead of ``--set model.…``, which would change the student.
    Returns the diff (empty lists when everything matched).
    """
    if not isinstance(ckpt, Mapping):
        source = source or str(ckpt)
        ckpt = load_checkpoint(ckpt)
    source = source or "checkpoint"
    sd = extract_state_dict(ckpt, source)
    # mmdetection 2.x/3.x, GFocalV2 and LD-repo layouts: drop teacher weights, fill fixed buffers
    sd, _ = normalize_state_dict(sd, own=model.state_dict())
    diff = state_dict_diff(model, sd)
    if diff["shape"] or (strict and (diff["missing"] or diff["unexpected"])):
        hint = ""
        cfg = ckpt.get("config") if isinstance(ckpt, Mapping) else None
        if isinstance(cfg, Mapping) and cfg.get("name"):
            hint = f" (it was trained with config '{cfg['name']}')"
        arch = mismatch_hint(model, sd, teacher_config=teacher_config)
        built_by = f"the teacher config {teacher_config}" if teacher_config else "the config"
        advice = ("Use the teacher config the checkpoint was trained with (its work dir holds it as config.py): "
                  "--set distill.teacher_config=PATH" if teacher_config else
                  "Use the config the checkpoint was trained with (a work dir holds it as config.py), "
                  "or check model.num_classes / backbone depth / head settings.")
        raise CheckpointError(
            f"{source} does not match the model built from {built_by}{hint}:\n{format_diff(diff)}\n"
            + (f"{arch}\n" if arch else "") + advice
        )
    sd = {k: v for k, v in sd.items() if k not in diff["unexpected"]}
    model.load_state_dict(sd, strict=strict)
    return diff


def inference_checkpoint(ckpt: Mapping) -> Mapping:
    """``ckpt`` as inference reads it: a training checkpoint written with ``train.ema`` holds the
    moving average of the weights as ``ckpt["ema"]["state_dict"]``, which then stands in for its raw
    ``"model"`` weights (kept for resuming); any other checkpoint is returned as it is."""
    ema = ckpt.get("ema")
    if isinstance(ema, Mapping) and isinstance(ema.get("state_dict"), Mapping):
        return {**ckpt, "model": ema["state_dict"]}
    return ckpt
