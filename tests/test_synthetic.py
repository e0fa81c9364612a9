"""The generated shapes dataset: deterministic, valid labels, the promised variety, boxes on the drawn objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import utils.data.synthetic as synthetic
from utils.data.synthetic import SHAPE_NAMES, generate_dataset, image_shape, render_image


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = _files(generate_dataset(tmp_path / "a", seed=3, num_train=4, num_val=2, img_size=96))
    second = _files(generate_dataset(tmp_path / "b", seed=3, num_train=4, num_val=2, img_size=96))
    other = _files(generate_dataset(tmp_path / "c", seed=4, num_train=4, num_val=2, img_size=96))
    assert first == second
    assert first["images/train/000000.jpg"] != other["images/train/000000.jpg"]
    assert sum(name.startswith("images/train/") for name in first) == 4
    assert sum(name.startswith("images/val/") for name in first) == 2


def test_generation_replaces_an_existing_folder_atomically(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "d", seed=0, num_train=3, num_val=1, img_size=64)
    (root / "labels" / "train.cache").write_text("old")  # training's label cache: the generator's to replace
    generate_dataset(root, seed=0, num_train=2, num_val=1, img_size=64)
    assert not (root / "labels" / "train.cache").exists() and len(list((root / "images" / "train").iterdir())) == 2
    assert [path.name for path in tmp_path.iterdir()] == ["d"]  # no staging folder left behind


@pytest.mark.parametrize("seed", range(4))
def test_image_shape_long_side_and_aspect(seed: int) -> None:
    height, width = image_shape(256, np.random.default_rng(seed))
    assert max(height, width) == 256 and 0.74 <= width / height <= 1.34


def test_labels_are_valid_and_varied() -> None:
    classes, sizes, empty = [], [], 0
    for index in range(60):
        rng = np.random.default_rng([0, 9, index])
        image, labels = render_image(*image_shape(128, rng), rng)
        assert image.dtype == np.uint8 and labels.shape[1] == 5
        assert ((labels[:, 1:] > 0) & (labels[:, 1:] <= 1)).all()
        empty += len(labels) == 0
        classes += labels[:, 0].astype(int).tolist()
        sizes += (labels[:, 3:].max(1) * 128).tolist()
    assert set(classes) == set(range(len(SHAPE_NAMES)))
    assert min(sizes) < 12 and max(sizes) > 50
    assert 0 < empty < 12


def test_boxes_cover_whole_pixels_inside_the_image() -> None:
    """Boxes are written as pixel edges of the visible mask, so they convert back to whole pixels exactly."""
    for index in range(8):
        rng = np.random.default_rng([1, 9, index])
        height, width = image_shape(128, rng)
        _, labels = render_image(height, width, rng)
        for cls, x, y, w, h in labels:
            corners = np.array([(x - w / 2) * width, (y - h / 2) * height, (x + w / 2) * width, (y + h / 2) * height])
            np.testing.assert_allclose(corners, np.round(corners), atol=1e-3)
            assert 0 <= corners[0] < corners[2] <= width and 0 <= corners[1] < corners[3] <= height
            assert 0 <= cls < len(SHAPE_NAMES)


def test_process_pool_generation_matches_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serial = _files(generate_dataset(tmp_path / "serial", seed=2, num_train=4, num_val=2, img_size=64))
    monkeypatch.setattr(synthetic, "MIN_IMAGES_FOR_PROCESSES", 0)
    monkeypatch.setattr(synthetic, "CHUNK", 2)
    parallel = _files(generate_dataset(tmp_path / "parallel", seed=2, num_train=4, num_val=2, img_size=64))
    assert serial == parallel


def test_most_objects_of_a_class_share_its_hue_band() -> None:
    import cv2

    rng = np.random.default_rng(0)
    for class_index in (0, 3, 7):
        colours = np.stack([synthetic._object_colour(class_index, rng) for _ in range(400)]).astype(np.uint8)
        hue = cv2.cvtColor(colours[None], cv2.COLOR_BGR2HSV)[0, :, 0].astype(float)
        centre = class_index * 180 / len(SHAPE_NAMES)
        distance = np.abs((hue - centre + 90) % 180 - 90)
        in_band = (distance <= synthetic.CLASS_HUE_SPREAD + 1).mean()
        assert synthetic.CLASS_HUE_FRACTION - 0.06 < in_band < 0.99  # a cue, but some objects take any hue
