"""The built-in "shapes" dataset: procedurally drawn shapes on cluttered backgrounds, deterministic given a seed.

Every image is drawn from its own generator seeded with ``[seed, split, index]``, so a dataset is reproducible
and any single image can be regenerated alone. Boxes are the tight extent of each object's *visible* pixels
(after later objects occlude it). Only box labels are written, so copy-paste is a no-op on this dataset.

Difficulty is tuned so that the nano model, trained from scratch, learns it within a CPU budget: objects span
8 px to half the image, but only SMALL_OBJECT_FRACTION of them are below 16 px; most objects of a class share a
vivid hue band (colour is a strong cue, shape settles the rest); and distractors take any colour.
GENERATOR_VERSION is stamped into every generated folder, so a change here regenerates older copies.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from utils.errors import UserError

GENERATOR_VERSION = 2  # bump with any change that alters the drawn data, so older copies are regenerated
STAMP_FILE = "generated.json"  # written last into a generated dataset: what made it
SHAPE_NAMES = ["circle", "ring", "square", "triangle", "star", "cross", "hexagon", "arrow"]
EMPTY_IMAGE_FRACTION = 0.05
MIN_VISIBLE_FRACTION = 0.5  # an earlier object may lose at most half of its pixels to later ones
MIN_OBJECT_SIZE = 8
SMALL_OBJECT_SIZE = 16  # objects below this many pixels are drawn, but rarely: their class is barely visible
SMALL_OBJECT_FRACTION = 0.15
MAX_OBJECTS = 6
CLASS_HUE_FRACTION = 0.9  # share of objects drawn in their class's hue band; colour is a cue, not the answer
CLASS_COLOUR_MIN_SATURATION_VALUE = 110  # class-band colours are vivid enough for their hue to show
CLASS_HUE_SPREAD = 8  # half width of a class's hue band, OpenCV hue units (180 = full circle; bands are 22.5 apart)
JPEG_QUALITY_RANGE = (70, 96)
CHUNK = 50  # images per process task
MAX_PROCESSES = 8
MIN_IMAGES_FOR_PROCESSES = 100  # below this, starting processes costs more than it saves

Polygon = np.ndarray  # (k, 2) float32 points in patch pixels, centred on (0, 0)


def _regular_polygon(sides: int, rng: np.random.Generator) -> Polygon:
    angles = np.arange(sides) * 2 * np.pi / sides
    return np.stack([np.cos(angles), np.sin(angles)], 1)


def _ellipse(rng: np.random.Generator) -> Polygon:
    return _regular_polygon(48, rng)


def _triangle(rng: np.random.Generator) -> Polygon:
    points = _regular_polygon(3, rng)
    return points + rng.uniform(-0.12, 0.12, points.shape)  # not always equilateral


def _star(rng: np.random.Generator) -> Polygon:
    tips = int(rng.integers(5, 7))
    inner = rng.uniform(0.38, 0.5)
    angles = np.arange(2 * tips) * np.pi / tips
    radius = np.where(np.arange(2 * tips) % 2 == 0, 1.0, inner)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], 1)


def _cross(rng: np.random.Generator) -> Polygon:
    t = rng.uniform(0.28, 0.4)  # half arm thickness
    return np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t],
                     [-1, -t], [-t, -t]])  # fmt: skip


def _arrow(rng: np.random.Generator) -> Polygon:
    shaft, head_width, head_start = rng.uniform(0.16, 0.26), rng.uniform(0.55, 0.75), rng.uniform(-0.05, 0.25)
    return np.array([[-1, -shaft], [head_start, -shaft], [head_start, -head_width], [1, 0], [head_start, head_width],
                     [head_start, shaft], [-1, shaft]])  # fmt: skip


# class -> (outline drawer, aspect range, may be drawn as an outline only)
SHAPES: dict[str, tuple[Callable[[np.random.Generator], Polygon], tuple[float, float], bool]] = {
    "circle": (_ellipse, (0.88, 1.14), False),
    "ring": (_ellipse, (0.88, 1.14), False),
    "square": (
        lambda rng: _regular_polygon(4, rng) @ np.array([[0.7071, -0.7071], [0.7071, 0.7071]]),
        (0.8, 1.25),
        True,
    ),
    "triangle": (_triangle, (0.75, 1.33), True),
    "star": (_star, (0.85, 1.18), False),
    "cross": (_cross, (0.8, 1.25), False),
    "hexagon": (lambda rng: _regular_polygon(6, rng), (0.85, 1.18), True),
    "arrow": (_arrow, (0.75, 1.33), False),
}


def _smooth_noise(height: int, width: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] made by upsampling a coarse random grid."""
    coarse = rng.random((cells, cells), dtype=np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _random_colour(rng: np.random.Generator, hue: float | None = None, low: int = 40) -> np.ndarray:
    """A BGR colour of random saturation and value (from ``low``); of random hue unless ``hue`` (OpenCV units,
    0-180) is given."""
    hue = rng.integers(0, 180) if hue is None else hue % 180
    hsv = np.array([[[hue, rng.integers(low, 256), rng.integers(low, 256)]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _object_colour(class_index: int, rng: np.random.Generator) -> np.ndarray:
    """Most objects of a class share a hue band (as stop signs are mostly red); the rest take any hue."""
    if rng.random() >= CLASS_HUE_FRACTION:
        return _random_colour(rng)
    centre = class_index * 180 / len(SHAPE_NAMES)
    hue = round(centre + rng.uniform(-CLASS_HUE_SPREAD, CLASS_HUE_SPREAD))
    return _random_colour(rng, hue=hue, low=CLASS_COLOUR_MIN_SATURATION_VALUE)


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A textured backdrop: two-colour blend through smooth noise or a gradient, plus grain."""
    colour_a, colour_b = _random_colour(rng) * 0.8, _random_colour(rng) * 0.8
    if rng.random() < 0.5:
        weight = _smooth_noise(height, width, rng, int(rng.integers(2, 9)))
    else:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = xx * np.cos(angle) + yy * np.sin(angle)
        weight = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    image = colour_a * weight[..., None] + colour_b * (1 - weight[..., None])
    detail = _smooth_noise(height, width, rng, int(rng.integers(16, 48))) - 0.5
    image += detail[..., None] * rng.uniform(10, 60)
    return image.clip(0, 255)


def _draw_clutter(image: np.ndarray, rng: np.random.Generator) -> None:
    """Non-object distractors: lines, soft irregular blobs and text-like scribbles."""
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(0, 6))):
        points = rng.uniform(0, 1, (2, 2)) * (width, height)
        cv2.line(image, *(tuple(int(v) for v in p) for p in points), _random_colour(rng).tolist(),
                 int(rng.integers(1, 4)), cv2.LINE_AA)  # fmt: skip
    for _ in range(int(rng.integers(0, 4))):
        centre = rng.uniform(0, 1, 2) * (width, height)
        angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        wobble = sum(rng.uniform(0.12, 0.3) * np.sin(k * angles + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
        radius = rng.uniform(6, 0.25 * min(width, height))  # smooth amoeba outlines, unlike any shape class
        blob = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * (radius * np.maximum(1 + wobble, 0.3))[:, None]
        overlay = image.copy()
        cv2.fillPoly(overlay, [blob.astype(np.int32)], _random_colour(rng).tolist(), cv2.LINE_AA)
        alpha = rng.uniform(0.25, 0.7)
        image[:] = cv2.GaussianBlur(overlay, (0, 0), 1.5) * alpha + image * (1 - alpha)
    for _ in range(int(rng.integers(0, 4))):
        text = "".join(chr(int(c)) for c in rng.integers(97, 123, int(rng.integers(3, 9))))
        origin = (int(rng.uniform(0, 0.8) * width), int(rng.uniform(0.1, 1) * height))
        cv2.putText(image, text, origin, int(rng.choice([0, 1, 2, 3, 4, 6, 7])), rng.uniform(0.3, 0.8),
                    _random_colour(rng).tolist(), 1, cv2.LINE_AA)  # fmt: skip


def _object_patch(name: str, size: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one object in its own square patch -> (colour (s, s, 3) float32, alpha (s, s) float32 in [0, 1])."""
    make_polygon, (aspect_low, aspect_high), may_outline = SHAPES[name]
    aspect = rng.uniform(aspect_low, aspect_high)
    points = make_polygon(rng) * np.array([np.sqrt(aspect), 1 / np.sqrt(aspect)])
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = points @ rotation.T
    points *= size / 2 / np.abs(points).max()
    side = int(np.ceil(size)) + 6
    shift = 4  # sub-pixel precision for cv2 drawing
    polygon = np.round((points + side / 2) * (1 << shift)).astype(np.int32)
    mask = np.zeros((side, side), np.uint8)
    cv2.fillPoly(mask, [polygon], 255, cv2.LINE_AA, shift)
    if name == "ring":
        hole = np.round((points * rng.uniform(0.45, 0.7) + side / 2) * (1 << shift)).astype(np.int32)
        cv2.fillPoly(mask, [hole], 0, cv2.LINE_AA, shift)
    elif may_outline and size >= 24 and rng.random() < 0.3:
        thickness = max(2, int(size * rng.uniform(0.1, 0.18)))
        mask[:] = 0
        cv2.polylines(mask, [polygon], True, 255, thickness, cv2.LINE_AA, shift)
    colour = np.broadcast_to(_object_colour(SHAPE_NAMES.index(name), rng), (side, side, 3)).copy()
    texture = rng.random()
    if texture < 0.3:  # gradient fill
        colour *= np.linspace(rng.uniform(0.5, 1.0), rng.uniform(0.8, 1.3), side, dtype=np.float32)[None, :, None]
    elif texture < 0.5:  # stripes
        period = rng.uniform(3, 8)
        stripes = (np.sin(np.arange(side) * 2 * np.pi / period) > 0).astype(np.float32)
        colour *= (0.65 + 0.35 * stripes)[:, None, None]
    elif texture < 0.7:  # speckle
        colour += rng.normal(0, 18, colour.shape).astype(np.float32)
    return colour.clip(0, 255), mask.astype(np.float32) / 255


def _place(canvas_shape: tuple[int, int], side: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner for a patch; the object may hang up to ~30% over the border."""
    height, width = canvas_shape
    slack = int(side * 0.3)
    return int(rng.integers(-slack, max(width - side + slack, -slack + 1))), int(
        rng.integers(-slack, max(height - side + slack, -slack + 1))
    )


def _overlap(canvas_shape: tuple[int, int], patch_shape: tuple[int, ...], x: int, y: int) -> tuple[slice, ...] | None:
    """(canvas rows, canvas cols, patch rows, patch cols) where a patch at top-left (x, y) meets the canvas."""
    height, width = canvas_shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + patch_shape[1], width), min(y + patch_shape[0], height)
    if x1 <= x0 or y1 <= y0:
        return None
    return slice(y0, y1), slice(x0, x1), slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)


def _try_place(
    shape: tuple[int, int], solid: np.ndarray, masks: list[np.ndarray], visible: list[int], full: list[int], rng
) -> tuple[tuple[slice, ...], list[int]] | None:
    """Find a spot where the object is mostly inside the image and hides at most half of any earlier object.

    Returns the overlap slices and the pixels each earlier object would lose, or None after a few tries.
    """
    for _attempt in range(8):
        x, y = _place(shape, solid.shape[0], rng)
        slices = _overlap(shape, solid.shape, x, y)
        if slices is None or solid[slices[2:]].sum() < 0.6 * solid.sum():
            continue
        local = solid[slices[2:]]
        lost = [int((mask[slices[:2]] & local).sum()) for mask in masks]
        if all(v - lo >= MIN_VISIBLE_FRACTION * f for v, lo, f in zip(visible, lost, full)):
            return slices, lost
    return None


def render_image(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image -> (BGR uint8 (h, w, 3), labels float32 (n, 5) [cls, x, y, w, h] normalised)."""
    image = _background(height, width, rng)
    _draw_clutter(image, rng)
    num_objects = 0 if rng.random() < EMPTY_IMAGE_FRACTION else int(rng.integers(1, MAX_OBJECTS + 1))
    classes, masks, visible, full = [], [], [], []  # masks: bool (h, w) of each object's still-visible pixels
    largest = max(SMALL_OBJECT_SIZE + 1, 0.5 * max(height, width))
    for _ in range(num_objects):
        class_index = int(rng.integers(len(SHAPE_NAMES)))
        small = rng.random() < SMALL_OBJECT_FRACTION
        low, high = (MIN_OBJECT_SIZE, SMALL_OBJECT_SIZE) if small else (SMALL_OBJECT_SIZE, largest)
        size = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        colour, alpha = _object_patch(SHAPE_NAMES[class_index], size, rng)
        solid = alpha > 0.5
        placed = _try_place((height, width), solid, masks, visible, full, rng)
        if placed is None:
            continue
        (rows, cols, patch_rows, patch_cols), lost = placed
        local = solid[patch_rows, patch_cols]
        weight = alpha[patch_rows, patch_cols, None]
        image[rows, cols] = colour[patch_rows, patch_cols] * weight + image[rows, cols] * (1 - weight)
        for index, mask in enumerate(masks):
            mask[rows, cols] &= ~local
            visible[index] -= lost[index]
        mask = np.zeros((height, width), bool)
        mask[rows, cols] = local
        masks.append(mask)
        visible.append(int(local.sum()))
        full.append(int(solid.sum()))
        classes.append(class_index)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 0.9))
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(0, 6)
    image = image.clip(0, 255).astype(np.uint8)
    rows = []
    for class_index, mask in zip(classes, masks):
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1  # pixel edges, not centres
        rows.append([class_index, (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height])
    return image, np.array(rows, np.float32).reshape(-1, 5)


def image_shape(img_size: int, rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) with the long side ``img_size`` and aspect w/h in [0.75, 1.33]."""
    aspect = float(np.exp(rng.uniform(np.log(0.75), np.log(4 / 3))))
    short = max(MIN_OBJECT_SIZE * 2, int(round(img_size * min(aspect, 1 / aspect))))
    return (short, img_size) if aspect >= 1 else (img_size, short)


def _write_image(image_dir: Path, label_dir: Path, split_id: int, index: int, seed: int, img_size: int) -> None:
    rng = np.random.default_rng([seed, split_id, index])
    height, width = image_shape(img_size, rng)
    image, labels = render_image(height, width, rng)
    quality = int(rng.integers(*JPEG_QUALITY_RANGE))
    cv2.imwrite(str(image_dir / f"{index:06d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if len(labels):  # no label file at all for an empty image, like many real datasets
        lines = [f"{int(row[0])} {row[1]:.6f} {row[2]:.6f} {row[3]:.6f} {row[4]:.6f}" for row in labels]
        (label_dir / f"{index:06d}.txt").write_text("\n".join(lines) + "\n")


def _write_chunk(root: Path, split: str, split_id: int, indices: range, seed: int, img_size: int) -> None:
    cv2.setNumThreads(1)  # parallelism comes from the processes
    for index in indices:
        _write_image(root / "images" / split, root / "labels" / split, split_id, index, seed, img_size)


def _write_splits(root: Path, counts: dict[str, int], seed: int, img_size: int) -> None:
    """Draw all images, in a few processes when there are many (each image has its own seed, so same result)."""
    jobs = []
    for split_id, (split, count) in enumerate(counts.items()):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        jobs += [(root, split, split_id, range(start, min(start + CHUNK, count)), seed, img_size)
                 for start in range(0, count, CHUNK)]  # fmt: skip
    workers = min(os.cpu_count() or 1, len(jobs), MAX_PROCESSES)
    if workers <= 1 or sum(counts.values()) < MIN_IMAGES_FOR_PROCESSES:
        for job in jobs:
            _write_chunk(*job)
        return
    # spawn, not fork: the caller may hold torch threads, which a fork can deadlock on
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_write_chunk, *zip(*jobs)))


def generate_dataset(
    root: str | Path, seed: int = 0, num_train: int = 400, num_val: int = 100, img_size: int = 256
) -> Path:
    """Write the shapes dataset in coco128 layout (images/{train,val}, labels/{train,val}) under ``root``.

    The folder appears atomically: it is built in a sibling temporary folder and renamed, so a reader never
    sees half a dataset. An existing ``root`` is replaced only if this generator made it (it carries the stamp)
    or it is empty; anything else raises ``UserError`` (see ``check_replaceable``).
    """
    root = Path(root)
    check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        _write_splits(staging, {"train": num_train, "val": num_val}, seed, img_size)
        stamp = generation_stamp(seed=seed, num_train=num_train, num_val=num_val, img_size=img_size)
        (staging / STAMP_FILE).write_text(json.dumps(stamp, sort_keys=True) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root


# A generated dataset's files: stamp, images, labels, label cache, --cache disk arrays (and their atomic-write temps)
GENERATED_FILE = re.compile(rf"{re.escape(STAMP_FILE)}|images/\w+/\d+\.(\d+\.npy|jpg)|labels/\w+(/\d+\.txt|\.cache)")
INTERRUPTED_WRITE = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.(tmp|npy)")


def foreign_files(root: Path) -> list[Path]:
    """Files below a stamped dataset folder that the generator and training did not write (a user's notes, their own
    images or labels): regeneration, which replaces the whole folder, must not delete them."""

    def ours(path: Path) -> bool:
        interrupted = INTERRUPTED_WRITE.fullmatch(path.name)
        name = interrupted["name"] if interrupted else path.name
        return bool(GENERATED_FILE.fullmatch((path.parent / name).relative_to(root).as_posix()))

    return [path for path in sorted(root.rglob("*")) if path.is_symlink() or not (path.is_dir() or ours(path))]


def check_replaceable(root: Path, hint: str = "use a new or empty folder") -> None:
    """Raise ``UserError`` unless ``root`` is absent, an empty folder, or a dataset this generator stamped.

    A folder without our stamp may be the user's own dataset: it is never deleted, whatever a data yaml says; nor is
    a stamped one that holds files the generator did not make (``foreign_files``).
    """
    if not root.exists() and not root.is_symlink():
        return
    if root.is_dir() and not root.is_symlink():
        stamped = (root / STAMP_FILE).is_file()
        foreign = foreign_files(root) if stamped else []
        if not any(root.iterdir()) or (stamped and not foreign):
            return
        reason = f"it holds files the shapes generator did not make (no {STAMP_FILE})"
        if foreign:
            example = foreign[0].relative_to(root).as_posix()
            reason = (f"it holds {len(foreign)} file(s) the shapes generator did not make, such as {example} "
                      "(regenerating replaces the whole folder)")  # fmt: skip
    else:
        reason = "it is a file or a link, not a folder the shapes generator made"
    raise UserError(f"refusing to replace {root} with generated data: {reason}; {hint}")


def generation_stamp(seed: int, num_train: int, num_val: int, img_size: int) -> dict[str, int]:
    """What identifies a generated dataset: the generator version and its options."""
    return {"version": GENERATOR_VERSION, "seed": seed, "train": num_train, "val": num_val, "img_size": img_size}


def is_generated(root: str | Path, seed: int, num_train: int, num_val: int, img_size: int) -> bool:
    """True if ``root`` holds a dataset this generator version made with these options."""
    try:
        stamp = json.loads((Path(root) / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return stamp == generation_stamp(seed=seed, num_train=num_train, num_val=num_val, img_size=img_size)
