"""Inference sources: the images and videos a file, folder or glob names, and their frames."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from utils.data.config import IMAGE_SUFFIXES
from utils.errors import UserError

VIDEO_SUFFIXES = {".asf", ".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts", ".wmv", ".webm"}


class UnreadableSource(UserError):
    """An image or video that OpenCV cannot decode: detect.py skips it and counts it."""


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def source_files(source: str) -> list[Path]:
    """Images and videos named by a file, a folder (recursively) or a glob pattern, sorted."""
    if any(character in source for character in "*?["):
        candidates = [Path(path) for path in glob.glob(source, recursive=True)]
    elif Path(source).is_dir():
        candidates = [path for path in Path(source).rglob("*") if path.is_file()]
    elif Path(source).is_file():
        candidates = [Path(source)]
    else:
        raise UserError(f"--source {source} does not exist")
    files = sorted(path for path in candidates if path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
    if not files:
        raise UserError(f"--source {source}: no images or videos found (image types: {sorted(IMAGE_SUFFIXES)})")
    return files


def output_stems(files: list[Path]) -> list[str]:
    """The stem each file's outputs are saved under (annotated copy, ``labels/<stem>.txt``, crops): its own, unless an
    earlier file in the list already has it (``a/x.jpg`` and ``b/x.jpg`` from a folder, or ``x.jpg`` and ``x.png``,
    whose labels and crops would share names; compared without case, as on case-insensitive disks); then
    ``<stem>_2``, ``<stem>_3`` and so on, the first that no file in the list takes."""
    taken = {path.stem.lower() for path in files}
    used: set[str] = set()
    stems = []
    for path in files:
        stem, number = path.stem, 1
        while stem.lower() in used or (number > 1 and stem.lower() in taken):
            number += 1
            stem = f"{path.stem}_{number}"
        used.add(stem.lower())
        stems.append(stem)
    return stems


def read_frames(path: Path) -> Iterator[tuple[int, np.ndarray, float]]:
    """(frame index, BGR image, frames per second) for every frame of a video, or the one frame of an image."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = cv2.imread(str(path))
        if image is None:
            raise UnreadableSource(f"cannot read image {path}")
        yield 0, image, 0.0
        return
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise UnreadableSource(f"cannot open video {path}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield index, frame, fps
            index += 1
    finally:
        capture.release()
