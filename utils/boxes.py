"""Box formats, conversions and IoU variants shared by data, loss, metrics and post-processing.

Formats: ``xyxy`` is (x1, y1, x2, y2) corners; ``xywh`` is (x_center, y_center, width, height).
A trailing ``n`` means normalised to [0, 1] by the image width and height.
Every function takes numpy arrays or torch tensors of shape (..., 4) and returns the same kind.
"""

from __future__ import annotations

import math

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def _clone(boxes: Array) -> Array:
    return boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, dtype=np.float32, copy=True)


def xywh2xyxy(boxes: Array) -> Array:
    """(..., 4) xywh -> (..., 4) xyxy."""
    out = _clone(boxes)
    out[..., 0] = boxes[..., 0] - boxes[..., 2] / 2
    out[..., 1] = boxes[..., 1] - boxes[..., 3] / 2
    out[..., 2] = boxes[..., 0] + boxes[..., 2] / 2
    out[..., 3] = boxes[..., 1] + boxes[..., 3] / 2
    return out


def xyxy2xywh(boxes: Array) -> Array:
    """(..., 4) xyxy -> (..., 4) xywh."""
    out = _clone(boxes)
    out[..., 0] = (boxes[..., 0] + boxes[..., 2]) / 2
    out[..., 1] = (boxes[..., 1] + boxes[..., 3]) / 2
    out[..., 2] = boxes[..., 2] - boxes[..., 0]
    out[..., 3] = boxes[..., 3] - boxes[..., 1]
    return out


def xywhn2xyxy(boxes: Array, width: float, height: float, pad_x: float = 0.0, pad_y: float = 0.0) -> Array:
    """Normalised xywh -> pixel xyxy in an image of ``width`` x ``height``, shifted by the padding."""
    out = _clone(boxes)
    out[..., 0] = width * (boxes[..., 0] - boxes[..., 2] / 2) + pad_x
    out[..., 1] = height * (boxes[..., 1] - boxes[..., 3] / 2) + pad_y
    out[..., 2] = width * (boxes[..., 0] + boxes[..., 2] / 2) + pad_x
    out[..., 3] = height * (boxes[..., 1] + boxes[..., 3] / 2) + pad_y
    return out


def xyxy2xywhn(boxes: Array, width: float, height: float) -> Array:
    """Pixel xyxy -> normalised xywh in an image of ``width`` x ``height``."""
    out = xyxy2xywh(boxes)
    out[..., 0] /= width
    out[..., 2] /= width
    out[..., 1] /= height
    out[..., 3] /= height
    return out


def clip_boxes(boxes: Array, height: float, width: float) -> Array:
    """Clip pixel xyxy boxes to the image, returning a new array."""
    out = _clone(boxes)
    if isinstance(out, torch.Tensor):
        out[..., 0::2] = out[..., 0::2].clamp(0, width)
        out[..., 1::2] = out[..., 1::2].clamp(0, height)
    else:
        out[..., 0::2] = out[..., 0::2].clip(0, width)
        out[..., 1::2] = out[..., 1::2].clip(0, height)
    return out


def scale_boxes(
    boxes: Array,
    from_shape: tuple[int, int],
    to_shape: tuple[int, int],
    ratio_pad: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> Array:
    """Map pixel xyxy boxes from a letterboxed image of ``from_shape`` (h, w) back to the original ``to_shape``.

    ``ratio_pad`` is ``((ratio_h, ratio_w), (pad_w, pad_h))`` as recorded by the letterbox; without it the
    letterbox is recomputed from the two shapes.
    """
    if ratio_pad is None:
        gain = min(from_shape[0] / to_shape[0], from_shape[1] / to_shape[1])
        pad_w = (from_shape[1] - to_shape[1] * gain) / 2
        pad_h = (from_shape[0] - to_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        pad_w, pad_h = ratio_pad[1]
    out = _clone(boxes)
    out[..., 0::2] = (out[..., 0::2] - pad_w) / gain
    out[..., 1::2] = (out[..., 1::2] - pad_h) / gain
    return clip_boxes(out, to_shape[0], to_shape[1])


def box_area(boxes: Array) -> Array:
    """(..., 4) xyxy -> (...) area."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_candidates(
    before: Array, after: Array, wh_thr: float = 2, ar_thr: float = 100, area_thr: float = 0.1, eps: float = 1e-16
) -> Array:
    """yolov5's rule after a warp: keep boxes (n, 4 xyxy) wider and higher than ``wh_thr`` px, with an aspect below
    ``ar_thr`` and more than ``area_thr`` of their scaled area before the warp -> bool (n,). numpy or torch."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    maximum = torch.maximum if isinstance(after, torch.Tensor) else np.maximum
    aspect = maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (aspect < ar_thr)


def complete_iou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise CIoU of (n, 4) xywh boxes -> (n,): IoU minus centre-distance and aspect-ratio penalties."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * (
        torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    enclose_w = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)
    enclose_h = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    diagonal_sq = enclose_w**2 + enclose_h**2 + eps
    centre_dist_sq = (x2 - x1) ** 2 + (y2 - y1) ** 2
    aspect = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))).pow(2)
    with torch.no_grad():
        alpha = aspect / (aspect - iou + (1 + eps))
    return iou - (centre_dist_sq / diagonal_sq + aspect * alpha)
