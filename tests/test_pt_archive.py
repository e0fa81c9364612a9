"""Tests for utils/training/pt_archive.py: a .pt is read once, and what torch.load would not unpickle through the
restricted reader (TorchScript hidden from Python's zipfile, tar/zip polyglots, FIFOs) is refused as one line."""

from __future__ import annotations

import io
import os
import pickle
import signal
import struct
import tarfile
import zipfile

import pytest
import torch

from tests.test_yolov5_checkpoint import YOLOV5_PT
from utils.errors import UserError
from utils.training.checkpoint import load_checkpoint
from utils.training.yolov5_checkpoint import read_yolov5_checkpoint


def scripted_archive_hidden_from_zipfile() -> bytes:
    """A TorchScript archive with two central directories: Python's zipfile reads a decoy without constants.pkl or
    code/, torch's reader (miniz) the real one, as the zip64 locator points it there."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buffer)
    data = buffer.getvalue()
    end64, locator = data.rfind(b"PK\x06\x06"), data.rfind(b"PK\x06\x07")
    size, offset = struct.unpack("<QQ", data[end64 + 40 : end64 + 56])
    decoy = data[offset : offset + size].replace(b"constants.pkl", b"constantz.pkl").replace(b"/code/", b"/codf/")
    tail = bytearray(data[end64:])
    tail[locator - end64 : locator - end64 + 20] = struct.pack("<IIQI", 0x07064B50, 0, end64 + len(decoy), 1)
    return data[:end64] + decoy + bytes(tail)


def test_torchscript_hidden_from_pythons_zipfile_is_refused(tmp_path) -> None:
    path = tmp_path / "hidden.pt"
    path.write_bytes(scripted_archive_hidden_from_zipfile())
    assert not any("constants.pkl" in name for name in zipfile.ZipFile(path).namelist())  # the decoy works
    for reader in (load_checkpoint, read_yolov5_checkpoint):
        with pytest.raises(UserError, match="hidden.pt: it is a TorchScript archive"):
            reader(path)


def test_a_tar_that_is_also_a_zip_is_refused(tmp_path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.addfile(tarfile.TarInfo("pickle"), io.BytesIO(b""))
    with zipfile.ZipFile(buffer, "a") as archive:  # appended: zipfile finds it from the end, torch reads a tar
        archive.writestr("archive/data.pkl", pickle.dumps({}))
    path = tmp_path / "polyglot.pt"
    path.write_bytes(buffer.getvalue())
    assert zipfile.is_zipfile(path)
    for reader in (load_checkpoint, read_yolov5_checkpoint):
        with pytest.raises(UserError, match="polyglot.pt: it is not a zip-format torch checkpoint"):
            reader(path)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path) -> None:
    path = tmp_path / "fifo.pt"
    os.mkfifo(path)

    def give_up(*_) -> None:
        raise TimeoutError("the reader waited for a writer")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(5)
    try:
        with pytest.raises(UserError, match="fifo.pt: it is not a regular file"):
            read_yolov5_checkpoint(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_the_file_is_read_once_and_both_loads_unpickle_those_bytes(monkeypatch) -> None:
    sources = []
    real_load = torch.load

    def recording_load(source, *args, **kwargs):
        sources.append(source)
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    load_checkpoint(YOLOV5_PT)
    assert len(sources) == 2 and all(isinstance(source, io.BytesIO) for source in sources)
    assert sources[0].getvalue() == sources[1].getvalue() == YOLOV5_PT.read_bytes()
