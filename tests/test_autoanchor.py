"""Tests for utils/training/autoanchor.py: recall math, label sizes, k-means refit and check_anchors decisions."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from models.yolo import build_model
from utils.data.labels import label_sizes
from utils.training.autoanchor import best_possible_recall, check_anchors, kmean_anchors

DEFAULT_ANCHORS = np.array(
    [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198], [373, 326]], np.float32
)


def skewed_wh(count: int = 400, seed: int = 0) -> np.ndarray:
    """Very thin tall and very flat wide boxes, which the default anchors cannot reach within 4x."""
    rng = np.random.default_rng(seed)
    tall = np.stack((rng.uniform(3, 5, count), rng.uniform(150, 250, count)), 1)
    wide = np.stack((rng.uniform(200, 300, count), rng.uniform(3, 5, count)), 1)
    return np.concatenate((tall, wide)).astype(np.float32)


@pytest.mark.parametrize(
    "anchors, expected",
    [
        ([[10, 10]], (1 / 3, 1 / 3)),  # 40x10 is exactly 4x off: not a match (strictly inside the threshold)
        ([[10, 10], [40, 10]], (1.0, 1.0)),
        ([[10, 10], [20, 10], [40, 10]], (1.0, 2.0)),  # 20x10 fits all three boxes; 10x10 and 40x10 one each
    ],
)
def test_best_possible_recall_hand_example(anchors, expected) -> None:
    wh = np.array([[10, 10], [40, 10], [50, 10]], np.float32)
    bpr, above = best_possible_recall(np.array(anchors, np.float32), wh, anchor_t=4.0)
    assert (bpr, above) == pytest.approx(expected)


def test_best_possible_recall_accepts_tensors_and_zero_anchors() -> None:
    bpr, above = best_possible_recall(torch.tensor([[0.0, 1.0], [10.0, 10.0]]), np.array([[10.0, 12.0]]), 4.0)
    assert (bpr, above) == (1.0, 1.0)


def test_label_sizes_scales_to_long_side_and_drops_tiny_boxes() -> None:
    shapes = np.array([[640, 480], [100, 200]])
    labels = [
        np.array([[0, 0.5, 0.5, 0.5, 0.5], [1, 0.5, 0.5, 0.001, 0.001]], np.float32),
        np.array([[2, 0.5, 0.5, 0.1, 0.25]], np.float32),
    ]
    wh = label_sizes(shapes, labels, img_size=320)
    np.testing.assert_allclose(wh, [[160, 120], [16, 80]])
    assert wh.dtype == np.float32


def test_kmeans_improves_recall_on_skewed_labels() -> None:
    wh = skewed_wh()
    before, _ = best_possible_recall(DEFAULT_ANCHORS, wh, 4.0)
    anchors = kmean_anchors(wh, n=9, img_size=320, anchor_t=4.0)
    after, _ = best_possible_recall(anchors, wh, 4.0)
    assert before < 0.5 and after > 0.98
    assert anchors.shape == (9, 2) and (np.diff(anchors.prod(1)) >= 0).all()


@pytest.mark.parametrize("n", [3, 12])
def test_kmeans_is_seeded(n: int) -> None:
    wh = skewed_wh(count=5)  # 10 boxes: n=12 exercises the random fallback initialisation
    first = kmean_anchors(wh, n=n, img_size=256, anchor_t=4.0, generations=50, seed=3)
    again = kmean_anchors(wh, n=n, img_size=256, anchor_t=4.0, generations=50, seed=3)
    other = kmean_anchors(wh, n=n, img_size=256, anchor_t=4.0, generations=50, seed=4)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (n, 2) and not np.array_equal(first, other)


def test_check_anchors_replaces_poor_anchors() -> None:
    model = build_model("yolov5n", num_classes=1)
    wh = skewed_wh()
    assert check_anchors(model, wh, anchor_t=4.0, img_size=320) is True
    pixels = model.detect.anchors * model.stride.view(-1, 1, 1)
    bpr, _ = best_possible_recall(pixels, wh, 4.0)
    assert bpr > 0.98
    areas = pixels.prod(-1).flatten()
    assert (areas.diff() >= 0).all()  # smallest anchors on the finest level


def test_check_anchors_keeps_good_anchors(caplog) -> None:
    model = build_model("yolov5n", num_classes=1)
    before = model.detect.anchors.clone()
    rng = np.random.default_rng(0)
    wh = DEFAULT_ANCHORS[rng.integers(0, 9, 300)] * rng.uniform(0.8, 1.25, (300, 1))
    with caplog.at_level(logging.INFO, logger="utils.training.autoanchor"):
        assert check_anchors(model, wh, anchor_t=4.0, img_size=640) is False
    assert torch.equal(model.detect.anchors, before)
    assert len(caplog.records) == 1 and "good fit" in caplog.records[0].getMessage()


def test_check_anchors_with_placeholder_anchors() -> None:
    model = build_model("yolov5n", num_classes=1, anchors_per_level=2)
    wh = skewed_wh()
    assert check_anchors(model, wh, anchor_t=4.0, img_size=320) is True
    assert model.detect.anchors.shape == (3, 2, 2)
    bpr, _ = best_possible_recall(model.detect.anchors * model.stride.view(-1, 1, 1), wh, 4.0)
    assert bpr > 0.98


def test_check_anchors_without_labels() -> None:
    model = build_model("yolov5n", num_classes=1)
    before = model.detect.anchors.clone()
    assert check_anchors(model, np.zeros((0, 2)), anchor_t=4.0, img_size=320) is False
    assert torch.equal(model.detect.anchors, before)
