"""Tests for utils/plots/annotate.py: label text, label placement inside the image, and drawing with hidden labels."""

from __future__ import annotations

import numpy as np
import pytest

from utils.plots.annotate import draw, label_rectangle, label_text


@pytest.mark.parametrize(
    "hide_labels, hide_conf, expected",
    [(False, False, "cross 0.87"), (False, True, "cross"), (True, False, None), (True, True, None)],
)
def test_label_text_follows_yolov5(hide_labels: bool, hide_conf: bool, expected: str | None) -> None:
    assert label_text("cross", 0.8749, hide_labels, hide_conf) == expected


@pytest.mark.parametrize(
    "box, label_size, image_size, expected",
    [
        ((50, 40, 90, 80), (30, 12), (128, 96), (50, 28, 80, 40)),  # room above: sits on the box's top edge
        ((50, 5, 90, 80), (30, 12), (128, 96), (50, 5, 80, 17)),  # no room above: just inside the top edge
        ((110, 0, 128, 20), (40, 12), (128, 96), (88, 0, 128, 12)),  # top-right corner: inside, moved left
        ((-3, -2, 20, 20), (30, 12), (128, 96), (0, 0, 30, 12)),  # a box past the top-left corner
        ((100, 90, 120, 96), (30, 12), (128, 96), (98, 78, 128, 90)),  # near the bottom: above still fits
        ((10, 2, 20, 8), (30, 12), (128, 10), (10, 0, 40, 12)),  # taller than the image: from its top
        ((60, 40, 90, 80), (200, 12), (128, 96), (0, 28, 200, 40)),  # wider than the image: from its left
    ],
)
def test_label_rectangle(box: tuple, label_size: tuple, image_size: tuple, expected: tuple) -> None:
    assert label_rectangle(box, label_size, image_size) == expected


def test_label_rectangle_stays_inside_the_image_and_on_its_box() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        image_width, image_height = rng.integers(16, 300, size=2)
        label_width, label_height = rng.integers(1, image_width + 1), rng.integers(1, image_height + 1)
        x1, x2 = np.sort(rng.uniform(0, image_width, size=2))
        y1, y2 = np.sort(rng.uniform(0, image_height, size=2))
        left, top, right, bottom = label_rectangle((x1, y1, x2, y2), (label_width, label_height),
                                                   (image_width, image_height))  # fmt: skip
        assert 0 <= left and right <= image_width and 0 <= top and bottom <= image_height
        assert (right - left, bottom - top) == (label_width, label_height)
        if int(y1) >= label_height:  # it fits above the box, so it sits right on the box's top edge
            assert bottom == int(y1)
        if int(x1) + label_width <= image_width:  # it fits at the box's left edge, so it starts there
            assert left == int(x1)


def white_pixels(image: np.ndarray) -> int:
    """Label text pixels: white on class 0's colour (56, 56, 255), the colour of boxes and fills."""
    return int((image.min(axis=2) > 128).sum())


def test_a_label_in_the_top_right_corner_is_drawn_whole() -> None:
    """yolov5 (and we, before) drew 'cross 0.90' from the box's left edge past the image's right edge: 'cros'."""
    detection = [0.9, 0]
    corner = draw(np.zeros((64, 128, 3), np.uint8), np.array([[100, 0, 127, 30, *detection]]), ["cross"], 2)
    middle = draw(np.zeros((200, 300, 3), np.uint8), np.array([[100, 100, 150, 150, *detection]]), ["cross"], 2)
    assert white_pixels(corner) == white_pixels(middle) > 0
    label_rows = corner[2:10]  # below the box's top line
    assert (label_rows[:, :100] == (56, 56, 255)).all(axis=2).any()  # moved left of the box to fit


def test_hide_labels_draws_only_the_box_and_hide_conf_a_shorter_label() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    detections = np.array([[20, 30, 50, 60, 0.9, 0]])
    variants = ((False, False), (False, True), (True, False))  # (hide_labels, hide_conf)
    full, name_only, box_only = (draw(image, detections, ["bee"], 2, *hide) for hide in variants)
    assert full[:27].any() and not box_only[:27].any()  # the label sits above the box's top line (y 29..31)
    assert (box_only[30:60, 20] != 0).any()  # the box is still drawn
    assert 0 < white_pixels(name_only) < white_pixels(full)
    assert white_pixels(box_only) == 0
