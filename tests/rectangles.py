"""Test helpers: images of filled rectangles in distinct colours, and a check that boxes sit on their rectangles."""

from __future__ import annotations

import numpy as np

BOX_TOLERANCE_PX = 2
COLOUR_TOLERANCE = 40  # interpolated edge pixels blend with the background and fall outside this

# One distinct, saturated BGR colour per class; far from black, from the 114 grey padding and from each other.
COLOURS = np.array(
    [[0, 0, 255], [0, 255, 0], [255, 0, 0], [0, 255, 255], [255, 0, 255], [255, 255, 0], [0, 128, 255],
     [255, 128, 0], [128, 0, 255], [0, 255, 128], [255, 255, 255], [128, 255, 0]], np.uint8,
)  # fmt: skip


def rectangles_image(
    height: int, width: int, boxes: list[tuple[int, int, int, int]], colours: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Black image with filled xyxy pixel rectangles -> (BGR image, labels (n, 5) normalised xywh, class = colour)."""
    image = np.zeros((height, width, 3), np.uint8)
    rows = []
    for (x1, y1, x2, y2), colour in zip(boxes, colours):
        image[y1:y2, x1:x2] = COLOURS[colour]
        rows.append([colour, (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height])
    return image, np.array(rows, np.float32).reshape(-1, 5)


def colour_extent(image: np.ndarray, colour: int, region: np.ndarray) -> np.ndarray | None:
    """xyxy pixel-edge extent of the pixels of ``colour`` inside ``region`` (xyxy), or None when there are none."""
    height, width = image.shape[:2]
    x1, y1 = (max(int(np.floor(v)) - BOX_TOLERANCE_PX - 1, 0) for v in region[:2])
    x2, y2 = (
        min(int(np.ceil(region[2])) + BOX_TOLERANCE_PX + 1, width),
        min(int(np.ceil(region[3])) + BOX_TOLERANCE_PX + 1, height),
    )
    crop = image[y1:y2, x1:x2].astype(np.int32)
    distance = np.abs(crop - COLOURS[colour].astype(np.int32)).max(-1)
    ys, xs = np.nonzero(distance <= COLOUR_TOLERANCE)
    if len(xs) == 0:
        return None
    return np.array([xs.min() + x1, ys.min() + y1, xs.max() + 1 + x1, ys.max() + 1 + y1], np.float32)


def assert_boxes_on_objects(image: np.ndarray, boxes_xyxy: np.ndarray, classes: np.ndarray) -> None:
    """Each box must bound the pixels of its class colour found around it within ``BOX_TOLERANCE_PX``."""
    assert len(boxes_xyxy), "no boxes survived: the check would be vacuous"
    for box, cls in zip(boxes_xyxy, classes):
        extent = colour_extent(image, int(cls), box)
        assert extent is not None, f"box {box} of class {cls} has no pixels of its colour"
        np.testing.assert_allclose(extent, box, atol=BOX_TOLERANCE_PX, err_msg=f"class {cls}")


def assert_box_bounds_mask(box: np.ndarray, mask: np.ndarray) -> None:
    """Two-sided check against an anti-aliased object mask (uint8 coverage, 255 = fully inside).

    Every pixel at least half covered lies in the box, and the box reaches no further than the pixels with any
    coverage, both within ``BOX_TOLERANCE_PX``. Thin slivers where a tilted edge meets the image border are
    covered by less than half a pixel, so an exact extent is not defined there.
    """
    for threshold, name in ((128, "half-covered"), (1, "any-covered")):
        ys, xs = np.nonzero(mask >= threshold)
        assert len(xs), f"box {box}: no {name} pixels"
        extent = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        if name == "half-covered":  # the box must contain these pixels
            assert (extent[:2] >= box[:2] - BOX_TOLERANCE_PX).all() and (
                extent[2:] <= box[2:] + BOX_TOLERANCE_PX
            ).all(), f"box {box} misses {name} pixels spanning {extent}"
        else:  # and must not reach beyond these
            assert (box[:2] >= extent[:2] - BOX_TOLERANCE_PX).all() and (
                box[2:] <= extent[2:] + BOX_TOLERANCE_PX
            ).all(), f"box {box} reaches beyond {name} pixels spanning {extent}"
