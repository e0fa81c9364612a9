"""Hostile checkpoint files, built here: each makes val.py, detect.py or train.py exit with one ``error:`` line and
no traceback, within a time and a memory limit, before any unbounded work; real checkpoints still load under the
same limits. Every case runs in a subprocess, so that a crash or a hang fails its test instead of the test run."""

from __future__ import annotations

import pickle
import resource
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml

from models.yolo import build_model
from tests.test_yolov5_checkpoint import YOLOV5_PT, yolov5_like_model
from tests.test_yolov5_unpickler import PROTO, tensor_pickle, text
from utils.errors import USER_ERROR_EXIT_CODE
from utils.training.checkpoint import float_state_dict, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# RLIMIT_DATA, not RLIMIT_AS: torch's CUDA libraries map more address space than this, yet hold little data
MEMORY_LIMIT = 3 << 30
TIME_LIMIT = 60  # seconds per case; a refusal spends most of its time importing torch
LOAD = (
    "import sys; from utils.errors import run_cli; "
    "from utils.training.checkpoint import load_checkpoint, model_from_checkpoint; "
    "sys.exit(run_cli(lambda: print(model_from_checkpoint(load_checkpoint(sys.argv[1])).num_classes)))"
)
TRAIN_ARGS = ["--img", "64", "--batch", "4", "--epochs", "1", "--workers", "0", "--device", "cpu"]


@dataclass(frozen=True)
class Inputs:
    """What a case may build on: the tiny checkpoint (this project's format) and the tiny dataset's yaml."""

    checkpoint: Path
    data: Path


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_limited(*args: str) -> subprocess.CompletedProcess:
    """``python *args`` from the project root under the memory limit; past TIME_LIMIT it is killed and the test
    fails (subprocess.TimeoutExpired)."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=TIME_LIMIT, cwd=ROOT, preexec_fn=limit_memory
    )


def assert_one_error_line(result: subprocess.CompletedProcess, needle: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == USER_ERROR_EXIT_CODE, f"exit {result.returncode}: {output[-3000:]}"
    assert "Traceback" not in output and "<traceback object" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1, output[-3000:]
    assert needle in errors[0], errors[0]


# --- building hostile files ------------------------------------------------------------------------------------------


def write_stored_pt(path: Path, data_pkl: bytes, records: dict[str, bytes] | None = None) -> Path:
    """A zip-format .pt as torch.save lays it out (stored records under ``archive/``), around ``data_pkl``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, content in {"data.pkl": data_pkl, "version": b"3\n", **(records or {})}.items():
            archive.writestr(f"archive/{name}", content)
    return path


LAYER_PREFIX = b"cmodels.yolo\nDetect\n0"  # a layer global, dropped: weights-only refuses, the restricted reader runs


