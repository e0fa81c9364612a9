"""Checks on the fields of a loaded checkpoint (types, sizes, nesting), so that a crafted file fails as one line
before any caller uses a field."""

from __future__ import annotations

import math
from typing import Any

import torch

from models.yolo import MAX_CLASSES
from utils.errors import printable

MAX_STATE_TENSORS = 100_000  # yolov5x6 has about 1,000; shared layers in a crafted pickle could name millions
MAX_YAML_DEPTH = 16  # the model yaml nests lists 4 deep
YAML_TYPES = (str, int, float, bool, type(None))


def is_plain_yaml(value: Any) -> bool:
    """True when ``value`` is a tree of what yaml.safe_load makes (dicts, lists, strings, finite numbers), nested
    at most MAX_YAML_DEPTH levels; a container reached twice (which could multiply the work of every later walk,
    or loop) is refused."""
    seen: set[int] = set()
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, YAML_TYPES):
            if isinstance(item, float) and not math.isfinite(item):
                return False
            continue
        if type(item) not in (dict, list) or depth >= MAX_YAML_DEPTH or id(item) in seen:
            return False
        seen.add(id(item))
        if type(item) is dict and not all(isinstance(key, str | int) for key in item):
            return False
        stack.extend((child, depth + 1) for child in (item.values() if type(item) is dict else item))
    return True


def tensor_problem(value: Any) -> str | None:
    """What makes ``value`` unfit as a weight, or None: a weight is a dense, real (not quantized or complex) CPU
    tensor with no more elements than its storage (an expanded one would allocate them all when converted)."""
    if not isinstance(value, torch.Tensor):
        return f"is a {type(value).__name__}, not a tensor"
    if value.is_quantized:
        return f"is a quantized {value.dtype} tensor"
    if value.is_complex() or value.layout != torch.strided or value.device.type != "cpu":
        return f"is a {value.dtype} {value.layout} tensor on {value.device}"
    available = value.untyped_storage().nbytes() - value.storage_offset() * value.element_size()
    if value.numel() * value.element_size() > available:
        return "has more elements than its storage holds"
    return None


def state_dict_problem(state: Any, field: str) -> str | None:
    """What is wrong with ``state`` as a state dict (names -> weights), or None."""
    if not isinstance(state, dict) or not all(isinstance(name, str) for name in state):
        return f"{field} must map parameter names to tensors"
    if len(state) > MAX_STATE_TENSORS:
        return f"{field} holds more than {MAX_STATE_TENSORS} tensors"
    for name, value in state.items():
        problem = tensor_problem(value)
        if problem:
            return f"{field} {ascii(name)} {problem}"
    return None


def _is_option(key: Any, value: Any) -> bool:
    """What train.py records of an option: a name, and a yaml scalar or a list of them."""
    scalar = isinstance(value, YAML_TYPES)
    return isinstance(key, str) and (scalar or (type(value) is list and all(isinstance(v, YAML_TYPES) for v in value)))


def _type_name(value: Any) -> str:
    return printable(repr(value), 60) if isinstance(value, YAML_TYPES) else f"a {type(value).__name__}"


def field_problem(checkpoint: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's fields (a dict saved by hand, or crafted), or None: the required ones and
    those that val.py, detect.py and train.py read (names, single_cls, epoch)."""
    classes, cfg = checkpoint["num_classes"], checkpoint["model_cfg"]
    if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= MAX_CLASSES:
        return f"num_classes must be a whole number from 1 to {MAX_CLASSES}, got {_type_name(classes)}"
    problem = state_dict_problem(checkpoint["model"], "model")
    if problem:
        return problem
    if not isinstance(cfg, str | dict):
        return f"model_cfg must be a model yaml's name or its contents, got {_type_name(cfg)}"
    if isinstance(cfg, dict) and not is_plain_yaml(cfg):
        return f"model_cfg holds more than yaml values, or values nested more than {MAX_YAML_DEPTH} deep"
    names = checkpoint.get("names")
    if names is not None and (
        not isinstance(names, list | tuple) or len(names) != classes or not all(isinstance(n, str) for n in names)
    ):
        return f"names must be a list of {classes} strings, got {_type_name(names)}"
    if checkpoint.get("single_cls") is not None and not isinstance(checkpoint["single_cls"], bool):
        return f"single_cls must be true or false, got {_type_name(checkpoint['single_cls'])}"
    if checkpoint.get("epoch") is not None and type(checkpoint["epoch"]) is not int:
        return f"epoch must be a whole number, got {_type_name(checkpoint['epoch'])}"
    return None


# What resuming reads beyond the model, each None or of these types
RESUME_FIELDS = {"optimizer": dict, "scheduler": dict, "ema_updates": int, "best_fitness": int | float}


def resume_problem(checkpoint: dict[str, Any]) -> str | None:
    """What stops a last.pt's training state from being resumed (beyond ``field_problem``), or None."""
    options = checkpoint.get("options")
    if not isinstance(options, dict) or not all(_is_option(key, value) for key, value in options.items()):
        return "its options are not a dict of yaml scalars and lists of them"
    if type(options.get("epochs")) is not int or options["epochs"] < 1:
        return f"its options' epochs must be a whole number >= 1, got {_type_name(options.get('epochs'))}"
    if type(checkpoint.get("epoch")) is not int or not isinstance(checkpoint.get("hyp"), dict):
        return "its epoch is not a whole number or its hyp not a dict"
    problem = state_dict_problem(checkpoint.get("training_model"), "training_model")
    if problem is None and checkpoint.get("ema") is not None:
        problem = state_dict_problem(checkpoint["ema"], "ema")
    if problem:
        return problem
    for field, kinds in RESUME_FIELDS.items():
        value = checkpoint.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            return f"its {field} is {_type_name(value)}"
    return None
