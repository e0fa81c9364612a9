"""Inference: a model with its settings as a callable, BGR image in, detections in its pixels out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from utils.boxes import scale_boxes
from utils.data.augment import letterbox
from utils.evaluation.postprocess import non_max_suppression


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
