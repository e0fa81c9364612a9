"""Tests for utils/boxes.py: format round trips, clipping, letterbox scaling, areas and complete IoU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.boxes import (
    box_area,
    clip_boxes,
    complete_iou,
    scale_boxes,
    xywh2xyxy,
    xywhn2xyxy,
    xyxy2xywh,
    xyxy2xywhn,
)

KINDS = ["torch", "numpy"]


def make(values: list | np.ndarray, kind: str) -> torch.Tensor | np.ndarray:
    """Float32 boxes as a tensor or an array."""
    return torch.tensor(np.asarray(values), dtype=torch.float32) if kind == "torch" else np.asarray(values, np.float32)


def assert_boxes(actual: torch.Tensor | np.ndarray, expected: list | np.ndarray, kind: str, atol: float = 1e-4) -> None:
    """Same kind as the input and close to ``expected``."""
    if kind == "torch":
        assert isinstance(actual, torch.Tensor)
        torch.testing.assert_close(actual, make(expected, kind), rtol=1e-5, atol=atol)
    else:
        assert isinstance(actual, np.ndarray)
        np.testing.assert_allclose(actual, np.asarray(expected, np.float32), rtol=1e-5, atol=atol)


def random_xywhn(count: int = 16, seed: int = 0) -> np.ndarray:
    """(count, 4) normalised xywh boxes that lie inside the image."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(0.05, 0.5, (count, 2))
    centre = rng.uniform(size / 2, 1 - size / 2)
    return np.concatenate((centre, size), 1)


@pytest.mark.parametrize("kind", KINDS)
def test_xywh_xyxy_round_trip(kind: str) -> None:
    boxes = random_xywhn() * 640
    assert_boxes(xyxy2xywh(xywh2xyxy(make(boxes, kind))), boxes, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_xywh2xyxy_by_hand(kind: str) -> None:
    assert_boxes(xywh2xyxy(make([[50, 40, 20, 10]], kind)), [[40, 35, 60, 45]], kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("width", "height"), [(640, 480), (320, 320), (1, 1), (1280, 720), (37, 913)])
def test_xywhn_xyxy_round_trip(kind: str, width: int, height: int) -> None:
    boxes = random_xywhn()
    assert_boxes(xyxy2xywhn(xywhn2xyxy(make(boxes, kind), width, height), width, height), boxes, kind, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_xywhn2xyxy_adds_the_padding(kind: str) -> None:
    # x1 = 640 * (0.5 - 0.1) + 10, y1 = 480 * (0.5 - 0.2) + 20, and so on.
    pixels = xywhn2xyxy(make([[0.5, 0.5, 0.2, 0.4]], kind), 640, 480, pad_x=10, pad_y=20)
    assert_boxes(pixels, [[266, 164, 394, 356]], kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "convert",
    [xywh2xyxy, xyxy2xywh, lambda b: xywhn2xyxy(b, 640, 480, 3, 4), lambda b: xyxy2xywhn(b, 640, 480)],
    ids=["xywh2xyxy", "xyxy2xywh", "xywhn2xyxy", "xyxy2xywhn"],
)
def test_conversions_keep_empty_inputs_empty(kind: str, convert) -> None:
    out = convert(make(np.zeros((0, 4)), kind))
    assert isinstance(out, torch.Tensor if kind == "torch" else np.ndarray)
    assert tuple(out.shape) == (0, 4)


@pytest.mark.parametrize("kind", KINDS)
def test_clip_boxes_keeps_boxes_inside_and_leaves_inside_boxes_alone(kind: str) -> None:
    boxes = make([[-10, -5, 50, 700], [600, 30, 900, 60], [20, 30, 40, 60]], kind)
    clipped = clip_boxes(boxes, 480, 640)
    assert_boxes(clipped, [[0, 0, 50, 480], [600, 30, 640, 60], [20, 30, 40, 60]], kind)
    assert_boxes(boxes[0], [-10, -5, 50, 700], kind)  # the input is not modified


# (letterboxed (h, w), original (h, w)): wide, tall, square and upscaled originals.
SHAPES = [((320, 320), (200, 400)), ((320, 320), (400, 200)), ((640, 480), (480, 480)), ((640, 640), (100, 150))]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("from_shape", "to_shape"), SHAPES)
@pytest.mark.parametrize("record_ratio_pad", [False, True])
def test_scale_boxes_undoes_the_letterbox(
    kind: str, from_shape: tuple[int, int], to_shape: tuple[int, int], record_ratio_pad: bool
) -> None:
    boxes = random_xywhn()
    original = xywhn2xyxy(boxes, to_shape[1], to_shape[0])
    gain = min(from_shape[0] / to_shape[0], from_shape[1] / to_shape[1])
    pad_w, pad_h = (from_shape[1] - to_shape[1] * gain) / 2, (from_shape[0] - to_shape[0] * gain) / 2
    letterboxed = xywhn2xyxy(boxes, to_shape[1] * gain, to_shape[0] * gain, pad_w, pad_h)
    ratio_pad = ((gain, gain), (pad_w, pad_h)) if record_ratio_pad else None
    assert_boxes(scale_boxes(make(letterboxed, kind), from_shape, to_shape, ratio_pad), original, kind, atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_scale_boxes_by_hand(kind: str) -> None:
    # (200, 400) letterboxed into (320, 320): gain 0.8, image 320 x 160, 80 px of padding above and below.
    letterboxed = make([[80, 120, 240, 200], [0, 0, 320, 320]], kind)
    assert_boxes(scale_boxes(letterboxed, (320, 320), (200, 400)), [[100, 50, 300, 150], [0, 0, 400, 200]], kind)


@pytest.mark.parametrize("kind", KINDS)
def test_box_area_by_hand(kind: str) -> None:
    area = box_area(make([[0, 0, 4, 3], [1, 2, 6, 4], [5, 5, 5, 9]], kind))
    assert_boxes(area, [12, 10, 0], kind)


def test_complete_iou_of_identical_boxes_is_one() -> None:
    boxes = torch.tensor(random_xywhn() * 100, dtype=torch.float32)
    torch.testing.assert_close(complete_iou(boxes, boxes), torch.ones(len(boxes)), rtol=0, atol=1e-5)


def test_complete_iou_by_hand_and_of_far_apart_boxes() -> None:
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    other = torch.tensor([[1.0, 0.0, 2.0, 2.0], [100.0, 100.0, 2.0, 2.0]])
    # Shifted by 1: IoU 2 / 6, enclosing box 3 x 2 so the centre penalty is 1 / 13.
    ciou = complete_iou(box, other)
    torch.testing.assert_close(ciou[0], torch.tensor(1 / 3 - 1 / 13), rtol=0, atol=1e-5)
    assert ciou[1] < -0.9  # no overlap, and the centres are almost a diagonal apart


def test_complete_iou_is_symmetric() -> None:
    box1 = torch.tensor(random_xywhn(seed=1) * 100, dtype=torch.float32)
    box2 = torch.tensor(random_xywhn(seed=2) * 100, dtype=torch.float32)
    torch.testing.assert_close(complete_iou(box1, box2), complete_iou(box2, box1), rtol=0, atol=1e-6)
