"""The restricted unpickler for ultralytics/yolov5 .pt files: it rebuilds tensors and plain containers, stands inert
placeholders in for layer classes, and gives a pickle nothing it could alter beyond the object it is building."""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import SimpleNamespace
from typing import Any

import torch

from utils.errors import UserError, one_line
from utils.training.pickle_scan import tensor_extent_problem
from utils.training.pt_archive import read_pt_archive

# Immutable C types may be returned as they are; a pickle cannot set attributes on them.
SHARED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}
# yolov5 records paths in its options; they come back as plain strings and never touch the file system
PATH_GLOBALS = {
    "PosixPath": PurePosixPath,
    "PurePosixPath": PurePosixPath,
    "WindowsPath": PureWindowsPath,
    "PureWindowsPath": PureWindowsPath,
}
# Classes under these modules are layers (yolov5's own, torch's); they become placeholders and are never imported.
LAYER_MODULES = ("models.", "torch.nn.modules.")


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that is neither allowed nor a layer class; ``name`` is "module.attribute"."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{ascii(name)} is not allowed")
        self.name = name


class InertLayer:
    """Stands in for a pickled layer: keeps the state the pickle gives it and runs none of the class's code.

    ``pickled_class`` ("models.yolo.Detect") is set on the subclass made for each pickled class name, per load.
    """

    pickled_class = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}

    def get(self, key: str, default: Any = None) -> Any:
        """An attribute of the pickled object (its ``__dict__`` entry), or ``default``."""
        return getattr(self, "state", {}).get(key, default)

    def children(self) -> dict[str, Any]:
        """The pickled ``_modules``: child name -> InertLayer (anything but a dict reads as no children)."""
        modules = self.get("_modules")
        return dict(modules) if isinstance(modules, dict) else {}


def is_layer_class(module: str, name: str) -> bool:
    """True for class names under yolov5's ``models`` or torch's ``torch.nn.modules`` packages."""
    parts = [*module.split("."), name]
    return module.startswith(LAYER_MODULES) and all(part.isidentifier() for part in parts)


def _empty(value: Any) -> bool:
    """None or an empty dict: what torch.save writes for hooks and metadata (tested without a tensor's __bool__)."""
    return value is None or (type(value) in (dict, collections.OrderedDict) and len(value) == 0)


def rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, *more: Any):
    """torch's ``_rebuild_tensor_v2`` after checking its arguments: a storage from the archive, a view that stays
    inside it and holds no more elements than it (``tensor_extent_problem``), and no hooks or tensor metadata
    (torch.save writes none for plain tensors)."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"a tensor is built on a {type(storage).__name__}, not a storage")
    size, stride = (tuple(value) if isinstance(value, torch.Size) else value for value in (size, stride))
    problem = tensor_extent_problem(storage._size(), offset, size, stride)  # _size: size() warns of deprecation
    if problem:
        raise pickle.UnpicklingError(problem)
    if type(requires_grad) is not bool or not all(map(_empty, (hooks, *more))):
        raise pickle.UnpicklingError("a tensor has requires_grad that is not a bool, hooks or metadata")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, collections.OrderedDict())


def rebuild_parameter(data: Any, requires_grad: Any, hooks: Any, *more: Any) -> torch.nn.Parameter:
    """torch's ``_rebuild_parameter`` for a tensor without hooks."""
    if not isinstance(data, torch.Tensor) or type(requires_grad) is not bool or not _empty(hooks) or more:
        raise pickle.UnpicklingError("a parameter is not a plain tensor")
    return torch.nn.Parameter(data, requires_grad)


def _fresh_callables() -> dict[tuple[str, str], Any]:
    """The callables a pickle may name, made anew for each load: nothing a pickle does to them reaches another load
    (or the real torch functions, whose ``__defaults__`` a shared object would expose)."""

    def fresh_rebuild_tensor(*args: Any) -> torch.Tensor:
        return rebuild_tensor(*args)

    def fresh_rebuild_parameter(*args: Any) -> torch.nn.Parameter:
        return rebuild_parameter(*args)

    callables = {
        ("torch._utils", "_rebuild_tensor_v2"): fresh_rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): fresh_rebuild_parameter,
    }
    for name, path_class in PATH_GLOBALS.items():

        def path_string(*parts: Any, path_class: type = path_class) -> str:
            if not all(isinstance(part, str) for part in parts):
                raise pickle.UnpicklingError("a path has a part that is not a string")
            return str(path_class(*parts))

        callables[("pathlib", name)] = path_string
    return callables


def _load_build(unpickler: RestrictedUnpickler) -> None:
    """BUILD (set an object's state) for layer placeholders only: on anything else (a function, a class) it would
    set attributes that outlive the load."""
    state = unpickler.stack.pop()
    target = unpickler.stack[-1]
    if not isinstance(target, InertLayer):
        raise pickle.UnpicklingError(f"the pickle sets the state of a {type(target).__name__}; only layers have one")
    InertLayer.__setstate__(target, state)


class RestrictedUnpickler(pickle._Unpickler):
    """An Unpickler whose ``find_class`` returns only fresh callables, immutable containers or per-load InertLayer
    subclasses; it imports nothing, and its BUILD sets state on layer placeholders only.

    It is the pure-Python unpickler, the one whose opcodes can be overridden. torch.load subclasses it (to map
    storage names to storage types) and sets ``persistent_load``, which only reads tensor bytes from the archive.
    """

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: _load_build}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._layer_classes: dict[str, type[InertLayer]] = {}
        self._callables = _fresh_callables()

    def find_class(self, module: str, name: str) -> Any:
        # torch.save writes protocol 2, which spells some globals the Python 2 way (__builtin__, commands)
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in SHARED_GLOBALS:
            return SHARED_GLOBALS[(module, name)]
        if (module, name) in self._callables:
            return self._callables[(module, name)]
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
            f"refusing to load {path}: it needs {ascii(error.name)}, which is neither a tensor, a plain container "
            "nor a yolov5 layer"
        ) from None
    except Exception as error:  # corrupt archives fail in many ways; a placeholder called with arguments, too
        detail = ": ".join(filter(None, (type(error).__name__, one_line(error))))
        raise UserError(f"corrupt or unreadable checkpoint {path}: {detail}") from None
