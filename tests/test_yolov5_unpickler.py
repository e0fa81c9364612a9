"""Tests for utils/training/yolov5_unpickler.py: crafted pickles, built here opcode by opcode, cannot change anything
beyond the object being loaded (shared functions, pathlib, later loads), and their tensors are checked before torch
rebuilds them; refusals are one escaped line."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path, PosixPath, PurePosixPath, PureWindowsPath, WindowsPath

import pytest
import torch
from torch._utils import _rebuild_parameter

from tests.test_yolov5_checkpoint import YOLOV5_PT
from utils.errors import UserError
from utils.training.checkpoint import load_checkpoint
from utils.training.yolov5_checkpoint import read_yolov5_checkpoint
from utils.training.yolov5_unpickler import RestrictedUnpickler, read_restricted

# Crafted archives, built here opcode by opcode: what a hostile .pt can hold that torch.save would never write.
PROTO = b"\x80\x02"


def text(value: str) -> bytes:
    """A BINUNICODE opcode pushing ``value``."""
    encoded = value.encode()
    return b"X" + struct.pack("<I", len(encoded)) + encoded


def write_archive(path: Path, data_pkl: bytes, records: dict[str, bytes] | None = None) -> Path:
    """A zip-format .pt holding ``data_pkl`` (and ``records``), written by torch's own archive writer."""
    writer = torch._C.PyTorchFileWriter(str(path))
    for name, content in {"data.pkl": data_pkl, **(records or {})}.items():
        writer.write_record(name, content, len(content))
    writer.write_end_of_file()
    return path


def fixture_with_opcodes(path: Path, opcodes: bytes) -> Path:
    """The fixture with stack-neutral ``opcodes`` run first in its data.pkl."""
    with zipfile.ZipFile(YOLOV5_PT) as archive:
        records = {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()}
    data_pkl = records.pop("data.pkl")
    return write_archive(path, data_pkl[:2] + opcodes + data_pkl[2:], records)


def tensor_pickle(offset: int = 0, size=(2,), stride=(1,), numel: int = 4, more: bytes = b"") -> bytes:
    """A pickle of one _rebuild_tensor_v2 call on a FloatStorage of ``numel`` elements (record data/0)."""
    ints = b"(" + b"".join(b"J" + struct.pack("<i", value) for value in (*size, *stride)) + b"t"
    size_and_stride = ints[: 1 + 5 * len(size)] + b"t(" + ints[1 + 5 * len(size) :]
    storage = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu")
    storage += b"J" + struct.pack("<i", numel) + b"tQ"
    arguments = storage + b"J" + struct.pack("<i", offset) + size_and_stride + b"\x89ccollections\nOrderedDict\n)R"
    return PROTO + b"ctorch._utils\n_rebuild_tensor_v2\n(" + arguments + more + b"tR."


@pytest.fixture
def restore_shared_globals():
    """Undo what a BUILD on a shared global would leave behind, so that an unfixed reader fails one test only."""
    defaults = {function: function.__defaults__ for function in (torch._utils._rebuild_tensor_v2, _rebuild_parameter)}
    yield
    for function, value in defaults.items():
        function.__defaults__ = value
    for path_class in (PurePosixPath, PureWindowsPath, PosixPath, WindowsPath):
        if "_str" in vars(path_class):
            delattr(path_class, "_str")


