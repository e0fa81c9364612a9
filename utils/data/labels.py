"""Label scanning: verify images, parse and check YOLO label files, and cache the result next to the labels.

A label file with any bad row marks its image corrupt and the image is skipped (yolov5's rule): a file with one
broken row is usually broken elsewhere too, and silently training on half its objects teaches the model that the
other half is background.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.errors import UserError
from utils.files import write_atomic

MIN_BOX_PIXELS = 2.0  # boxes smaller than this on both sides carry no shape information (AutoAnchor)
LOGGER = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: images OpenCV cannot decode, or past PIL's decompression-bomb limit, are corrupt
# What OpenCV (the loader) decodes, by PIL's name for the format: a GIF or PCX named .jpg passes PIL but not cv2.
OPENCV_FORMATS = {"JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM", "JPEG2000", "MPO"}
COORDINATE_TOLERANCE = 1e-3  # exporters often write 1.0000001 or -0.0000001
MIN_IMAGE_SIDE = 10
REASONS_SHOWN = 5
EXIF_ORIENTATION_TAG = 274
EXIF_TRANSPOSED = {5, 6, 7, 8}  # orientations that swap width and height


def label_path(image_path: str | Path) -> Path:
    """``.../images/.../x.jpg`` -> ``.../labels/.../x.txt`` (the last ``/images/`` of the path)."""
    text = str(image_path)
    marker = f"{os.sep}images{os.sep}"
    head, found, tail = text.rpartition(marker)
    text = f"{head}{os.sep}labels{os.sep}{tail}" if found else text
    return Path(text).with_suffix(".txt")


@dataclass
class ScanReport:
    """Counts of what a scan found, and the first reasons for skipped images."""

    found: int = 0
    missing: int = 0
    empty: int = 0
    corrupt: int = 0
    duplicates: int = 0
    reasons: list[str] = field(default_factory=list)

    def summary(self, prefix: str = "") -> str:
        line = (
            f"{prefix}{self.found} labelled, {self.missing} missing, {self.empty} empty, {self.corrupt} corrupt, "
            f"{self.duplicates} duplicate rows removed"
        )
        shown = [f"\n  skipped {reason}" for reason in self.reasons[:REASONS_SHOWN]]
        more = len(self.reasons) - REASONS_SHOWN
        return line + "".join(shown) + (f"\n  ... and {more} more" if more > 0 else "")


@dataclass
class LabeledSplit:
    """The verified images of one split with their labels; build as many datasets from it as needed."""

    image_files: list[Path]
    labels: list[np.ndarray]  # per image (n, 5) float32 [cls, x, y, w, h] normalised
    segments: list[list[np.ndarray]]  # per image, per object (k, 2) float32 normalised; empty when boxes only
    shapes: np.ndarray  # (num_images, 2) int original (width, height)
    report: ScanReport
    name: str = "split"

    def __len__(self) -> int:
        return len(self.image_files)


def verify_image(path: Path) -> tuple[tuple[int, int] | None, str]:
    """Decode-check one image -> ((width, height) or None, reason it is unusable)."""
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:  # verify() leaves the file unusable; reopen for size and EXIF
            width, height = image.size
            image_format = image.format
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return None, f"unreadable image ({type(error).__name__}: {error})"
    if image_format not in OPENCV_FORMATS:
        return None, f"{image_format} image, which OpenCV cannot decode"
    if min(width, height) < MIN_IMAGE_SIDE:
        return None, f"image too small ({width}x{height})"
    if image_format == "JPEG":
        with open(path, "rb") as file:
            file.seek(-2, os.SEEK_END)
            if file.read() != b"\xff\xd9":
                return None, "truncated JPEG (no end-of-image marker)"
    if orientation in EXIF_TRANSPOSED:
        width, height = height, width
    return (width, height), ""


def _row_polygon(row: np.ndarray) -> np.ndarray:
    """A segment row's points, or a box row's 4 corners when a file mixes boxes and polygons."""
    if len(row) > 5:
        return row[1:].reshape(-1, 2)
    x, y, w, h = row[1:]
    return np.array([[x - w / 2, y - h / 2], [x + w / 2, y - h / 2], [x + w / 2, y + h / 2], [x - w / 2, y + h / 2]])


def parse_label_file(path: Path, num_classes: int) -> tuple[np.ndarray, list[np.ndarray], int, str]:
    """Read one label file -> (labels (n, 5), segments, duplicate rows removed, reason it is corrupt or '')."""
    empty = np.zeros((0, 5), np.float32)
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        return empty, [], 0, f"unreadable label file ({type(error).__name__})"
    if not rows:
        return empty, [], 0, ""
    is_segments = any(len(row) > 5 for row in rows)
    try:
        values = [np.array(row, dtype=np.float32) for row in rows]
    except ValueError:
        return empty, [], 0, "label row that is not numbers"
    for number, row in enumerate(values, 1):
        if len(row) < 5 or (len(row) > 5 and (len(row) < 7 or len(row) % 2 == 0)):
            return empty, [], 0, f"label row {number} has {len(row)} columns"
        if not np.isfinite(row).all():
            return empty, [], 0, f"label row {number} has a non-finite value"
        if row[0] < 0 or row[0] != int(row[0]) or row[0] >= num_classes:
            return empty, [], 0, f"label row {number} has class {row[0]:g}, not in 0..{num_classes - 1}"
        coordinates = row[1:]
        if (coordinates < -COORDINATE_TOLERANCE).any() or (coordinates > 1 + COORDINATE_TOLERANCE).any():
            return empty, [], 0, f"label row {number} has coordinates outside [0, 1]"
    if is_segments:
        segments = [_row_polygon(row).clip(0, 1) for row in values]
        boxes = [np.concatenate([(s.min(0) + s.max(0)) / 2, s.max(0) - s.min(0)]) for s in segments]
        labels = np.array([[row[0], *box] for row, box in zip(values, boxes)], np.float32)
    else:
        segments = []
        labels = np.stack(values).astype(np.float32)
        labels[:, 1:] = labels[:, 1:].clip(0, 1)
    if (labels[:, 3:5] <= 0).any():
        return empty, [], 0, "label row with zero width or height"
    _, keep = np.unique(labels, axis=0, return_index=True)
    keep = np.sort(keep)
    duplicates = len(labels) - len(keep)
    if duplicates:
        labels = labels[keep]
        segments = [segments[index] for index in keep] if segments else []
    return labels, segments, duplicates, ""


def _scan_one(image_path: Path, num_classes: int) -> dict:
    """Verify one image and its labels -> a JSON-ready record."""
    record = {"shape": None, "labels": [], "segments": [], "status": "ok", "duplicates": 0, "reason": ""}
    shape, reason = verify_image(image_path)
    if shape is None:
        return {**record, "status": "corrupt", "reason": reason}
    record["shape"] = list(shape)
    path = label_path(image_path)
    if not path.is_file():
        return {**record, "status": "missing"}
    labels, segments, duplicates, reason = parse_label_file(path, num_classes)
    if reason:
        return {**record, "status": "corrupt", "reason": reason}
    record["labels"], record["duplicates"] = labels.tolist(), duplicates
    record["segments"] = [segment.tolist() for segment in segments]
    record["status"] = "found" if len(labels) else "empty"
    return record


def files_hash(image_files: list[Path], num_classes: int) -> str:
    """Hash of every image and label path with its size and modification time (any edit changes it)."""
    digest = hashlib.sha256(f"{CACHE_VERSION} {num_classes}".encode())
    for image_path in image_files:
        for path in (image_path, label_path(image_path)):
            try:
                stat = path.stat()
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def cache_path_for(image_files: list[Path]) -> Path:
    """``labels/train.cache`` next to the label folder of the first image (yolov5's location)."""
    return label_path(image_files[0]).parent.with_suffix(".cache")


def _read_cache(path: Path, expected_hash: str) -> list[dict] | None:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if content.get("version") != CACHE_VERSION or content.get("hash") != expected_hash:
        return None
    return content.get("records")


def _write_cache(path: Path, content_hash: str, records: list[dict]) -> None:
    try:  # atomic, so concurrent readers never see half a cache
        write_atomic(path, json.dumps({"version": CACHE_VERSION, "hash": content_hash, "records": records}))
    except OSError as error:  # a read-only dataset folder: scan again next time
        LOGGER.warning("label cache not written to %s: %s", path, error)


def _scan_records(image_files: list[Path], num_classes: int, cache_path: Path | None) -> list[dict]:
    content_hash = files_hash(image_files, num_classes)
    if cache_path is not None:
        records = _read_cache(cache_path, content_hash)
        if records is not None and len(records) == len(image_files):
            return records
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        records = list(pool.map(lambda path: _scan_one(path, num_classes), image_files))
    if cache_path is not None:
        _write_cache(cache_path, content_hash, records)
    return records


def scan_split(image_files: list[Path], num_classes: int, name: str = "split", use_cache: bool = True) -> LabeledSplit:
    """Verify a split's images and labels (from the cache when nothing changed) -> LabeledSplit.

    Raises UserError when no usable image is left.
    """
    if not image_files:
        raise UserError(f"{name}: no images found")
    cache_path = cache_path_for(image_files) if use_cache else None
    records = _scan_records(image_files, num_classes, cache_path)
    report = ScanReport()
    kept_files, labels, segments, shapes = [], [], [], []
    for path, record in zip(image_files, records):
        report.duplicates += record["duplicates"]
        if record["status"] == "corrupt":
            report.corrupt += 1
            report.reasons.append(f"{path}: {record['reason']}")
            continue
        report.found += record["status"] == "found"
        report.missing += record["status"] == "missing"
        report.empty += record["status"] == "empty"
        kept_files.append(path)
        labels.append(np.array(record["labels"], np.float32).reshape(-1, 5))
        segments.append([np.array(segment, np.float32).reshape(-1, 2) for segment in record["segments"]])
        shapes.append(record["shape"])
    LOGGER.info(report.summary(f"{name}: {len(image_files)} images, "))
    if not kept_files:
        raise UserError(f"{name}: no usable images among {len(image_files)} ({report.corrupt} corrupt)")
    split = LabeledSplit(kept_files, labels, segments, np.array(shapes, np.int64).reshape(-1, 2), report, name)
    return split


def as_single_class(split: LabeledSplit) -> LabeledSplit:
    """A copy of ``split`` whose every label is class 0 (--single-cls); boxes and segments are unchanged."""
    labels = [np.concatenate([np.zeros_like(rows[:, :1]), rows[:, 1:]], 1) for rows in split.labels]
    return dataclasses.replace(split, labels=labels)


def label_sizes(shapes: np.ndarray, labels: list[np.ndarray], img_size: int) -> np.ndarray:
    """Pixel (w, h) of every label box once its image is resized so its long side is ``img_size``.

    ``shapes``: (n, 2) image (width, height); ``labels``: per image (k, 5) [cls, x, y, w, h] normalised.
    Boxes under ``MIN_BOX_PIXELS`` on both sides are dropped. Returns (m, 2) float32.
    """
    shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
    resized = img_size * shapes / shapes.max(1, keepdims=True)
    boxes = [np.asarray(label, dtype=np.float64).reshape(-1, 5)[:, 3:5] * size for size, label in zip(resized, labels)]
    wh = np.concatenate(boxes, 0) if boxes else np.zeros((0, 2))
    return wh[(wh >= MIN_BOX_PIXELS).any(1)].astype(np.float32)
