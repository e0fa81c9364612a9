"""Checkpoints: atomic saving, safe loading (weights-only, or yolov5's restricted), rebuilding models and
transferring weights."""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.yolo import DetectionModel, build_model
from utils.errors import UserError, one_line
from utils.files import atomic_path
from utils.training.checkpoint_fields import field_problem
from utils.training.pt_archive import read_pt_archive
from utils.training.yolov5_checkpoint import read_yolov5_checkpoint

REQUIRED_KEYS = ("model_cfg", "num_classes", "model")
# how torch.load's messages say weights-only refused a global (blocked modules lack the "WeightsUnpickler" part)
REFUSED_MARKERS = ("WeightsUnpickler", "Weights only load failed")
SAFE_TYPES = (torch.Tensor, str, int, float, bool, type(None))


def _plain(value: Any, where: str) -> Any:
    """Return ``value`` made of types ``torch.load(weights_only=True)`` accepts, or raise TypeError naming it."""
    if isinstance(value, np.generic):  # checked first: np.float64 is also a float, yet weights-only refuses it
        return value.item()
    if isinstance(value, SAFE_TYPES):
        return value
    if isinstance(value, dict):
        return type(value)((key, _plain(item, f"{where}.{key}")) for key, item in value.items())
    if isinstance(value, list | tuple):
        return type(value)(_plain(item, f"{where}[{index}]") for index, item in enumerate(value))
    raise TypeError(f"checkpoint field {where} has type {type(value).__name__}, which weights-only loading refuses")


def float_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict detached on the CPU, with floating tensors in float32 (for portable checkpoints)."""
    return {
        name: (tensor.detach().float() if tensor.is_floating_point() else tensor.detach()).cpu()
        for name, tensor in model.state_dict().items()
    }


def save_checkpoint(path: str | Path, **fields: Any) -> Path:
    """Write ``fields`` as a checkpoint dict; a temporary file then a rename, so readers never see half a file."""
    path = Path(path)
    checkpoint = _plain(fields, "checkpoint")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        torch.save(checkpoint, temporary)
    return path


def _reason(error: Exception) -> str:
    """The informative line of a (often multi-line) torch.load error."""
    for line in str(error).splitlines():
        if line.strip().startswith("WeightsUnpickler error:"):
            return one_line(line.strip().removeprefix("WeightsUnpickler error:"))
    return one_line(error) or type(error).__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU; any problem raises a one-line UserError.

    A checkpoint written by ``save_checkpoint`` loads weights-only; one written by ultralytics/yolov5 is read by
    ``read_yolov5_checkpoint``'s restricted unpickler and converted to the same keys. The file is read and vetted
    once (``read_pt_archive``, which bounds its pickle); both loads unpickle those same bytes. The fields callers
    read are checked (``field_problem``) before the checkpoint is returned.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    data = read_pt_archive(path)
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not any(word in str(error) for word in REFUSED_MARKERS):  # garbage, not a pickle weights-only refused
            raise UserError(f"corrupt or unreadable checkpoint {path}: {_reason(error)}") from None
        # weights-only refused a Python object: a yolov5 .pt pickles its model; read it without running anything
        checkpoint = read_yolov5_checkpoint(path, data)
    except Exception as error:  # torch.load fails on corrupt bytes with many exception types (IndexError, ...)
        raise UserError(f"corrupt or unreadable checkpoint {path}: {_reason(error)}") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"unrecognised checkpoint {path}: expected a dict, got {type(checkpoint).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise UserError(f"unrecognised checkpoint {path}: missing {', '.join(missing)}")
    problem = field_problem(checkpoint)
    if problem:
        raise UserError(f"unrecognised checkpoint {path}: {problem}")
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any]) -> DetectionModel:
    """Rebuild the model a checkpoint describes and load its weights; returned in eval mode, float32, on CPU."""
    model = build_model(checkpoint["model_cfg"], int(checkpoint["num_classes"]))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise UserError(f"checkpoint weights do not fit its model cfg: {one_line(error)}") from None
    return model.float().eval()


def transfer_weights(
    model: nn.Module, state_dict: dict[str, torch.Tensor], exclude: Iterable[str] = ()
) -> tuple[int, int]:
    """Copy every tensor of ``state_dict`` whose name and shape match one of ``model``'s.

    Names containing any ``exclude`` substring (e.g. "anchors") are skipped. Returns (loaded, skipped), both
    counted over ``state_dict`` entries.
    """
    matched = matching_tensors(model, state_dict, exclude)
    model.load_state_dict(matched, strict=False)
    return len(matched), len(state_dict) - len(matched)


def matching_tensors(
    model: nn.Module, state_dict: dict[str, torch.Tensor], exclude: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """The tensors of ``state_dict`` that ``transfer_weights`` copies: name and shape match, no ``exclude`` word."""
    exclude = tuple(exclude)
    own = model.state_dict()
    return {
        name: tensor
        for name, tensor in state_dict.items()
        if name in own and own[name].shape == tensor.shape and not any(word in name for word in exclude)
    }
