"""Converting an ultralytics/yolov5 .pt, unpickled by ``yolov5_unpickler``, into this project's checkpoint dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError, one_line
from utils.training.yolov5_unpickler import InertLayer, read_restricted

MAX_LAYER_PATHS = 100_000  # yolov5x has under 1,000 layers; shared layers in a crafted pickle could make 2**n names


def _own_tensors(layer: InertLayer, prefix: str) -> dict[str, torch.Tensor]:
    """A layer's parameters and persistent buffers (not its children's), fp16 turned to float32."""
    non_persistent = layer.get("_non_persistent_buffers_set") or set()
    named = [*(layer.get("_parameters") or {}).items()]
    named += [(name, buffer) for name, buffer in (layer.get("_buffers") or {}).items() if name not in non_persistent]
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in named:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"yolov5 checkpoint: {prefix}{name} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach()
        tensors[prefix + name] = tensor.float() if tensor.is_floating_point() else tensor
    return tensors


def layer_state_dict(root: InertLayer) -> dict[str, torch.Tensor]:
    """The state dict ``root`` had, in torch's order (a layer's own tensors, then its children's).

    A layer may appear under several names (yolov5 shares one SiLU), but a crafted pickle could make a layer its
    own descendant, or share layers so that the names multiply; both are refused instead of running forever.
    """
    state: dict[str, torch.Tensor] = {}
    stack: list[tuple[InertLayer, str, frozenset[int]]] = [(root, "", frozenset())]
    for _ in range(MAX_LAYER_PATHS):
        if not stack:
            return state
        layer, prefix, ancestors = stack.pop()
        if id(layer) in ancestors:
            raise UserError(f"yolov5 checkpoint: layer {prefix.rstrip('.')} contains itself")
        state.update(_own_tensors(layer, prefix))
        inside = ancestors | {id(layer)}
        children = [(child, f"{prefix}{name}.", inside) for name, child in layer.children().items()]
        stack.extend(reversed([child for child in children if isinstance(child[0], InertLayer)]))
    raise UserError(f"yolov5 checkpoint: more than {MAX_LAYER_PATHS} layers")


def _detect_layer(model: InertLayer, path: Path) -> tuple[str, InertLayer]:
    """(state-dict prefix, layer) of the model's last layer, which must be yolov5's Detect."""
    layers = model.children().get("model")
    children = layers.children() if isinstance(layers, InertLayer) else {}
    last = list(children)[-1] if children else None
    if last is None or not children[last].pickled_class.endswith(".Detect"):
        raise UserError(f"unrecognised yolov5 checkpoint {path}: its model does not end in a Detect layer")
    return f"model.{last}.", children[last]


def _class_names(names: Any, num_classes: int) -> list[str]:
    """yolov5 stores names as a list or as {index: name}; either becomes a list."""
    if isinstance(names, dict):
        names = [names.get(index, str(index)) for index in range(num_classes)]
    if not isinstance(names, list | tuple) or len(names) != num_classes:
        return [str(index) for index in range(num_classes)]
    return [str(name) for name in names]


def convert_yolov5_checkpoint(raw: Any, path: Path) -> dict[str, Any]:
    """This project's checkpoint dict (model_cfg, num_classes, names, model state dict) from an unpickled yolov5 one.

    The model is the EMA when present, as yolov5 prefers it. ``model_cfg`` is the checkpoint's model yaml with its
    anchors replaced by the Detect layer's (AutoAnchor may have changed them); ``model`` holds Detect's ``stride``
    beside yolov5's tensors, as this project's Detect keeps it as a buffer.
    """
    model = (raw.get("ema") or raw.get("model")) if isinstance(raw, dict) else None
    if not isinstance(model, InertLayer) or not isinstance(model.get("yaml"), dict):
        raise UserError(f"unrecognised checkpoint {path}: neither this project's nor a yolov5 model")
    prefix, detect = _detect_layer(model, path)
    state = layer_state_dict(model)
    stride = detect.get("stride")
    anchors = state.get(prefix + "anchors")
    if not isinstance(stride, torch.Tensor) or anchors is None:
        raise UserError(f"unrecognised yolov5 checkpoint {path}: its Detect layer has no stride or anchors")
    state[prefix + "stride"] = stride.detach().float()
    anchors_pixels = anchors * state[prefix + "stride"].view(-1, 1, 1)  # yolov5 keeps them in grid units
    cfg = dict(model.get("yaml"))
    num_classes = int(cfg.get("nc", detect.get("nc", 0)))
    cfg["anchors"] = [[round(value, 4) for value in level] for level in anchors_pixels.flatten(1).tolist()]
    cfg.setdefault("cfg_name", Path(str(model.get("yaml_file") or path.stem)).stem)
    return {
        "model_cfg": cfg,
        "num_classes": num_classes,
        "names": _class_names(model.get("names"), num_classes),
        "model": state,
        "epoch": raw.get("epoch", -1),
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
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as error:  # pickled fields of odd types
        raise UserError(f"unrecognised yolov5 checkpoint {path}: {type(error).__name__}: {one_line(error)}") from None
