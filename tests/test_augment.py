"""Augmentations keep boxes on their objects, respect their hyp keys and draw only from the generator passed in."""

from __future__ import annotations

import numpy as np
import pytest

from tests.rectangles import assert_box_bounds_mask, assert_boxes_on_objects, rectangles_image
from utils.boxes import box_candidates, xywhn2xyxy
from utils.data.augment import (
    augment_hsv,
    copy_paste,
    flip_labels,
    letterbox,
    mixup,
    mosaic4,
    random_perspective,
    scale_labels_to_pixels,
)

NO_WARP = {"degrees": 0.0, "translate": 0.0, "scale": 0.0, "shear": 0.0, "perspective": 0.0}
WARPS = {
    "degrees": {**NO_WARP, "degrees": 40.0},
    "translate": {**NO_WARP, "translate": 0.3},
    "scale": {**NO_WARP, "scale": 0.6},
    "shear": {**NO_WARP, "shear": 10.0},
    "perspective": {**NO_WARP, "perspective": 0.001},
    "all": {"degrees": 30.0, "translate": 0.2, "scale": 0.5, "shear": 5.0, "perspective": 0.0005},
}
BOXES = [(10, 12, 50, 40), (70, 20, 100, 90), (20, 70, 60, 110), (110, 60, 150, 100)]


def _scene() -> tuple[np.ndarray, np.ndarray]:
    image, labels = rectangles_image(128, 160, BOXES, [0, 1, 2, 3])
    return image, scale_labels_to_pixels(labels, 160, 128, (0, 0))


def _rectangle_polygons(labels: np.ndarray) -> list[np.ndarray]:
    return [np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32) for _, x1, y1, x2, y2 in labels]


@pytest.mark.parametrize("warp", WARPS, ids=list(WARPS))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_segments", [False, True], ids=["corners", "segments"])
def test_random_perspective_keeps_boxes_on_objects(warp: str, seed: int, with_segments: bool) -> None:
    """Warp one white object at a time with the same seed (hence the same matrix) and compare its box to it."""
    image, labels = _scene()
    segments = _rectangle_polygons(labels) if with_segments else []
    _, out_labels, _ = random_perspective(image, labels, segments, np.random.default_rng(seed), WARPS[warp])
    assert len(out_labels) >= 2
    for cls, *box in out_labels:
        mask = np.zeros_like(image)
        x1, y1, x2, y2 = (int(v) for v in labels[int(cls), 1:])
        mask[y1:y2, x1:x2] = 255
        warped_mask, _, _ = random_perspective(mask, labels, segments, np.random.default_rng(seed), WARPS[warp])
        assert_box_bounds_mask(np.array(box), warped_mask[..., 0])


def test_random_perspective_is_identity_without_warp() -> None:
    image, labels = _scene()
    warped, out_labels, _ = random_perspective(image, labels, [], np.random.default_rng(0), NO_WARP)
    np.testing.assert_array_equal(warped, image)
    np.testing.assert_allclose(out_labels, labels)


def test_random_perspective_drops_boxes_that_leave_the_image() -> None:
    image, labels = _scene()
    hyp = {**NO_WARP, "translate": 0.9}
    counts = [len(random_perspective(image, labels, [], np.random.default_rng(s), hyp)[1]) for s in range(10)]
    assert min(counts) < len(labels)


@pytest.mark.parametrize(
    ("before", "after", "kept"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], True),
        ([0, 0, 10, 10], [0, 0, 1.5, 10], False),  # narrower than 2 px
        ([0, 0, 100, 100], [0, 0, 300, 2.5], False),  # aspect above 100
        ([0, 0, 100, 100], [0, 0, 30, 30], False),  # keeps 9% of its area
        ([0, 0, 100, 100], [0, 0, 40, 40], True),
    ],
)
def test_box_candidates_rule(before: list[float], after: list[float], kept: bool) -> None:
    assert box_candidates(np.array([before], float), np.array([after], float))[0] == kept


@pytest.mark.parametrize(("height", "width", "target"), [(96, 160, 128), (160, 96, 128), (50, 60, (96, 64))])
def test_letterbox_keeps_boxes_on_objects(height: int, width: int, target: int | tuple[int, int]) -> None:
    image, labels = rectangles_image(height, width, [(5, 8, 40, 30), (30, 35, 50, 48)], [4, 5])
    boxed, ratio, pad = letterbox(image, target)
    expected = (target, target) if isinstance(target, int) else target
    assert boxed.shape[:2] == expected
    pixel_labels = scale_labels_to_pixels(labels, width * ratio, height * ratio, pad)
    assert_boxes_on_objects(boxed, pixel_labels[:, 1:], pixel_labels[:, 0])


