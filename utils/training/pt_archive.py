"""Reading a .pt file once into memory and vetting it as a zip-format torch archive that holds no TorchScript, no
compressed record and a pickle within ``pickle_scan``'s limits."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError, one_line
from utils.training.pickle_scan import UnsafePickle, scan_pickle

# yolov5x6's last.pt, optimizer included, is about 1 GB; anything much larger is not a detector checkpoint
MAX_CHECKPOINT_BYTES = 4 * 1024**3
ZIP_MAGIC = b"PK\x03\x04"  # torch.save has written zip archives since torch 1.6; torch.load tests these 4 bytes
STORED = b"\x00\x00"  # a local header's compression method: none


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``, read once; refuses a FIFO or device (whose open or read may block) and huge files."""
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise UserError(f"cannot read checkpoint {path}: {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise UserError(f"refusing to load {path}: it is not a regular file")
        if status.st_size > MAX_CHECKPOINT_BYTES:
            raise UserError(f"refusing to load {path}: it is larger than {MAX_CHECKPOINT_BYTES >> 30} GiB")
        # read() allocates what it is asked for at once: the file's size, not the limit (which a memory limit refuses)
        return file.read(status.st_size)


def _archive_reader(data: bytes, path: Path) -> Any:
    """torch's own zip reader (the one torch.load uses) over ``data``."""
    try:
        return torch._C.PyTorchFileReader(io.BytesIO(data))
    except Exception as error:  # miniz reports a damaged archive as RuntimeError, a bad record name otherwise
        raise UserError(f"corrupt or unreadable checkpoint {path}: {one_line(error)}") from None


def record_sizes(reader: Any, data: bytes, path: Path) -> dict[str, int]:
    """Each record's size in bytes; refuses a compressed record and records that hold more bytes than the file.

    torch.save stores records as they are, so their bytes lie in the file. A compressed (deflated) record inflates up
    to a thousandfold, to the size its directory entry states, which the reader allocates: any size that does not fit
    in the file is refused, whichever directory or header says so.
    """
    sizes = {}
    for name in reader.get_all_records():
        header, size = reader.get_record_header_offset(name), reader.get_record_size(name)
        if data[header : header + 4] != ZIP_MAGIC or data[header + 8 : header + 10] != STORED:
            raise UserError(f"refusing to load {path}: its record {ascii(name)} is compressed (torch.save writes none)")
        if reader.get_record_offset(name) + size > len(data):
            raise UserError(f"corrupt or unreadable checkpoint {path}: its record {ascii(name)} ends past the file")
        sizes[name] = size
    if sum(sizes.values()) > len(data):
        raise UserError(f"corrupt or unreadable checkpoint {path}: its records overlap")
    return sizes


def _scan_data_pickle(reader: Any, sizes: dict[str, int], path: Path) -> None:
    """``scan_pickle`` on the archive's data.pkl, its refusals as UserErrors."""
    if "data.pkl" not in sizes:
        raise UserError(f"corrupt or unreadable checkpoint {path}: it has no data.pkl")
    try:
        scan_pickle(reader.get_record("data.pkl"), sizes)
    except UnsafePickle as error:
        raise UserError(f"refusing to load {path}: {error}") from None
    except ValueError as error:  # pickletools' word for a damaged opcode stream
        raise UserError(f"corrupt or unreadable checkpoint {path}: {one_line(error)}") from None


def read_pt_archive(path: str | Path) -> bytes:
    """The bytes of a zip-format .pt that torch.load may unpickle; refuses anything it would treat otherwise.

    Refused: legacy and tar formats (torch.load unpacks those with other code paths), TorchScript archives
    (torch.load hands them to torch.jit.load, even with weights_only=True), compressed records, and a data.pkl that
    ``scan_pickle`` refuses (too deep, too long, huge integers, tensors beyond their storage). The records are
    listed by the reader torch.load uses, on the same bytes the caller then loads, so no other zip parser or second
    open can differ.
    """
    path = Path(path)
    data = _read_regular_file(path)
    if data[:4] != ZIP_MAGIC:
        raise UserError(f"refusing to load {path}: it is not a zip-format torch checkpoint")
    reader = _archive_reader(data, path)
    records = list(reader.get_all_records())
    if any(record == "constants.pkl" or record.startswith("code/") for record in records):
        raise UserError(f"refusing to load {path}: it is a TorchScript archive, which would run its code")
    _scan_data_pickle(reader, record_sizes(reader, data, path), path)
    return data
