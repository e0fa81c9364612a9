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
    """The stem each file's outputs are saved under (annotated copy, ``labels/<stem>.txt``, crops): its own, unless
    another file already has it (``a/x.jpg`` and ``b/x.jpg`` from a folder, or ``x.jpg`` and ``x.png``, whose labels
    and crops would share names; compared without case, as on case-insensitive disks); then ``<stem>_2``,
    ``<stem>_3`` and so on, the first that no file in the list takes. Images come first: a video's frames save as
    ``<stem>_<frame>``, so a video also gives up a stem that an image has, or one that an image's name would read
    as a frame of (``clip.mp4`` beside ``clip_0.jpg`` saves as ``clip_2``)."""
    taken = {path.stem.lower() for path in files}
    images = [path.stem.lower() for path in files if not is_video(path)]
    # a video may not take an image's stem, nor the <stem> of an image named <stem>_<digits>
    splits = [image.rpartition("_") for image in images]
    barred = {*images, *(head for head, _, frame in splits if frame.isdigit())}

    def free(path: Path, stem: str, number: int) -> bool:
        if stem.lower() in used or (number > 1 and stem.lower() in taken):
            return False
        return not is_video(path) or stem.lower() not in barred

    used: set[str] = set()
    stems: dict[int, str] = {}
    for index in sorted(range(len(files)), key=lambda index: is_video(files[index])):  # stable: images, then videos
        path, number = files[index], 1
        stem = path.stem
        while not free(path, stem, number):
            number += 1
            stem = f"{path.stem}_{number}"
        used.add(stem.lower())
        stems[index] = stem
    return [stems[index] for index in range(len(files))]


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
