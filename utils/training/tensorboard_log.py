"""TensorBoard event files: a run's per-epoch scalars (under results.csv's names) and its images, when installed."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

LOGGER = logging.getLogger(__name__)


@functools.cache
def summary_writer_class() -> type | None:
    """torch's ``SummaryWriter``, imported on first use (it pulls in tensorboard and protobuf, a few seconds), or
    None with one log line per process when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        LOGGER.info("tensorboard is not installed, so no event files are written (pip install tensorboard)")
        return None
    return SummaryWriter


class TensorBoardLog:
    """One event-file writer on one folder; every method does nothing when tensorboard is not installed.

    One writer per folder: several processes may log at once as long as each has its own folder (evolution writes
    one folder per child)."""

    def __init__(self, folder: Path | None = None) -> None:
        writer_class = summary_writer_class() if folder is not None else None
        self.writer = writer_class(str(folder)) if writer_class is not None else None
        self.last_step: int | None = None

    def scalars(self, step: int, values: Mapping[str, object]) -> None:
        """Each finite number as its own series at ``step``; NaN (an epoch not validated) and non-numbers are
        left out. Flushed, so that a run that dies keeps what it logged."""
        if self.writer is None:
            return
        for tag, value in values.items():
            try:
                number = float(value)
            except (TypeError, ValueError, RuntimeError):  # arrays, strings, multi-element tensors
                continue
            if math.isfinite(number):
                self.writer.add_scalar(tag, number, step)
        self.last_step = step
        self.writer.flush()

    def images(self, files: Mapping[str, Path], step: int = 0) -> None:
        """Image files the run wrote (``{"labels": .../labels.jpg}``) as TensorBoard images; missing files are
        skipped."""
        if self.writer is None:
            return
        for tag, path in files.items():
            if not Path(path).is_file():
                continue
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))  # (height, width, 3) uint8
            self.writer.add_image(tag, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
