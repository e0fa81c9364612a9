"""Tests for utils/training/pickle_scan.py: what torch.save writes passes; crafted opcodes that nest, count, allocate
or iterate beyond the limits are refused by name, before any unpickler runs. The files that reach val.py and
train.py this way are in test_hostile_checkpoints.py."""

from __future__ import annotations

import io
import zipfile
from collections import OrderedDict

import pytest
import torch

from tests.test_yolov5_checkpoint import YOLOV5_PT
from tests.test_yolov5_unpickler import PROTO, tensor_pickle, text
from utils.training import pickle_scan
from utils.training.pickle_scan import UnsafePickle, scan_pickle, tensor_extent_problem

RECORDS = {"data/0": 16}  # the FloatStorage of 4 elements tensor_pickle builds on
TENSOR = tensor_pickle()[2:-1]  # a (2,) view of it, without PROTO and STOP


def saved_pickle(obj: object) -> tuple[bytes, dict[str, int]]:
    """(data.pkl, record sizes) of ``obj`` as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with zipfile.ZipFile(buffer) as archive:
        sizes = {info.filename.split("/", 1)[1]: info.file_size for info in archive.infolist()}
        return archive.read(next(name for name in archive.namelist() if name.endswith("/data.pkl"))), sizes


def test_what_torch_save_writes_passes() -> None:
    weights = OrderedDict(w=torch.randn(3, 4), b=torch.arange(5), view=torch.randn(4, 6)[1:, ::2])
    scan_pickle(*saved_pickle({"model": weights, "names": ["a"], "options": {"freeze": [0]}, "tags": {"x"}}))
    with zipfile.ZipFile(YOLOV5_PT) as archive:  # a whole yolov5 model, optimizer state and options included
        sizes = {info.filename.split("/", 1)[1]: info.file_size for info in archive.infolist()}
        scan_pickle(archive.read(next(name for name in archive.namelist() if name.endswith("/data.pkl"))), sizes)


def long1(value: int) -> bytes:
    encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(encoded)]) + encoded


@pytest.mark.parametrize(
    ("opcodes", "message"),
    [
        (b")" + b"\x85" * 201 + b".", "nested more than 200 deep"),  # tuples: hashing one recurses in C
        (b"(" * 201, "nested more than 200 deep"),
        # a memoised list made deep after it was memoised: what it holds shows wherever it is used again
        (b"]q\x00h\x00)" + b"\x85" * 150 + b"a0h\x00" + b"\x85" * 60 + b".", "nested more than 200 deep"),
        (long1(2**64) + b".", "an integer of 65 bits"),
        (b"(K\x01imodels.yolo\nDetect\n.", "opcode INST"),
        (b"(cmodels.yolo\nDetect\nK\x01o.", "opcode OBJ"),
        (TENSOR + b"}b.", "sets the state of a tensor"),  # torch's Tensor.set_: any view of any storage
        (b"cbuiltins\nbytearray\nJ\xff\xff\xff\x7f\x85R.", "builtins.bytearray with an integer"),
        (b"c__builtin__\nset\n" + TENSOR + b"\x85R.", "builtins.set with a tensor"),
        (b"ctorch\nFloatStorage\nJ\xff\xff\xff\x7f\x85R.", "calls torch.FloatStorage"),
        (b"ctorch._utils\n_rebuild_sparse_tensor\n)R.", "calls torch._utils._rebuild_sparse_tensor"),
        (b"ctorch._utils\n_rebuild_tensor_v2\n(NK\x00K\x01\x85K\x01\x85\x89NtR.", "other than a storage record"),
    ],
)
def test_crafted_opcodes_are_refused(opcodes: bytes, message: str) -> None:
    with pytest.raises(UnsafePickle, match=message):
        scan_pickle(PROTO + opcodes, RECORDS)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"size": (10**9,), "stride": (0,)}, "a tensor of 1000000000 elements views a storage of 4"),
        ({"size": (4,), "stride": (1000,)}, "reaches element 3000 of a storage of 4"),
        ({"size": (1,) * 17, "stride": (0,) * 17}, "17 sizes and 17 strides"),
        ({"offset": -2}, "negative or non-integer"),
        ({"numel": 5}, "claims 5 elements but its record holds 4 bytes"),
    ],
)
def test_tensors_are_bounded_by_their_storage(arguments: dict, message: str) -> None:
    with pytest.raises(UnsafePickle, match=message):
        scan_pickle(tensor_pickle(**arguments), {"data/0": 4})


def test_the_limits_on_size_and_length(monkeypatch) -> None:
    monkeypatch.setattr(pickle_scan, "MAX_OPCODES", 100)
    scan_pickle(PROTO + b"N0" * 48 + b"N.", {})  # 99 opcodes
    with pytest.raises(UnsafePickle, match="more than 100 opcodes"):
        scan_pickle(PROTO + b"N0" * 49 + b"N.", {})
    monkeypatch.setattr(pickle_scan, "MAX_PICKLE_BYTES", 10)
    with pytest.raises(UnsafePickle, match="its pickle is 12 bytes"):
        scan_pickle(PROTO + text("long") + b".", {})


@pytest.mark.parametrize("opcodes", [b"N", b"0N.", b"e.", b"\xff."], ids=["no-stop", "underflow", "no-mark", "bad"])
def test_a_damaged_pickle_is_a_value_error(opcodes: bytes) -> None:
    with pytest.raises(ValueError):
        scan_pickle(PROTO + opcodes, {})


def test_extent_of_views_that_share_storage_without_repeating() -> None:
    assert tensor_extent_problem(6, 1, (2, 2), (1, 3)) is None  # a transposed slice
    assert tensor_extent_problem(6, 6, (0, 3), (3, 1)) is None  # empty, at the end
    assert "repeats" in tensor_extent_problem(6, 0, (2, 6), (0, 1))
    assert "non-integer" in tensor_extent_problem(6, 0, (2, True), (1, 1))
