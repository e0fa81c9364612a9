"""Detections drawn onto images and videos: a box and a ``name conf`` label per detection, in its class colour."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from utils.data.sources import is_video, read_frames
from utils.evaluation.detector import Detector, summary
from utils.evaluation.label_txt import write_label_txt

PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
           (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
           (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203)]  # fmt: skip


def draw(image: np.ndarray, detections: np.ndarray, names: list[str], thickness: int) -> np.ndarray:
    """A copy of ``image`` with each box and a ``name conf`` label drawn in its class colour."""
    image = image.copy()
    for x1, y1, x2, y2, conf, class_id in detections:
        colour = PALETTE[int(class_id) % len(PALETTE)]
        top_left, bottom_right = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(image, top_left, bottom_right, colour, thickness, cv2.LINE_AA)
        label = f"{names[int(class_id)]} {conf:.2f}"
        (text_width, text_height), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, thickness / 5, 1)
        above = top_left[1] - text_height - 3 >= 0
        corner = (top_left[0], top_left[1] - text_height - 3 if above else top_left[1] + text_height + 3)
        cv2.rectangle(image, top_left, (top_left[0] + text_width, corner[1]), colour, -1, cv2.LINE_AA)
        text_y = top_left[1] - 2 if above else top_left[1] + text_height + 2
        cv2.putText(image, label, (top_left[0], text_y), cv2.FONT_HERSHEY_SIMPLEX, thickness / 5, (255, 255, 255), 1,
                    cv2.LINE_AA)  # fmt: skip
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
