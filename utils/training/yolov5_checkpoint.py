"""Reading ultralytics/yolov5 .pt files without running their pickle: a restricted unpickler that rebuilds tensors
and plain containers, stands inert placeholders in for yolov5's layer classes, and converts the result into this
project's checkpoint dict."""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import SimpleNamespace
from typing import Any

import torch

from utils.errors import UserError
from utils.training.pt_archive import read_pt_archive

# The only callables a yolov5 pickle may name. Each builds a tensor or an inert value and runs no other code.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    # yolov5 records paths in its options; pure paths never touch the file system
    ("pathlib", "PosixPath"): PurePosixPath,
    ("pathlib", "PurePosixPath"): PurePosixPath,
    ("pathlib", "WindowsPath"): PureWindowsPath,
    ("pathlib", "PureWindowsPath"): PureWindowsPath,
}
# Classes under these modules are layers (yolov5's own, torch's); they become placeholders and are never imported.
LAYER_MODULES = ("models.", "torch.nn.modules.")
MAX_LAYER_PATHS = 100_000  # yolov5x has under 1,000 layers; shared layers in a crafted pickle could make 2**n names


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that is neither allowed nor a layer class; ``name`` is "module.attribute"."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not allowed")
        self.name = name


class InertLayer:
    """Stands in for a pickled layer: keeps the state the pickle gives it and runs none of the class's code.

    ``pickled_class`` ("models.yolo.Detect") is set on the subclass made for each pickled class name.
    """

    pickled_class = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}

    def get(self, key: str, default: Any = None) -> Any:
        """An attribute of the pickled object (its ``__dict__`` entry), or ``default``."""
        return getattr(self, "state", {}).get(key, default)

    def children(self) -> dict[str, Any]:
        """The pickled ``_modules``: child name -> InertLayer."""
        return dict(self.get("_modules") or {})


def is_layer_class(module: str, name: str) -> bool:
    """True for class names under yolov5's ``models`` or torch's ``torch.nn.modules`` packages."""
    parts = [*module.split("."), name]
    return module.startswith(LAYER_MODULES) and all(part.isidentifier() for part in parts)


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` returns only ALLOWED_GLOBALS or InertLayer subclasses; it imports nothing.

    torch.load subclasses it (to map storage names to storage types) and sets ``persistent_load``, which only
    reads tensor bytes from the archive; every other global goes through this ``find_class``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._layer_classes: dict[str, type[InertLayer]] = {}

    def find_class(self, module: str, name: str) -> Any:
        # torch.save writes protocol 2, which spells some globals the Python 2 way (__builtin__, commands)
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        qualified = f"{module}.{name}"
        if not is_layer_class(module, name):
            raise RefusedGlobal(qualified)
        if qualified not in self._layer_classes:
            self._layer_classes[qualified] = type(name, (InertLayer,), {"pickled_class": qualified})
        return self._layer_classes[qualified]


def _refuse_legacy_load(*args: Any, **kwargs: Any) -> None:
    raise pickle.UnpicklingError("only zip-format checkpoints are read")


# What torch.load expects of a pickle module: an Unpickler class, and load() for the legacy format (refused).
RESTRICTED_PICKLE = SimpleNamespace(
    __name__="restricted_pickle", Unpickler=RestrictedUnpickler, load=_refuse_legacy_load
)


def read_restricted(path: str | Path, data: bytes | None = None) -> Any:
    """Unpickle a zip-format .pt with RestrictedUnpickler; a refused global or a broken file is a UserError.

    ``data`` is the file's content from ``read_pt_archive`` when the caller has read it already; otherwise the
    file is read (once) here.
    """
    path = Path(path)
    data = read_pt_archive(path) if data is None else data
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", pickle_module=RESTRICTED_PICKLE, weights_only=False)
    except RefusedGlobal as error:
        raise UserError(
            f"refusing to load {path}: it needs {error.name}, which is neither a tensor, a plain container nor a "
            "yolov5 layer"
        ) from None
    except Exception as error:  # corrupt archives fail in many ways; a placeholder called with arguments, too
        raise UserError(f"corrupt or unreadable checkpoint {path}: {type(error).__name__}: {error}") from None


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
        raise UserError(f"unrecognised yolov5 checkpoint {path}: {type(error).__name__}: {error}") from None