def one_tensor(size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """The opcodes of one _rebuild_tensor_v2 call on a 1-element FloatStorage (record data/0)."""
    return tensor_pickle(size=size, stride=stride, numel=1)[2:-1]


def stride0_set(path: Path, given: Inputs) -> list[str]:
    """set() over a billion-element view of one float: torch's weights-only load iterates it."""
    data_pkl = PROTO + b"cbuiltins\nset\n(" + one_tensor((10**9,), (0,)) + b"tR."
    return ["val.py", "--weights", str(write_stored_pt(path, data_pkl, {"data/0": bytes(4)})), "--device", "cpu"]


def stride0_ordered_dict(path: Path, given: Inputs) -> list[str]:
    """OrderedDict() over a billion pairs viewing one float: the restricted reader iterates it."""
    data_pkl = PROTO + LAYER_PREFIX + b"ccollections\nOrderedDict\n(" + one_tensor((10**9, 2), (0, 0)) + b"tR."
    return ["val.py", "--weights", str(write_stored_pt(path, data_pkl, {"data/0": bytes(4)})), "--device", "cpu"]


def repeated_huge_size(path: Path, given: Inputs) -> list[str]:
    """A 4000-bit size, memoised and repeated 20,000 times: multiplying the sizes out takes hours."""
    huge = b"\x8b" + struct.pack("<i", 500) + b"\x01" * 500 + b"q\x01"  # LONG4, then memoised as 1
    size, stride = b"(" + huge + b"h\x01" * 19_999 + b"t", b"(" + b"K\x00" * 20_000 + b"t"
    storage = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu") + b"K\x01tQ"
    call = b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K\x00" + size + stride + b"\x89N" + b"tR."
    data_pkl = PROTO + LAYER_PREFIX + call
    return ["val.py", "--weights", str(write_stored_pt(path, data_pkl, {"data/0": bytes(4)})), "--device", "cpu"]


def deep_tuple_key(path: Path, given: Inputs) -> list[str]:
    """A dict key that is a tuple nested 500,000 deep: hashing it recurses in C until the stack overflows."""
    data_pkl = b"\x80\x02}" + b")" + b"\x85" * 500_000 + b"Ns."
    return ["val.py", "--weights", str(write_stored_pt(path, data_pkl)), "--device", "cpu"]


def inst_opcode(path: Path, given: Inputs) -> list[str]:
    """INST (protocol 0's class call) of a layer with an argument: pickle's error wraps a traceback object."""
    data_pkl = PROTO + b"(K\x01imodels.yolo\nDetect\n."
    return ["val.py", "--weights", str(write_stored_pt(path, data_pkl)), "--device", "cpu"]


def deflated_record(path: Path, given: Inputs) -> list[str]:
    """A 64 MiB storage deflated into about 64 KB (torch.save writes stored records only)."""
    numel = struct.pack("<i", 2**24)
    storage = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu") + b"J" + numel + b"tQ"
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K\x00J" + numel + b"\x85K\x01\x85\x89N" + b"tR"
    records = {"data.pkl": PROTO + b"}" + text("model") + tensor + b"s.", "version": b"3\n", "data/0": bytes(2**26)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in records.items():
            archive.writestr(f"archive/{name}", content)
    return ["-c", LOAD, str(path)]


class PurePickler(pickle._Pickler):
    """The pure-Python pickler: a deeply nested value needs no C recursion to be written."""


def save_pure(obj: object, path: Path) -> Path:
    torch.save(obj, path, pickle_module=SimpleNamespace(__name__="pure_pickle", Pickler=PurePickler))
    return path


def resaved_checkpoint(original: Path, path: Path, **changes: object) -> Path:
    """``original`` (a checkpoint in this project's format) with ``changes``, saved as torch.save does."""
    checkpoint = torch.load(original, weights_only=True)
    checkpoint.update(changes)
    torch.save(checkpoint, path)
    return path


def many_classes(path: Path, given: Inputs) -> list[str]:
    """A yolov5 Detect of 8 million classes with empty weights: the class names alone are 8 million strings."""
    classes = 8_000_000
    root = yolov5_like_model({"nc": classes})
    detect = root.model[0]
    detect.m[0].weight = torch.nn.Parameter(torch.empty(2 * (classes + 5), 0, 1, 1))
    detect.m[0].bias = None
    torch.save({"model": root}, path)
    return ["val.py", "--weights", str(path), "--device", "cpu"]


def many_state_names(path: Path, given: Inputs) -> list[str]:
    """One layer with 2,000 names for one parameter, reached under 500 names: a million state dict entries."""
    root = yolov5_like_model({"nc": 2})
    layer, weight = torch.nn.Module(), torch.nn.Parameter(torch.zeros(1))
    for index in range(2000):
        layer.register_parameter(f"w{index}", weight)
    for index in range(500):
        root.add_module(f"s{index}", layer)
    torch.save({"model": root}, path)
    return ["val.py", "--weights", str(path), "--device", "cpu"]


def huge_multiple(key: str, value: float) -> Callable[[Path, Inputs], list[str]]:
    """The tiny checkpoint with its model yaml's ``key`` (depth_multiple, width_multiple) set to ``value``."""

    def build(path: Path, given: Inputs) -> list[str]:
        cfg = torch.load(given.checkpoint, weights_only=True)["model_cfg"]
        resaved_checkpoint(given.checkpoint, path, model_cfg={**cfg, key: value})
        return ["val.py", "--weights", str(path), "--device", "cpu"]

    return build


def deep_model_cfg(path: Path, given: Inputs) -> list[str]:
    """A model yaml whose backbone nests 5,000 lists deep; train.py compares it with the built-in yamls."""
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    checkpoint = torch.load(given.checkpoint, weights_only=True)
    checkpoint["model_cfg"] = {**checkpoint["model_cfg"], "backbone": deep}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)
    try:
        save_pure(checkpoint, path)
    finally:
        sys.setrecursionlimit(limit)
    return ["train.py", "--weights", str(path), *TRAIN_ARGS]


def quantized_weight(path: Path, given: Inputs) -> list[str]:
    """A QInt8 tensor as the first convolution's weight: transferring it into a float model fails."""
    state = torch.load(given.checkpoint, weights_only=True)["model"]
    name = "model.0.conv.weight"
    state[name] = torch.quantize_per_tensor(state[name], 0.1, 0, torch.qint8)
    resaved_checkpoint(given.checkpoint, path, model=state)
    project = path.parent / "runs"
    return ["train.py", "--weights", str(path), "--data", str(given.data), *TRAIN_ARGS, "--project", str(project)]


def tensor_names(path: Path, given: Inputs) -> list[str]:
    """Class names saved as a tensor: detect.py takes their truth value."""
    resaved_checkpoint(given.checkpoint, path, names=torch.arange(8))
    image = path.parent / "image.jpg"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    return ["detect.py", "--weights", str(path), "--source", str(image), "--device", "cpu", "--nosave"]


def tensor_single_cls(path: Path, given: Inputs) -> list[str]:
    """single_cls saved as a two-element tensor: val.py takes its truth value."""
    resaved_checkpoint(given.checkpoint, path, single_cls=torch.ones(2))
    return ["val.py", "--weights", str(path), "--device", "cpu"]


def string_epochs(path: Path, given: Inputs) -> list[str]:
    """A last.pt to resume whose recorded options say epochs: '10' (and its opt.yaml agrees)."""
    state = torch.load(given.checkpoint, weights_only=True)["model"]
    options = {"data": "shapes.yaml", "cfg": "yolov5n.yaml", "epochs": "10"}
    weights = path.parent / "exp" / "weights"
    weights.mkdir(parents=True)
    (weights.parent / "opt.yaml").write_text(yaml.safe_dump(options))
    last = resaved_checkpoint(given.checkpoint, weights / "last.pt", training_model=state, options=options, hyp={})
    return ["train.py", "--resume", str(last), "--device", "cpu"]


def forged_cfg_name(path: Path, given: Inputs) -> list[str]:
    """A model yaml without its head, named with a newline and a fake second error line."""
    cfg = torch.load(given.checkpoint, weights_only=True)["model_cfg"]
    cfg = {key: value for key, value in cfg.items() if key != "head"}
    resaved_checkpoint(given.checkpoint, path, model_cfg={**cfg, "cfg_name": "evil\nerror: all good"})
    return ["val.py", "--weights", str(path), "--device", "cpu"]


CASES = {
    # crashes and unbounded work inside the unpicklers
    "deep-tuple-key": (deep_tuple_key, "nested"),
    "stride-0-set": (stride0_set, "1000000000 elements"),
    "stride-0-ordered-dict": (stride0_ordered_dict, "2000000000 elements"),
    "repeated-huge-size": (repeated_huge_size, "bits"),
    "inst-opcode": (inst_opcode, "INST"),
    "deflated-record": (deflated_record, "compressed"),
    # unbounded work on what the unpicklers return
    "8-million-classes": (many_classes, "8000000 classes"),
    "a-million-state-names": (many_state_names, "tensors"),
    "depth-multiple-10000": (huge_multiple("depth_multiple", 10_000.0), "depth_multiple"),
    "width-multiple-1000": (huge_multiple("width_multiple", 1000.0), "width_multiple"),
    # fields of the wrong type, and messages that were not one line
    "deep-model-cfg": (deep_model_cfg, "nested"),
    "quantized-weight": (quantized_weight, "quantized"),
    "tensor-names": (tensor_names, "names"),
    "tensor-single-cls": (tensor_single_cls, "single_cls"),
    "string-epochs": (string_epochs, "epochs"),
    "forged-cfg-name": (forged_cfg_name, "evil\\nerror: all good"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_checkpoint_is_one_error_line(case: str, tmp_path: Path, tiny_checkpoint, tiny_dataset) -> None:
    build, needle = CASES[case]
    command = build(tmp_path / f"{case}.pt", Inputs(tiny_checkpoint, tiny_dataset))
    assert_one_error_line(run_limited(*command), needle)


# --- real checkpoints are unaffected ---------------------------------------------------------------------------------


def test_a_yolov5_checkpoint_loads_under_the_memory_limit() -> None:
    result = run_limited("-c", LOAD, str(YOLOV5_PT))
    assert result.returncode == 0 and result.stdout.split() == ["6"], result.stderr[-3000:]


def test_this_projects_checkpoint_loads_under_the_memory_limit(tmp_path: Path) -> None:
    model = build_model("yolov5s", num_classes=3)
    path = save_checkpoint(
        tmp_path / "last.pt", model_cfg=model.yaml, num_classes=3, names=["a", "b", "c"], single_cls=False,
        model=float_state_dict(model), epoch=2, training_model=float_state_dict(model), options={"epochs": 5},
    )  # fmt: skip
    result = run_limited("-c", LOAD, str(path))
    assert result.returncode == 0 and result.stdout.split() == ["3"], result.stderr[-3000:]
