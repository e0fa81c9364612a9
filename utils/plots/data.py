"""Data plots written into a run folder: labels.jpg (label statistics) and train_batch*.jpg (augmented batches)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.boxes import xywhn2xyxy
from utils.data.labels import LabeledSplit

MAX_BATCH_IMAGES = 16
MAX_GRID_SIDE = 1920  # px; large batches are shrunk to stay readable and small on disk


def _class_colour(cls: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per class (golden-ratio hue steps)."""
    hue = int((cls * 0.618034 % 1.0) * 179)
    hsv = np.array([[[hue, 220, 255]]], np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def plot_labels(split_or_labels: LabeledSplit | list[np.ndarray], names: list[str], path: str | Path) -> Path:
    """labels.jpg: instances per class, box centres (x, y) and box sizes (w, h), all normalised."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_image = split_or_labels.labels if isinstance(split_or_labels, LabeledSplit) else split_or_labels
    labels = np.concatenate([np.asarray(lb, np.float32).reshape(-1, 5) for lb in per_image] or [np.zeros((0, 5))])
    classes = labels[:, 0].astype(int)
    figure, axes = plt.subplots(2, 2, figsize=(9, 9), tight_layout=True)
    counts = np.bincount(classes, minlength=len(names))[: len(names)]
    bars = axes[0, 0].bar(
        range(len(names)), counts, color=[np.array(_class_colour(c)[::-1]) / 255 for c in range(len(names))]
    )
    axes[0, 0].set_ylabel("instances")
    axes[0, 0].set_title(f"{len(labels)} boxes in {len(per_image)} images")
    if len(names) <= 30:
        axes[0, 0].set_xticks(range(len(names)), names, rotation=90, fontsize=8)
        axes[0, 0].bar_label(bars, fontsize=7)
    _draw_box_overlay(axes[0, 1], labels)
    axes[1, 0].hist2d(labels[:, 1], labels[:, 2], bins=40, range=[[0, 1], [0, 1]], cmap="Blues")
    axes[1, 0].set(xlabel="x", ylabel="y", title="box centres")
    axes[1, 0].invert_yaxis()
    axes[1, 1].hist2d(labels[:, 3], labels[:, 4], bins=40, range=[[0, 1], [0, 1]], cmap="Blues")
    axes[1, 1].set(xlabel="width", ylabel="height", title="box sizes")
    path = Path(path)
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return path


def _draw_box_overlay(axis, labels: np.ndarray, max_boxes: int = 1000) -> None:
    """Up to ``max_boxes`` boxes centred on one canvas, to show the spread of shapes."""
    canvas = np.full((500, 500, 3), 255, np.uint8)
    shown = labels[:max_boxes].copy()
    shown[:, 1:3] = 0.5
    for cls, *box in shown:
        x1, y1, x2, y2 = (int(v) for v in xywhn2xyxy(np.array(box), 500, 500))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), _class_colour(int(cls))[::-1], 1)
    axis.imshow(canvas)
    axis.set_title("box shapes")
    axis.axis("off")


def plot_batch(
    images: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    paths: list[str] | tuple[str, ...] | None,
    names: list[str],
    path: str | Path,
) -> Path:
    """Grid of up to 16 batch images (uint8 (b, 3, H, W) RGB, or float in [0, 1]) with their target boxes.

    ``targets`` is (n, 6) [image index, cls, x, y, w, h] normalised, or (n, 7) with a confidence last.
    """
    images = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    targets = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    if images.dtype != np.uint8:
        images = (images * 255).clip(0, 255).astype(np.uint8)
    count = min(len(images), MAX_BATCH_IMAGES)
    _, _, height, width = images.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    scale = min(1.0, MAX_GRID_SIDE / max(columns * width, rows * height))
    tile_h, tile_w = math.ceil(height * scale), math.ceil(width * scale)
    grid = np.full((rows * tile_h, columns * tile_w, 3), 255, np.uint8)
    for index in range(count):
        tile = np.ascontiguousarray(images[index].transpose(1, 2, 0)[:, :, ::-1])  # RGB CHW -> BGR HWC
        tile = cv2.resize(tile, (tile_w, tile_h)) if scale < 1 else tile
        _draw_targets(tile, targets[targets[:, 0] == index], names)
        if paths is not None:
            cv2.putText(tile, Path(paths[index]).name[:40], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1,
                        cv2.LINE_AA)  # fmt: skip
        top, left = (index // columns) * tile_h, (index % columns) * tile_w
        grid[top : top + tile_h, left : left + tile_w] = tile
        cv2.rectangle(grid, (left, top), (left + tile_w - 1, top + tile_h - 1), (255, 255, 255), 1)
    path = Path(path)
    cv2.imwrite(str(path), grid, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def _draw_targets(tile: np.ndarray, targets: np.ndarray, names: list[str]) -> None:
    height, width = tile.shape[:2]
    boxes = xywhn2xyxy(targets[:, 2:6], width, height) if len(targets) else np.zeros((0, 4))
    for target, box in zip(targets, boxes):
        cls = int(target[1])
        colour = _class_colour(cls)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(tile, (x1, y1), (x2, y2), colour, 1, cv2.LINE_AA)
        label = names[cls] if cls < len(names) else str(cls)
        if target.shape[0] > 6:
            label += f" {target[6]:.2f}"
        cv2.putText(tile, label, (x1, max(y1 - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.3, colour, 1, cv2.LINE_AA)
