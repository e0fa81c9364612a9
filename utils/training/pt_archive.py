"""Reading a .pt file once into memory and vetting it as a zip-format torch archive that holds no TorchScript."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import torch

from utils.errors import UserError, one_line

# yolov5x6's last.pt, optimizer included, is about 1 GB; anything much larger is not a detector checkpoint
MAX_CHECKPOINT_BYTES = 4 * 1024**3
ZIP_MAGIC = b"PK\x03\x04"  # torch.save has written zip archives since torch 1.6; torch.load tests these 4 bytes


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``, read once; refuses a FIFO or device (whose open or read may block) and huge files."""
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise UserError(f"cannot read checkpoint {path}: {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise UserError(f"refusing to load {path}: it is not a regular file")
        data = file.read(MAX_CHECKPOINT_BYTES + 1)
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise UserError(f"refusing to load {path}: it is larger than {MAX_CHECKPOINT_BYTES >> 30} GiB")
    return data


def archive_records(data: bytes, path: Path) -> list[str]:
    """The record names of a zip-format .pt (``data.pkl``, ``data/0``, ...), listed by torch's own zip reader."""
    try:
        return list(torch._C.PyTorchFileReader(io.BytesIO(data)).get_all_records())
    except Exception as error:  # miniz reports a damaged archive as RuntimeError, a bad record name otherwise
        raise UserError(f"corrupt or unreadable checkpoint {path}: {one_line(error)}") from None


def read_pt_archive(path: str | Path) -> bytes:
    """The bytes of a zip-format .pt that torch.load may unpickle; refuses anything it would treat otherwise.

    Refused: legacy and tar formats (torch.load unpacks those with other code paths) and TorchScript archives
    (torch.load hands them to torch.jit.load, even with weights_only=True). The records are listed by the reader
    torch.load uses, on the same bytes the caller then loads, so no other zip parser or second open can differ.
    """
    path = Path(path)
    data = _read_regular_file(path)
    if data[:4] != ZIP_MAGIC:
        raise UserError(f"refusing to load {path}: it is not a zip-format torch checkpoint")
    records = archive_records(data, path)
    if any(record == "constants.pkl" or record.startswith("code/") for record in records):
        raise UserError(f"refusing to load {path}: it is a TorchScript archive, which would run its code")
    return data
