"""Data plots: labels.jpg and train_batch*.jpg are written, decodable, and show the boxes they are given."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.plots.data import plot_batch, plot_labels


def test_plot_labels_writes_an_image(tmp_path: Path) -> None:
    labels = [np.array([[0, 0.5, 0.5, 0.2, 0.3], [2, 0.1, 0.8, 0.05, 0.05]], np.float32), np.zeros((0, 5))]
    path = plot_labels(labels, ["a", "b", "c"], tmp_path / "labels.jpg")
    image = cv2.imread(str(path))
    assert image is not None and min(image.shape[:2]) > 500


@pytest.mark.parametrize(("batch", "side"), [(1, 64), (5, 96), (20, 128)])
def test_plot_batch_grid_and_boxes(tmp_path: Path, batch: int, side: int) -> None:
    images = torch.zeros((batch, 3, side, side), dtype=torch.uint8)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.5, 0.5]])  # one box in the first image only
    path = plot_batch(images, targets, [f"img{i}.jpg" for i in range(batch)], ["a", "b"], tmp_path / "batch.jpg")
    grid = cv2.imread(str(path))
    columns = int(np.ceil(np.sqrt(min(batch, 16))))
    assert grid.shape[1] == columns * side
    first_tile, second_tile = grid[20 : side - 2, 2 : side - 2], grid[20 : side - 2, side + 2 : 2 * side - 2]
    assert first_tile.max() > 100  # the box outline and its label
    if batch > 1:
        assert second_tile.max() < 60  # nothing drawn where there is no target (JPEG noise only)
