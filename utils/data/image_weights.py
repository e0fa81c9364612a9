"""--image-weights: how often each training image is drawn, from its classes' rarity and the per-class mAP.

yolov5's ``labels_to_class_weights`` and ``labels_to_image_weights``: a class's weight is its inverse frequency
(normalised to sum 1) times ``(1 - mAP) ** 2``, and an image's weight is the sum of its objects' class weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def class_counts(labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """(images, num_classes) int: how many objects of each class every image has; labels (k, 5) [cls, ...]."""
    counts = [np.bincount(rows[:, 0].astype(int), minlength=num_classes) for rows in labels]
    return np.stack(counts) if counts else np.zeros((0, num_classes), np.int64)


def class_frequency_weights(labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """(num_classes,) inverse object frequency of each class, summing to 1; an absent class counts as one object."""
    totals = class_counts(labels, num_classes).sum(0).astype(np.float64)
    totals[totals == 0] = 1
    weights = 1 / totals
    return weights / weights.sum()


def image_weights(labels: Sequence[np.ndarray], num_classes: int, class_maps: np.ndarray) -> np.ndarray:
    """(images,) sampling weight of each image: the sum over its objects of ``frequency weight * (1 - mAP) ** 2``.

    ``class_maps``: (num_classes,) the last validation's mAP@0.5:0.95 per class (zeros before any). An image
    without objects weighs 0 and is not drawn, as in yolov5, unless no image weighs anything (then all weigh 1).
    """
    class_weights = class_frequency_weights(labels, num_classes) * (1 - np.asarray(class_maps, np.float64)) ** 2
    weights = (class_counts(labels, num_classes) * class_weights).sum(1)
    return weights if weights.sum() > 0 else np.ones(len(labels))


def draw_weighted(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """As many indices as there are weights, drawn with replacement in proportion to them (yolov5's
    ``random.choices(range(n), weights=iw, k=n)``)."""
    weights = np.asarray(weights, np.float64)
    return rng.choice(len(weights), size=len(weights), replace=True, p=weights / weights.sum())
