"""Tests for utils/plots/crops.py: yolov5's crop padding, its file numbering, and never overwriting a file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.plots.crops import claim_free_path, crop_box, folder_name, save_crops


@pytest.mark.parametrize(
    "box, expected",
    [
        # w 20 * 1.02 + 10 = 30.4, h 40 * 1.02 + 10 = 50.8 about (20, 40), truncated: yolov5's save_one_box
        ((10, 20, 30, 60), (4, 14, 35, 65)),
        ((0, 0, 10, 10), (0, 0, 15, 15)),  # clipped at the top-left
        ((90, 70, 100, 80), (84, 64, 100, 80)),  # clipped at the bottom-right of a (80, 100) image
    ],
)
def test_crop_box_pads_like_yolov5(box: tuple, expected: tuple) -> None:
    assert crop_box(box, (80, 100, 3)) == expected


def test_claim_free_path_numbers_repeats_and_keeps_existing_files(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_text("the user's")
    assert [claim_free_path(tmp_path / "x.jpg").name for _ in range(3)] == ["x2.jpg", "x3.jpg", "x4.jpg"]
    assert (tmp_path / "x.jpg").read_text() == "the user's"


@pytest.mark.parametrize("name, expected", [("cross", "cross"), ("traffic light", "traffic light"),
                                            ("a/b", "a_b"), ("..", "_"), ("", "_")])  # fmt: skip
def test_folder_name_keeps_crops_in_their_folder(name: str, expected: str) -> None:
    assert folder_name(name) == expected


def test_save_crops_cuts_each_box_into_its_class_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    blocks = np.kron(rng.integers(0, 255, (8, 10)), np.ones((10, 10)))  # 80 x 100, grey: no JPEG colour blur
    image = np.repeat(blocks[:, :, None], 3, axis=2).astype(np.uint8)
    detections = np.array([[10, 20, 30, 60, 0.9, 1], [50, 10, 70, 30, 0.8, 1], [0, 0, 10, 10, 0.7, 0]])
    files = save_crops(image, detections, ["cross", "star"], tmp_path / "crops", "img")
    relative = [str(path.relative_to(tmp_path / "crops")) for path in files]
    assert relative == ["star/img.jpg", "star/img2.jpg", "cross/img.jpg"]
    for path, detection in zip(files, detections):
        x1, y1, x2, y2 = crop_box(detection[:4], image.shape)
        crop = cv2.imread(str(path)).astype(int)
        assert crop.shape == (y2 - y1, x2 - x1, 3)
        assert np.abs(crop - image[y1:y2, x1:x2]).mean() < 4  # JPEG at quality 95 of the same pixels
        assert np.abs(crop - image[y1 + 10 : y2 + 10, x1:x2]).mean() > 20  # and not of the next block down
