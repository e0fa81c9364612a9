"""Converting an ultralytics/yolov5 .pt, unpickled by ``yolov5_unpickler``, into this project's checkpoint dict;
every field it reads is checked for type and shape first, so a crafted file fails as one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.yolo import MAX_CLASSES
from utils.errors import UserError, one_line
from utils.training.checkpoint_fields import MAX_STATE_TENSORS, is_plain_yaml, tensor_problem
from utils.training.yolov5_unpickler import InertLayer, read_restricted

MAX_LAYER_PATHS = 100_000  # yolov5x has under 1,000 layers; shared layers in a crafted pickle could make 2**n names
MAX_LAYER_DEPTH = 32  # yolov5 nests layers 4 deep (model.2.m.0.cv1.conv)


class UnrecognisedField(Exception):
    """A pickled field of the wrong type or shape; ``convert_yolov5_checkpoint`` reports it with the file's path."""


def _is_layer(value: Any) -> bool:
    return isinstance(value, InertLayer)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    """A pickled dict with string keys (None reads as empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise UnrecognisedField(f"{ascii(where)} is not a dict of names")
    return value


def checked_tensor(value: Any, where: str) -> torch.Tensor:
    """``value`` detached, fp16 turned to float32, after checking that it is a weight (``tensor_problem``)."""
    problem = tensor_problem(value)
    if problem:
        raise UnrecognisedField(f"{ascii(where)} {problem}")
    value = value.detach()
    return value.float() if value.is_floating_point() else value


def _own_tensors(layer: InertLayer, prefix: str, room: int) -> dict[str, torch.Tensor]:
    """A layer's parameters and persistent buffers (not its children's), fp16 turned to float32; more than
    ``room`` of them (one tensor may be listed under any number of names) are refused."""
    non_persistent = layer.get("_non_persistent_buffers_set")
    non_persistent = set() if non_persistent is None else non_persistent
    if not isinstance(non_persistent, set | frozenset) or not all(isinstance(name, str) for name in non_persistent):
        raise UnrecognisedField(f"{ascii(prefix + '_non_persistent_buffers_set')} is not a set of names")
    buffers = _mapping(layer.get("_buffers"), f"{prefix}_buffers")
    named = [*_mapping(layer.get("_parameters"), f"{prefix}_parameters").items()]
    named += [(name, buffer) for name, buffer in buffers.items() if name not in non_persistent]
    if len(named) > room:
        raise UnrecognisedField(f"its layers hold more than {MAX_STATE_TENSORS} tensors")
    return {prefix + name: checked_tensor(tensor, prefix + name) for name, tensor in named if tensor is not None}


def layer_state_dict(root: InertLayer) -> dict[str, torch.Tensor]:
    """The state dict ``root`` had, in torch's order (a layer's own tensors, then its children's).

    A layer may appear under several names (yolov5 shares one SiLU), but a crafted pickle could make a layer its
    own descendant, nest layers without end, or share layers (or tensors) so that the names multiply; all are
    refused. Each layer's ancestors are at most MAX_LAYER_DEPTH ids, so the walk is linear in the number of names.
    """
    state: dict[str, torch.Tensor] = {}
    stack: list[tuple[InertLayer, str, tuple[int, ...]]] = [(root, "", ())]
    for _ in range(MAX_LAYER_PATHS):
        if not stack:
            return state
        layer, prefix, ancestors = stack.pop()
        if id(layer) in ancestors:
            raise UnrecognisedField(f"layer {ascii(prefix.rstrip('.'))} contains itself")
        if len(ancestors) >= MAX_LAYER_DEPTH:
            raise UnrecognisedField(f"layers are nested more than {MAX_LAYER_DEPTH} deep")
        state.update(_own_tensors(layer, prefix, MAX_STATE_TENSORS - len(state)))
        inside = (*ancestors, id(layer))
        children = _mapping(layer.get("_modules"), f"{prefix}_modules").items()
        stack.extend(reversed([(child, f"{prefix}{name}.", inside) for name, child in children if _is_layer(child)]))
    raise UnrecognisedField(f"more than {MAX_LAYER_PATHS} layers")


def _detect_layer(model: InertLayer, path: Path) -> tuple[str, InertLayer]:
    """(state-dict prefix, layer) of the model's last layer, which must be yolov5's Detect."""
    layers = model.children().get("model")
    children = layers.children() if _is_layer(layers) else {}
    last = list(children)[-1] if children else None
    if last is None or not _is_layer(children[last]) or not children[last].pickled_class.endswith(".Detect"):
        raise UserError(f"unrecognised yolov5 checkpoint {path}: its model does not end in a Detect layer")
    return f"model.{last}.", children[last]


def _anchors_in_pixels(anchors: Any, stride: torch.Tensor) -> list[list[float]]:
    """Detect's anchors, (levels, anchors, 2) in grid units, times its stride (levels,): one row per level."""
    if not isinstance(anchors, torch.Tensor) or anchors.dim() != 3 or anchors.shape[2] != 2:
        raise UnrecognisedField("Detect's anchors are not a (levels, anchors, 2) tensor")
    if tuple(stride.shape) != (anchors.shape[0],) or min(anchors.shape) == 0:
        raise UnrecognisedField(f"Detect's stride {tuple(stride.shape)} does not match its anchors")
    if not (stride.is_floating_point() and anchors.isfinite().all() and stride.isfinite().all() and (stride > 0).all()):
        raise UnrecognisedField("Detect's anchors or stride are not finite, positive numbers")
    pixels = anchors * stride.view(-1, 1, 1)
    return [[round(value, 4) for value in level] for level in pixels.flatten(1).tolist()]


