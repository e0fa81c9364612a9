"""Inference on images and videos: a model with its settings as a callable, and annotated outputs per file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.boxes import scale_boxes
from utils.data.augment import letterbox
from utils.data.sources import is_video, read_frames
from utils.evaluation.label_txt import write_label_txt
from utils.evaluation.postprocess import non_max_suppression
from utils.plots.annotate import draw


@dataclass(frozen=True)
class Detector:
    """A model with its inference settings: BGR image in, (n, 6) x1, y1, x2, y2, conf, cls in its pixels out."""

    model: torch.nn.Module
    names: list[str]
    device: torch.device
    img_size: int
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    classes: list[int] | None = None
    max_det: int = 1000

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        stride = int(self.model.stride.max())
        padded, _, _ = letterbox(image, self.img_size, auto=True, stride=stride)
        tensor = torch.from_numpy(np.ascontiguousarray(padded[:, :, ::-1].transpose(2, 0, 1))).to(self.device)
        decoded, _ = self.model(tensor[None].float() / 255)
        (detections,) = non_max_suppression(
            decoded, self.conf_thres, self.iou_thres, self.classes, max_det=self.max_det
        )
        detections[:, :4] = scale_boxes(detections[:, :4], padded.shape[:2], image.shape[:2])
        return detections.cpu().numpy()


def summary(detections: np.ndarray, names: list[str]) -> str:
    """'2 circle, 1 star' style count of detections per class."""
    classes, counts = np.unique(detections[:, 5].astype(int), return_counts=True)
    return ", ".join(f"{count} {names[class_id]}" for class_id, count in zip(classes, counts)) or "no detections"


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
