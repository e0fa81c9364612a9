"""Image loading and the ``--cache ram|disk`` image cache: resized images stored once per (split, img_size)."""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from utils.data.labels import LabeledSplit
from utils.errors import UserError
from utils.files import atomic_path

LOGGER = logging.getLogger(__name__)
CACHE_MODES = ("ram", "disk")
SAFETY_MARGIN = 0.1  # leave this fraction of the free memory or disk to everything else
GIGABYTE = 1 << 30

LoadedImage = tuple[np.ndarray, tuple[int, int], tuple[int, int]]  # (BGR image, (h0, w0), (h, w))


class CacheDoesNotFit(UserError):
    """The cache would not fit in the free memory or disk space (a caller may go on without one)."""


def resized_shape(width: int, height: int, img_size: int) -> tuple[int, int]:
    """(h, w) once the long side is scaled to ``img_size``."""
    ratio = img_size / max(width, height)
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def load_resized(path: Path, img_size: int) -> LoadedImage:
    """Read an image and scale its long side to ``img_size`` (area filter down, linear up)."""
    image = cv2.imread(str(path))  # applies the EXIF orientation, as the label scan assumes
    if image is None:
        raise UserError(f"{path}: image could not be read")
    original = image.shape[:2]
    height, width = resized_shape(original[1], original[0], img_size)
    if (height, width) != original:
        interpolation = cv2.INTER_AREA if height < original[0] else cv2.INTER_LINEAR
        image = cv2.resize(image, (width, height), interpolation=interpolation)
    return image, original, (height, width)


def available_memory() -> int:
    """Bytes of memory the kernel says can be allocated without swapping."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class ImageCache:
    """Resized images of one split, in memory or as ``.npy`` files beside the images; share it between datasets.

    Built eagerly so that DataLoader workers forked afterwards share the memory instead of each filling a copy.
    """

    def __init__(self, split: LabeledSplit, img_size: int, mode: str) -> None:
        if mode not in CACHE_MODES:
            raise UserError(f"--cache must be one of {CACHE_MODES}, got {mode!r}")
        self.split, self.img_size, self.mode = split, img_size, mode
        self.bytes_needed = self.required_bytes(split, img_size)
        self._check_space()
        self.images: list[np.ndarray | None] = [None] * len(split)
        self.originals = [(int(h), int(w)) for w, h in split.shapes]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(self._fill, range(len(split))))
        LOGGER.info("%s: cached %d images (%.2f GB, %s)", split.name, len(split), self.bytes_needed / GIGABYTE, mode)

    @staticmethod
    def required_bytes(split: LabeledSplit, img_size: int) -> int:
        """Bytes the resized uint8 images take."""
        return int(sum(np.prod(resized_shape(int(w), int(h), img_size)) * 3 for w, h in split.shapes))

    def _check_space(self) -> None:
        if self.mode == "ram":
            free, where = available_memory(), "memory"
        else:
            free, where = shutil.disk_usage(self.split.image_files[0].parent).free, "disk space"
        if self.bytes_needed > free * (1 - SAFETY_MARGIN):
            raise CacheDoesNotFit(
                f"--cache {self.mode} for {self.split.name} needs {self.bytes_needed / GIGABYTE:.2f} GB but only "
                f"{free / GIGABYTE:.2f} GB of {where} is free; use a smaller --img or no --cache"
            )

    def npy_path(self, index: int) -> Path:
        return self.split.image_files[index].with_suffix(f".{self.img_size}.npy")

    def _fill(self, index: int) -> None:
        if self.mode == "ram":
            self.images[index] = load_resized(self.split.image_files[index], self.img_size)[0]
            return
        path = self.npy_path(index)
        if not path.exists():
            with atomic_path(path, suffix=".npy") as temporary:  # np.save would append .npy to any other name
                np.save(temporary, load_resized(self.split.image_files[index], self.img_size)[0], allow_pickle=False)

    def load(self, index: int) -> LoadedImage:
        """The cached resized image of split item ``index`` with its original and resized (h, w)."""
        if self.mode == "ram":
            image = self.images[index]
        else:
            image = np.load(self.npy_path(index), allow_pickle=False)
        return image, self.originals[index], image.shape[:2]
