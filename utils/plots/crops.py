"""Detected boxes cut out of the frame as read (yolov5's ``--save-crop``): ``crops/<class name>/<stem>.jpg``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from utils.errors import UserError

# yolov5's save_one_box: the box grows by 2% and 10 pixels about its centre, so the crop keeps the object's edges.
CROP_GAIN = 1.02
CROP_PAD = 10
JPEG_QUALITY = 95


def crop_box(
    box: Sequence[float], image_shape: tuple[int, ...], gain: float = CROP_GAIN, pad: float = CROP_PAD
) -> tuple[int, int, int, int]:
    """Pixel bounds (x1, y1, x2, y2), ends exclusive, to cut for ``box`` (x1, y1, x2, y2 pixels): its width and
    height times ``gain`` plus ``pad`` about the same centre, truncated to whole pixels and clipped to an image of
    ``image_shape`` (h, w, ...)."""
    x_centre, y_centre = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    width, height = (box[2] - box[0]) * gain + pad, (box[3] - box[1]) * gain + pad
    image_height, image_width = image_shape[:2]
    x1, x2 = (min(max(int(x), 0), image_width) for x in (x_centre - width / 2, x_centre + width / 2))
    y1, y2 = (min(max(int(y), 0), image_height) for y in (y_centre - height / 2, y_centre + height / 2))
    return x1, y1, x2, y2


def claim_free_path(path: Path) -> Path:
    """``path``, or else the first free ``<stem>2``, ``<stem>3``, ... beside it (yolov5's numbering), created empty
    at once so that no file already there (the user's, or a parallel run's) is ever overwritten."""
    candidate, number = path, 2
    while True:
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return candidate
        except FileExistsError:
            candidate = path.with_name(f"{path.stem}{number}{path.suffix}")
            number += 1


def folder_name(class_name: str) -> str:
    """A class name as one folder name: path separators would nest folders, '.' and '..' would leave crops/."""
    name = class_name.replace("/", "_").replace("\\", "_")
    return "_" if name in ("", ".", "..") else name


def save_crops(image: np.ndarray, detections: np.ndarray, names: list[str], folder: Path, stem: str) -> list[Path]:
    """Save each detection's crop of ``image`` (BGR, the frame as read, never the annotated copy) as
    ``folder/<class name>/<stem>.jpg``, repeats numbered ``<stem>2.jpg``, ...; returns the files written.

    ``detections`` is (n, 6) x1, y1, x2, y2, conf, cls in the image's pixels."""
    files = []
    for *box, _, class_id in detections:
        x1, y1, x2, y2 = crop_box(box, image.shape)
        if x2 <= x1 or y2 <= y1:
            continue  # a box wholly outside the image has nothing to cut
        class_folder = folder / folder_name(names[int(class_id)])
        class_folder.mkdir(parents=True, exist_ok=True)
        path = claim_free_path(class_folder / f"{stem}.jpg")
        if not cv2.imwrite(str(path), image[y1:y2, x1:x2], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            path.unlink(missing_ok=True)
            raise UserError(f"cannot write crop {path}")
        files.append(path)
    return files