def test_letterbox_auto_pads_to_stride_multiple() -> None:
    boxed, ratio, _ = letterbox(np.zeros((100, 200, 3), np.uint8), 256, auto=True, stride=32)
    assert ratio == pytest.approx(1.28) and boxed.shape[:2] == (128, 256)


@pytest.mark.parametrize("horizontal", [True, False])
def test_flip_keeps_boxes_on_objects(horizontal: bool) -> None:
    image, labels = rectangles_image(90, 120, [(5, 10, 40, 30), (60, 50, 110, 85)], [6, 7])
    flipped_image = np.fliplr(image) if horizontal else np.flipud(image)
    flipped = flip_labels(labels, horizontal)
    assert_boxes_on_objects(flipped_image, xywhn2xyxy(flipped[:, 1:], 120, 90), flipped[:, 0])


def _mosaic_inputs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, labels = [], []
    for index, (height, width) in enumerate([(96, 128), (128, 96), (128, 128), (80, 128)]):
        image, image_labels = rectangles_image(height, width, [(10, 10, 40, 50), (50, 60, 90, 75)],
                                               [2 * index, 2 * index + 1])  # fmt: skip
        images.append(image)
        labels.append(image_labels)
    return images, labels


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mosaic_keeps_boxes_on_objects_and_every_label(seed: int) -> None:
    images, labels = _mosaic_inputs()
    canvas, out_labels, segments = mosaic4(images, labels, [[] for _ in images], 128, np.random.default_rng(seed))
    assert canvas.shape == (256, 256, 3) and segments == []
    assert len(out_labels) == sum(len(image_labels) for image_labels in labels)
    visible = out_labels[(out_labels[:, 3] - out_labels[:, 1] > 0) & (out_labels[:, 4] - out_labels[:, 2] > 0)]
    assert_boxes_on_objects(canvas, visible[:, 1:], visible[:, 0])
    cropped, cropped_labels, _ = random_perspective(
        canvas, out_labels, [], np.random.default_rng(seed), {**NO_WARP, "scale": 0.3}, border=(-64, -64)
    )
    assert cropped.shape == (128, 128, 3)
    if len(cropped_labels):
        assert_boxes_on_objects(cropped, cropped_labels[:, 1:], cropped_labels[:, 0])


def test_mixup_keeps_both_label_sets_and_blends_near_half() -> None:
    first, second = np.full((32, 32, 3), 200, np.uint8), np.zeros((32, 32, 3), np.uint8)
    labels_a, labels_b = np.ones((2, 5), np.float32), np.zeros((3, 5), np.float32)
    blended, labels = mixup(first, labels_a, second, labels_b, np.random.default_rng(0))
    assert len(labels) == 5
    np.testing.assert_array_equal(labels[:2], labels_a)
    assert 60 < blended.mean() < 140


def test_copy_paste_adds_mirrored_objects_only_with_segments() -> None:
    image, labels = rectangles_image(96, 160, [(10, 20, 40, 60)], [0])
    pixel_labels = scale_labels_to_pixels(labels, 160, 96, (0, 0))
    unchanged = copy_paste(image, pixel_labels, [], np.random.default_rng(0), 1.0)
    assert len(unchanged[1]) == 1
    pasted, out_labels, segments = copy_paste(image, pixel_labels, _rectangle_polygons(pixel_labels),
                                              np.random.default_rng(0), 1.0)  # fmt: skip
    assert len(out_labels) == len(segments) == 2
    np.testing.assert_allclose(out_labels[1, 1:], [120, 20, 150, 60])
    assert_boxes_on_objects(pasted, out_labels[:, 1:], out_labels[:, 0])


def test_hsv_changes_colours_but_not_geometry() -> None:
    image, _ = rectangles_image(64, 64, [(8, 8, 40, 40)], [1])
    image[48:, 48:] = (30, 90, 150)
    shifted = augment_hsv(image, np.random.default_rng(0), 0.015, 0.7, 0.4)
    assert shifted.shape == image.shape and not np.array_equal(shifted, image)
    np.testing.assert_array_equal(shifted[60:, :40], 0)  # black stays black
    assert augment_hsv(image, np.random.default_rng(0), 0, 0, 0) is image


def test_same_generator_seed_reproduces_the_warp() -> None:
    image, labels = _scene()
    first = random_perspective(image, labels, [], np.random.default_rng(7), WARPS["all"])
    second = random_perspective(image, labels, [], np.random.default_rng(7), WARPS["all"])
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
