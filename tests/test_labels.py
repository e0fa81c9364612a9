"""Label scanning: path rule, every bad-row and bad-image reason, duplicates, segments, and the label cache."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import utils.data.labels as labels_module
from utils.data.labels import label_path, parse_label_file, scan_split
from utils.errors import UserError


def _write_image(path: Path, size: tuple[int, int] = (48, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    cv2.imwrite(str(path), image)
    return path


def _dataset(root: Path, label_texts: dict[str, str | None]) -> list[Path]:
    """Images ``images/train/<name>.jpg`` with label text (None: no label file)."""
    files = []
    for name, text in label_texts.items():
        files.append(_write_image(root / "images" / "train" / f"{name}.jpg"))
        if text is not None:
            path = root / "labels" / "train" / f"{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return files


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("/d/images/train/a.jpg", "/d/labels/train/a.txt"),
        ("/d/images/x/images/train/a.png", "/d/images/x/labels/train/a.txt"),  # the last /images/ only
        ("/d/images/a.b.jpeg", "/d/labels/a.b.txt"),
        ("/d/pictures/a.jpg", "/d/pictures/a.txt"),  # no /images/: beside the image
    ],
)
def test_label_path_rule(image: str, expected: str) -> None:
    assert label_path(image) == Path(expected)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0 0.5 0.5 0.2\n", "has 4 columns"),
        ("0 0.5 0.5 0.2 0.2 0.3\n", "has 6 columns"),
        ("0 0.5 nan 0.2 0.2\n", "non-finite"),
        ("0 0.5 1.2 0.2 0.2\n", "outside [0, 1]"),
        ("0 -0.1 0.5 0.2 0.2\n", "outside [0, 1]"),
        ("-1 0.5 0.5 0.2 0.2\n", "class -1"),
        ("3 0.5 0.5 0.2 0.2\n", "class 3"),
        ("1.5 0.5 0.5 0.2 0.2\n", "class 1.5"),
        ("0 0.5 0.5 0.2 0.2\n1 a b c d\n", "not numbers"),
        ("0 0.5 0.5 0.0 0.2\n", "zero width"),
    ],
)
def test_bad_label_row_marks_file_corrupt(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "x.txt"
    path.write_text(text)
    labels, _, _, found_reason = parse_label_file(path, num_classes=3)
    assert reason in found_reason and len(labels) == 0


def test_coordinates_within_tolerance_are_clipped(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("0 0.5 1.0005 0.2 0.2\n")
    labels, _, _, reason = parse_label_file(path, num_classes=1)
    assert reason == "" and labels[0, 2] == pytest.approx(1.0)


def test_duplicate_rows_are_removed_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n0 0.5 0.5 0.2 0.2\n")
    labels, _, duplicates, _ = parse_label_file(path, num_classes=2)
    assert duplicates == 1
    np.testing.assert_allclose(labels[:, 0], [0, 1])


def test_segment_rows_give_polygon_extent_boxes(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("1 0.1 0.2 0.5 0.2 0.3 0.6\n0 0.5 0.5 0.2 0.4\n")  # a triangle and a box row mixed
    labels, segments, _, reason = parse_label_file(path, num_classes=2)
    assert reason == "" and len(segments) == 2
    np.testing.assert_allclose(labels[0], [1, 0.3, 0.4, 0.4, 0.4], atol=1e-6)
    np.testing.assert_allclose(labels[1], [0, 0.5, 0.5, 0.2, 0.4], atol=1e-6)


def _truncated_jpeg(path: Path) -> None:
    _write_image(path)
    path.write_bytes(path.read_bytes()[:-200])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: path.write_bytes(b"not an image at all"), "unreadable image"),
        (lambda path: path.write_bytes(b""), "unreadable image"),
        (_truncated_jpeg, "truncated JPEG"),
        (lambda path: _write_image(path, (5, 5)), "too small"),
        (lambda path: Image.new("RGB", (64, 48)).save(path, format="GIF"), "GIF image, which OpenCV cannot decode"),
    ],
    ids=["garbage", "empty-file", "truncated", "tiny", "gif-named-jpg"],
)
def test_bad_images_are_skipped_with_reason(tmp_path: Path, damage, reason: str) -> None:
    files = _dataset(tmp_path, {"good": "0 0.5 0.5 0.2 0.2\n", "bad": "0 0.5 0.5 0.2 0.2\n"})
    damage(files[1])
    split = scan_split(files, num_classes=1, use_cache=False)
    assert split.image_files == [files[0]]
    assert split.report.corrupt == 1 and reason in split.report.reasons[0]


def test_an_image_past_the_decompression_bomb_limit_is_skipped(tmp_path: Path, monkeypatch) -> None:
    # PIL raises DecompressionBombError past twice MAX_IMAGE_PIXELS (about 179 million pixels): it was a traceback
    files = _dataset(tmp_path, {"good": "0 0.5 0.5 0.2 0.2\n", "huge": "0 0.5 0.5 0.2 0.2\n"})
    _write_image(files[1], (200, 200))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200 x 200 = 40,000 pixels: past twice the limit
    split = scan_split(files, num_classes=1, use_cache=False)
    assert split.image_files == [files[0]] and "DecompressionBombError" in split.report.reasons[0]


def test_scan_counts_and_summary(tmp_path: Path) -> None:
    files = _dataset(
        tmp_path,
        {"a": "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n", "b": "", "c": None, "d": "5 0.5 0.5 0.2 0.2\n"},
    )
    split = scan_split(files, num_classes=2, name="train", use_cache=False)
    report = split.report
    assert (report.found, report.empty, report.missing, report.corrupt, report.duplicates) == (1, 1, 1, 1, 1)
    assert len(split) == 3 and split.shapes.tolist() == [[64, 48]] * 3
    assert [len(labels) for labels in split.labels] == [1, 0, 0]
    summary = report.summary("train: ")
    assert summary.startswith("train: 1 labelled, 1 missing, 1 empty, 1 corrupt, 1 duplicate rows removed")
    assert "d.jpg: label row 1 has class 5" in summary


def test_split_without_usable_images_is_a_user_error(tmp_path: Path) -> None:
    files = _dataset(tmp_path, {"a": "7 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(UserError, match="no usable images"):
        scan_split(files, num_classes=1, name="val", use_cache=False)
    with pytest.raises(UserError, match="no images found"):
        scan_split([], num_classes=1, name="val")


def test_cache_is_reused_then_invalidated_by_a_label_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _dataset(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n"})
    scan_split(files, num_classes=2)
    cache = tmp_path / "labels" / "train.cache"
    assert json.loads(cache.read_text())["version"] == labels_module.CACHE_VERSION

    def fail(*args: object) -> None:
        raise AssertionError("rescanned although nothing changed")

    monkeypatch.setattr(labels_module, "_scan_one", fail)
    assert scan_split(files, num_classes=2).labels[1][0, 0] == 1
    monkeypatch.undo()

    label = tmp_path / "labels" / "train" / "b.txt"
    label.write_text("0 0.25 0.5 0.2 0.2\n")
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a different mtime even on coarse clocks
    rescanned = scan_split(files, num_classes=2)
    np.testing.assert_allclose(rescanned.labels[1], [[0, 0.25, 0.5, 0.2, 0.2]])


def test_unwritable_cache_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = _dataset(tmp_path, {"a": None})
    (tmp_path / "labels").write_text("a file where the label folder would be")
    with caplog.at_level(logging.WARNING, logger="utils.data.labels"):
        split = scan_split(files, num_classes=1)
    assert len(split) == 1 and "label cache not written" in caplog.text