def _num_classes(cfg: dict[str, Any], detect: InertLayer, state: dict[str, torch.Tensor], prefix: str) -> int:
    """The yaml's ``nc`` (or Detect's), which must be what Detect's output convolutions were made for."""
    num_classes = cfg.get("nc", detect.get("nc"))
    if type(num_classes) is not int or num_classes < 1:
        raise UnrecognisedField("nc is not a positive int")
    if num_classes > MAX_CLASSES:  # checked before the names or the model are made for that many
        raise UnrecognisedField(f"nc is {num_classes} classes; a model has at most {MAX_CLASSES}")
    outputs = state[prefix + "anchors"].shape[1] * (num_classes + 5)
    weights = [tensor for name, tensor in state.items() if name.startswith(f"{prefix}m.") and name.endswith(".weight")]
    if not weights or any(weight.dim() == 0 or weight.shape[0] != outputs for weight in weights):
        raise UnrecognisedField(f"Detect's convolutions do not output {num_classes} classes")
    return num_classes


def _class_names(names: Any, num_classes: int) -> list[str]:
    """yolov5 stores names as a list or as {index: name}; either becomes a list (index numbers when missing)."""
    if isinstance(names, dict) and all(type(key) is int and isinstance(name, str) for key, name in names.items()):
        return [names.get(index, str(index)) for index in range(num_classes)]
    if isinstance(names, list | tuple) and all(isinstance(name, str) for name in names):
        return list(names) if len(names) == num_classes else [str(index) for index in range(num_classes)]
    if names is None:
        return [str(index) for index in range(num_classes)]
    raise UnrecognisedField("names is neither a list of strings nor a dict of index -> string")


def _pickled_model(raw: Any, path: Path) -> InertLayer:
    """The EMA when present, as yolov5 prefers it, else the model; its yaml must be plain."""
    candidates = [raw.get("ema"), raw.get("model")] if isinstance(raw, dict) else []
    model = next((candidate for candidate in candidates if _is_layer(candidate)), None)
    if model is None or not isinstance(model.get("yaml"), dict):
        raise UserError(f"unrecognised checkpoint {path}: neither this project's nor a yolov5 model")
    if not is_plain_yaml(model.get("yaml")):
        raise UserError(f"unrecognised yolov5 checkpoint {path}: its model yaml holds more than yaml values")
    return model


def convert_yolov5_checkpoint(raw: Any, path: Path) -> dict[str, Any]:
    """This project's checkpoint dict (model_cfg, num_classes, names, model state dict) from an unpickled yolov5 one.

    ``model_cfg`` is the checkpoint's model yaml with its anchors replaced by the Detect layer's (AutoAnchor may
    have changed them); ``model`` holds Detect's ``stride`` beside yolov5's tensors, as this project's Detect keeps
    it as a buffer.
    """
    model = _pickled_model(raw, path)
    prefix, detect = _detect_layer(model, path)
    cfg = dict(model.get("yaml"))
    try:
        state = layer_state_dict(model)
        state[prefix + "stride"] = checked_tensor(detect.get("stride"), prefix + "stride")
        cfg["anchors"] = _anchors_in_pixels(state.get(prefix + "anchors"), state[prefix + "stride"])
        num_classes = _num_classes(cfg, detect, state, prefix)
        names = _class_names(model.get("names"), num_classes)
    except UnrecognisedField as error:
        raise UserError(f"unrecognised yolov5 checkpoint {path}: {error}") from None
    yaml_file = model.get("yaml_file")
    cfg.setdefault("cfg_name", Path(yaml_file if isinstance(yaml_file, str) and yaml_file else path.stem).stem)
    epoch = raw.get("epoch", -1)
    return {
        "model_cfg": cfg,
        "num_classes": num_classes,
        "names": names,
        "model": state,
        "epoch": epoch if type(epoch) is int else -1,
        "source": "yolov5",
    }


def read_yolov5_checkpoint(path: str | Path, data: bytes | None = None) -> dict[str, Any]:
    """Read a .pt written by ultralytics/yolov5 safely and convert it (see ``convert_yolov5_checkpoint``).

    ``data``: the file's bytes from ``read_pt_archive`` when the caller has read them already.
    """
    path = Path(path)
    raw = read_restricted(path, data)
    try:
        return convert_yolov5_checkpoint(raw, path)
    except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError, RuntimeError, MemoryError) as error:
        raise UserError(f"unrecognised yolov5 checkpoint {path}: {type(error).__name__}: {one_line(error)}") from None
