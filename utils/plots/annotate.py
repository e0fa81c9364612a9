"""Detections drawn onto images and videos: a box and a ``name conf`` label per detection, in its class colour."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from utils.data.sources import is_video, read_frames
from utils.evaluation.detector import Detector, summary
from utils.evaluation.label_txt import write_label_txt

PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
           (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
           (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203)]  # fmt: skip
FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_COLOUR = (255, 255, 255)


def label_text(name: str, conf: float, hide_labels: bool = False, hide_conf: bool = False) -> str | None:
    """A box's label as yolov5 writes it: ``name conf``, ``name`` with ``hide_conf``, none with ``hide_labels``."""
    if hide_labels:
        return None
    return name if hide_conf else f"{name} {conf:.2f}"


def label_rectangle(
    box: Sequence[float], label_size: tuple[int, int], image_size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Where a label of ``label_size`` (w, h) goes for ``box`` (x1, y1, x2, y2) in an image of ``image_size``
    (w, h): (x1, y1, x2, y2) pixels, ends exclusive.

    Above the box's top-left corner where it fits, else just inside the box's top edge; moved left or up where it
    would run past the image's right or bottom edge, so the whole label stays in the image (one wider or taller
    than the image starts at its left or top edge)."""
    label_width, label_height = label_size
    image_width, image_height = image_size
    left, top = int(box[0]), int(box[1])
    y1 = top - label_height if top - label_height >= 0 else top
    x1 = max(min(left, image_width - label_width), 0)
    y1 = max(min(y1, image_height - label_height), 0)
    return x1, y1, x1 + label_width, y1 + label_height


def draw_label(image: np.ndarray, box: Sequence[float], text: str, colour: tuple[int, int, int], scale: float) -> None:
    """Draw ``text`` in white on a ``colour`` rectangle at ``label_rectangle``'s place, in place."""
    (text_width, text_height), baseline = cv2.getTextSize(text, FONT, scale, 1)
    # One pixel of margin on each side; the baseline's depth keeps descenders (g, y) inside the rectangle.
    size = (text_width + 2, text_height + baseline + 2)
    x1, y1, x2, y2 = label_rectangle(box, size, (image.shape[1], image.shape[0]))
    cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), colour, -1)
    cv2.putText(image, text, (x1 + 1, y1 + 1 + text_height), FONT, scale, TEXT_COLOUR, 1, cv2.LINE_AA)


def draw(
    image: np.ndarray,
    detections: np.ndarray,
    names: list[str],
    thickness: int,
    hide_labels: bool = False,
    hide_conf: bool = False,
) -> np.ndarray:
    """A copy of ``image`` with each box and its label (``label_text``) drawn in its class colour.

    ``detections`` is (n, 6) x1, y1, x2, y2, conf, cls in the image's pixels."""
    image = image.copy()
    for x1, y1, x2, y2, conf, class_id in detections:
        colour = PALETTE[int(class_id) % len(PALETTE)]
        cv2.rectangle(image, (int(x1), int(y1)), (int(x2), int(y2)), colour, thickness, cv2.LINE_AA)
        text = label_text(names[int(class_id)], conf, hide_labels, hide_conf)
        if text:
            draw_label(image, (x1, y1, x2, y2), text, colour, thickness / 5)
    return image


def annotate_file(
    path: Path, detector: Detector, save_dir: Path, save_txt: bool = False, line_thickness: int = 2
) -> Iterator[tuple[int, str]]:
    """Detect on every frame of one image or video, write the annotated copy (and txt); yields a line per frame."""
    video = is_video(path)
    writer = None
    try:
        for frame_index, image, fps in read_frames(path):
            start = time.perf_counter()
            detections = detector(image)
            elapsed_ms = (time.perf_counter() - start) * 1000
            annotated = draw(image, detections, detector.names, line_thickness)
            if not video:
                cv2.imwrite(str(save_dir / path.name), annotated)
            else:
                if writer is None:
                    size = (image.shape[1], image.shape[0])
                    writer = cv2.VideoWriter(
                        str(save_dir / f"{path.stem}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, size
                    )
                writer.write(annotated)
            if save_txt:
                stem = f"{path.stem}_{frame_index}" if video else path.stem
                write_label_txt(save_dir / "labels" / f"{stem}.txt", detections, image.shape)
            yield frame_index, f"{summary(detections, detector.names)}, {elapsed_ms:.1f}ms"
    finally:
        if writer is not None:
            writer.release()