@pytest.mark.parametrize(
    "global_line",
    [
        b"ctorch._utils\n_rebuild_tensor_v2\n",
        b"ctorch._utils\n_rebuild_parameter\n",
        b"cpathlib\nPosixPath\n",
        b"cpathlib\nPurePosixPath\n",
        b"cpathlib\nWindowsPath\n",
        b"cpathlib\nPureWindowsPath\n",
        b"cmodels.yolo\nDetect\n",
    ],
)
@pytest.mark.usefixtures("restore_shared_globals")
def test_a_pickle_cannot_set_attributes_on_what_find_class_returns(tmp_path, global_line: bytes) -> None:
    defaults = torch._utils._rebuild_tensor_v2.__defaults__
    # BUILD with (None, {...}) runs setattr on the object below it: here the global itself
    state = b"N}" + text("__defaults__") + b"}" + text("neg") + b"\x88s\x85s" + text("_str") + text("/hijacked") + b"s"
    path = fixture_with_opcodes(tmp_path / "hijack.pt", global_line + state + b"\x86b0")
    for reader in (load_checkpoint, read_yolov5_checkpoint):
        with pytest.raises(UserError, match="sets the state of a"):
            reader(path)
    assert str(Path("/x")) == "/x" and str(PureWindowsPath("c:/x")) == "c:\\x"
    assert torch._utils._rebuild_tensor_v2.__defaults__ == defaults and _rebuild_parameter.__defaults__ is None
    buffer = io.BytesIO()
    torch.save(torch.ones(3), buffer)
    assert torch.load(io.BytesIO(buffer.getvalue()), weights_only=True).tolist() == [1.0, 1.0, 1.0]


def test_each_load_gets_its_own_callables_and_paths_come_back_as_strings(tmp_path) -> None:
    path = tmp_path / "paths.pt"
    torch.save({"opt": {"save_dir": PurePosixPath("runs/exp"), "weights": PureWindowsPath("c:/w.pt")}}, path)
    assert read_restricted(path)["opt"] == {"save_dir": "runs/exp", "weights": "c:\\w.pt"}
    first, second = RestrictedUnpickler(io.BytesIO()), RestrictedUnpickler(io.BytesIO())
    for module, name in [("torch._utils", "_rebuild_tensor_v2"), ("pathlib", "PosixPath"), ("models.yolo", "Detect")]:
        assert first.find_class(module, name) is not second.find_class(module, name)
        assert first.find_class(module, name) is first.find_class(module, name) or module == "pathlib"
    assert first.find_class("torch._utils", "_rebuild_tensor_v2") is not torch._utils._rebuild_tensor_v2


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"offset": -2}, "negative or non-integer"),
        ({"stride": (-1,), "offset": 3}, "negative or non-integer"),
        ({"size": (4,), "stride": (1000,)}, "reaches element 3000 of a storage of 4"),
        ({"more": b"}" + text("neg") + b"\x88s"}, "hooks or metadata"),  # would flip the tensor's sign bit
    ],
)
def test_tensor_arguments_are_checked_before_torch_sees_them(tmp_path, arguments: dict, message: str) -> None:
    path = write_archive(tmp_path / "tensor.pt", tensor_pickle(**arguments), {"data/0": bytes(16)})
    with pytest.raises(UserError, match=message):
        read_restricted(path)
    fine = write_archive(tmp_path / "fine.pt", tensor_pickle(), {"data/0": bytes(16)})
    assert read_restricted(fine).tolist() == [0.0, 0.0]


def test_an_unknown_global_is_named_on_one_escaped_line(tmp_path) -> None:
    name = "system\n\x1b[31mFAKE: all good\x1b[0m"
    path = write_archive(tmp_path / "escape.pt", PROTO + text("os") + text(name) + b"\x93)R.")
    for reader in (load_checkpoint, read_yolov5_checkpoint):
        with pytest.raises(UserError, match="it needs 'os.system") as error:
            reader(path)
        assert "\n" not in str(error.value) and "\x1b" not in str(error.value) and "\\x1b[31m" in str(error.value)


def test_a_multi_line_torch_error_is_cut_to_its_first_line(tmp_path) -> None:
    placeholder = b"cmodels.yolo\nDetect\n0"  # weights-only refuses this global, so the restricted reader runs
    data_pkl = tensor_pickle(numel=-4)  # torch's record reader refuses with a multi-line argument list
    path = write_archive(tmp_path / "multi.pt", data_pkl[:2] + placeholder + data_pkl[2:], {"data/0": bytes(16)})
    for reader in (load_checkpoint, read_yolov5_checkpoint):
        with pytest.raises(UserError, match="multi.pt: TypeError: get_storage_from_record") as error:
            reader(path)
        assert "\n" not in str(error.value)
