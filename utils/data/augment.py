"""Image augmentations that keep boxes on their objects: letterbox, mosaic, perspective, HSV, flips, mixup, copy-paste.

Conventions: images are BGR uint8 (h, w, 3) as cv2 loads them; labels inside this module are float32 (n, 5)
``[cls, x1, y1, x2, y2]`` in pixels; segments are lists of (k, 2) float32 pixel polygons. Every random draw comes
from the ``numpy.random.Generator`` passed in, so a seed reproduces an augmented image exactly.
"""

from __future__ import annotations

import cv2
import numpy as np

from utils.boxes import box_area, box_candidates, xywhn2xyxy

PAD_VALUE = 114


def letterbox(
    image: np.ndarray,
    new_shape: int | tuple[int, int],
    color: tuple[int, int, int] = (PAD_VALUE, PAD_VALUE, PAD_VALUE),
    auto: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect ratio and pad to ``new_shape`` (h, w) -> (image, ratio, (pad_w, pad_h)).

    The padding is split evenly between both sides; ``auto`` pads only up to the next ``stride`` multiple.
    """
    height, width = image.shape[:2]
    new_height, new_width = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    ratio = min(new_height / height, new_width / width)
    if not scaleup:
        ratio = min(ratio, 1.0)
    resized_width, resized_height = int(round(width * ratio)), int(round(height * ratio))
    pad_w, pad_h = new_width - resized_width, new_height - resized_height
    if auto:
        pad_w, pad_h = pad_w % stride, pad_h % stride
    pad_w, pad_h = pad_w / 2, pad_h / 2
    if (resized_width, resized_height) != (width, height):
        image = cv2.resize(image, (resized_width, resized_height), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(pad_h - 0.1)), int(round(pad_h + 0.1))
    left, right = int(round(pad_w - 0.1)), int(round(pad_w + 0.1))
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return image, ratio, (pad_w, pad_h)


def augment_hsv(image: np.ndarray, rng: np.random.Generator, hgain: float, sgain: float, vgain: float) -> np.ndarray:
    """Random hue/saturation/value gains through lookup tables -> a new BGR image."""
    if not (hgain or sgain or vgain):
        return image
    gains = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, saturation, value = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    levels = np.arange(256, dtype=np.float32)
    lut_hue = ((levels * gains[0]) % 180).astype(np.uint8)
    lut_saturation = np.clip(levels * gains[1], 0, 255).astype(np.uint8)
    lut_value = np.clip(levels * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(saturation, lut_saturation), cv2.LUT(value, lut_value)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def _warp_points(points: np.ndarray, matrix: np.ndarray, projective: bool) -> np.ndarray:
    homogeneous = np.concatenate([points, np.ones((len(points), 1), np.float32)], 1) @ matrix.T
    return homogeneous[:, :2] / homogeneous[:, 2:3] if projective else homogeneous[:, :2]


def polygon_extents(polygons: np.ndarray, width: float, height: float) -> np.ndarray:
    """Exact xyxy extent of the part of each closed polygon (n, k, 2) inside the image -> (n, 4); zeros if none.

    Each edge is clipped to the image (Liang-Barsky), so a rotated object cut by the border gets a tight box
    instead of the clipped box of its corners.
    """
    start, end = polygons, np.roll(polygons, -1, axis=1)
    delta = end - start
    t_low, t_high = np.zeros(start.shape[:2]), np.ones(start.shape[:2])
    rejected = np.zeros(start.shape[:2], bool)
    for axis, limit in ((0, width), (1, height)):
        for p, q in ((-delta[..., axis], start[..., axis]), (delta[..., axis], limit - start[..., axis])):
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = q / p
            rejected |= (p == 0) & (q < 0)
            t_low = np.where(p < 0, np.maximum(t_low, ratio), t_low)
            t_high = np.where(p > 0, np.minimum(t_high, ratio), t_high)
    inside = ~rejected & (t_low <= t_high)
    first, second = start + t_low[..., None] * delta, start + t_high[..., None] * delta
    points = np.concatenate([first, second], 1)
    valid = np.concatenate([inside, inside], 1)
    low = np.where(valid[..., None], points, np.inf).min(1)
    high = np.where(valid[..., None], points, -np.inf).max(1)
    extents = np.concatenate([low, high], 1).astype(np.float32)
    extents[~valid.any(1)] = 0
    covering = ~valid.any(1) & [_contains(polygon, width / 2, height / 2) for polygon in polygons]
    extents[covering] = (0, 0, width, height)  # the object covers the whole image
    return extents


def _contains(polygon: np.ndarray, x: float, y: float) -> bool:
    return cv2.pointPolygonTest(polygon.astype(np.float32).reshape(-1, 1, 2), (float(x), float(y)), False) >= 0


def _perspective_matrix(
    shape: tuple[int, int], output: tuple[int, int], rng: np.random.Generator, hyp: dict
) -> tuple[np.ndarray, float]:
    """The 3x3 warp (centre, perspective, rotate+scale, shear, translate) and the scale it applied."""
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -shape[1] / 2, -shape[0] / 2
    perspective = np.eye(3)
    perspective[2, 0], perspective[2, 1] = rng.uniform(-hyp["perspective"], hyp["perspective"], 2)
    rotation = np.eye(3)
    angle = rng.uniform(-hyp["degrees"], hyp["degrees"])
    scale = rng.uniform(1 - hyp["scale"], 1 + hyp["scale"])
    rotation[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=scale)
    shear = np.eye(3)
    shear[0, 1], shear[1, 0] = np.tan(np.radians(rng.uniform(-hyp["shear"], hyp["shear"], 2)))
    translation = np.eye(3)
    translation[0, 2] = rng.uniform(0.5 - hyp["translate"], 0.5 + hyp["translate"]) * output[1]
    translation[1, 2] = rng.uniform(0.5 - hyp["translate"], 0.5 + hyp["translate"]) * output[0]
    return translation @ shear @ rotation @ perspective @ centre, scale


def random_perspective(
    image: np.ndarray,
    labels: np.ndarray,
    segments: list[np.ndarray],
    rng: np.random.Generator,
    hyp: dict,
    border: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Random rotation, scale, shear, translation and perspective (``hyp`` keys of those names).

    A negative ``border`` crops the output (mosaic: 2s -> s). Boxes follow the warp through their 4 corners, or
    through their polygon when segments exist, clipped exactly to the image; boxes that leave the image or get
    squashed are dropped (``box_candidates``).
    """
    output = (image.shape[0] + 2 * border[0], image.shape[1] + 2 * border[1])
    matrix, scale = _perspective_matrix(image.shape[:2], output, rng, hyp)
    projective = bool(hyp["perspective"])
    if border != (0, 0) or not np.allclose(matrix, np.eye(3)):
        size, fill = (output[1], output[0]), (PAD_VALUE, PAD_VALUE, PAD_VALUE)
        if projective:
            image = cv2.warpPerspective(image, matrix, dsize=size, borderValue=fill)
        else:
            image = cv2.warpAffine(image, matrix[:2], dsize=size, borderValue=fill)
    if not len(labels):
        return image, labels, []
    height, width = output
    use_segments = len(segments) == len(labels)
    if use_segments:
        warped = [_warp_points(segment, matrix, projective) for segment in segments]
        boxes = np.concatenate([polygon_extents(points[None], width, height) for points in warped])
    else:
        x1, y1, x2, y2 = labels[:, 1], labels[:, 2], labels[:, 3], labels[:, 4]
        corners = np.stack([x1, y1, x2, y1, x2, y2, x1, y2], 1).reshape(-1, 2).astype(np.float32)
        boxes = polygon_extents(_warp_points(corners, matrix, projective).reshape(-1, 4, 2), width, height)
    keep = box_candidates(labels[:, 1:5] * scale, boxes, area_thr=0.01 if use_segments else 0.1)
    labels = np.concatenate([labels[keep, :1], boxes[keep]], 1).astype(np.float32)
    kept_segments = [points for points, flag in zip(warped, keep) if flag] if use_segments else []
    return image, labels, kept_segments


def mosaic4(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    segments: list[list[np.ndarray]],
    img_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Tile 4 images (long side ``img_size``) around a random centre of a 2s x 2s canvas.

    ``labels`` are per image (n, 5) normalised xywh and ``segments`` normalised polygons; returns pixel xyxy labels
    and pixel segments on the canvas, clipped to it. Crop with ``random_perspective(..., border=(-s/2, -s/2))``.
    """
    s = img_size
    centre_x, centre_y = (int(v) for v in rng.uniform(s / 2, 3 * s / 2, 2))
    canvas = np.full((2 * s, 2 * s, 3), PAD_VALUE, np.uint8)
    all_labels, all_segments = [], []
    for position, (image, image_labels, image_segments) in enumerate(zip(images, labels, segments)):
        h, w = image.shape[:2]
        if position == 0:  # top left
            x1a, y1a, x2a, y2a = max(centre_x - w, 0), max(centre_y - h, 0), centre_x, centre_y
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif position == 1:  # top right
            x1a, y1a, x2a, y2a = centre_x, max(centre_y - h, 0), min(centre_x + w, 2 * s), centre_y
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif position == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(centre_x - w, 0), centre_y, centre_x, min(2 * s, centre_y + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # bottom right
            x1a, y1a, x2a, y2a = centre_x, centre_y, min(centre_x + w, 2 * s), min(2 * s, centre_y + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = image[y1b:y2b, x1b:x2b]
        shift_x, shift_y = x1a - x1b, y1a - y1b
        boxes = xywhn2xyxy(image_labels[:, 1:5], w, h, shift_x, shift_y)
        all_labels.append(np.concatenate([image_labels[:, :1], boxes], 1))
        all_segments += [segment * (w, h) + (shift_x, shift_y) for segment in image_segments]
    merged = np.concatenate(all_labels, 0).astype(np.float32) if all_labels else np.zeros((0, 5), np.float32)
    merged[:, 1:] = merged[:, 1:].clip(0, 2 * s)
    all_segments = [np.clip(segment, 0, 2 * s).astype(np.float32) for segment in all_segments]
    if len(all_segments) != len(merged):  # a mix of images with and without polygons: use boxes throughout
        all_segments = []
    return canvas, merged, all_segments


def mixup(
    image: np.ndarray, labels: np.ndarray, other_image: np.ndarray, other_labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images with a Beta(32, 32) ratio (near 0.5) and keep both label sets."""
    ratio = rng.beta(32.0, 32.0)
    blended = (image.astype(np.float32) * ratio + other_image.astype(np.float32) * (1 - ratio)).astype(np.uint8)
    return blended, np.concatenate([labels, other_labels], 0)


def _intersection_over_second_area(box: np.ndarray, boxes: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Intersection of ``box`` (4,) with each of ``boxes`` (n, 4) over each of ``boxes``' area."""
    width = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    height = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    return width * height / (box_area(boxes) + eps)


def copy_paste(
    image: np.ndarray, labels: np.ndarray, segments: list[np.ndarray], rng: np.random.Generator, probability: float
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Paste a mirrored copy of a random ``probability`` fraction of the objects (needs segments, else a no-op).

    A copy is pasted only where it covers less than 30% of every existing box, so objects stay visible.
    """
    if not probability or not len(segments) or len(segments) != len(labels):
        return image, labels, segments
    width = image.shape[1]
    mask = np.zeros(image.shape[:2], np.uint8)
    labels, segments = labels.copy(), list(segments)
    count = len(segments)
    for index in rng.permutation(count)[: round(probability * count)]:
        cls, x1, y1, x2, y2 = labels[index]
        mirrored_box = np.array([width - x2, y1, width - x1, y2], np.float32)
        if (_intersection_over_second_area(mirrored_box, labels[:, 1:5]) < 0.30).all():
            labels = np.concatenate([labels, [[cls, *mirrored_box]]], 0).astype(np.float32)
            mirrored = np.stack([width - segments[index][:, 0], segments[index][:, 1]], 1).astype(np.float32)
            segments.append(mirrored)
            cv2.drawContours(mask, [segments[index].astype(np.int32)], -1, 1, cv2.FILLED)
    if mask.any():
        flipped_image, flipped_mask = cv2.flip(image, 1), cv2.flip(mask, 1).astype(bool)
        image = image.copy()
        image[flipped_mask] = flipped_image[flipped_mask]
    return image, labels, segments


def flip_labels(labels: np.ndarray, horizontal: bool) -> np.ndarray:
    """Mirror normalised xywh labels (n, 5) left-right (``horizontal``) or up-down."""
    flipped = labels.copy()
    column = 1 if horizontal else 2
    flipped[:, column] = 1 - flipped[:, column]
    return flipped


def scale_labels_to_pixels(labels: np.ndarray, width: float, height: float, pad: tuple[float, float]) -> np.ndarray:
    """Normalised xywh labels (n, 5) -> pixel xyxy labels (n, 5) in an image resized to width x height and padded."""
    out = labels.copy()
    out[:, 1:] = xywhn2xyxy(labels[:, 1:], width, height, pad[0], pad[1])
    return out
