"""Detections as yolov5 label text: one ``cls x y w h`` row per detection, ``cls x y w h conf`` with ``save_conf``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.boxes import xyxy2xywhn


def write_label_txt(path: Path, detections: np.ndarray, image_shape: tuple[int, ...], save_conf: bool = False) -> None:
    """Write ``detections`` (n, 6) x1, y1, x2, y2, conf, cls in the pixels of an image of ``image_shape`` (h, w, ...)
    as rows normalised to that image, with the confidence as a sixth column when ``save_conf`` (yolov5's
    ``--save-conf``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boxes = xyxy2xywhn(detections[:, :4], image_shape[1], image_shape[0])
    rows = [
        f"{int(class_id)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" + (f" {conf:.6f}" if save_conf else "") + "\n"
        for (x, y, w, h), conf, class_id in zip(boxes, detections[:, 4], detections[:, 5])
    ]
    path.write_text("".join(rows))
