"""YoloDataset and the DataLoader: batch contract, reproducibility, rect batches, image cache, boxes on objects."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import utils.data.image_cache as image_cache_module
from tests.rectangles import assert_boxes_on_objects, rectangles_image
from utils.boxes import xywhn2xyxy
from utils.data.config import load_data_config
from utils.data.dataset import YoloDataset, build_dataloader, prepare_split, rect_batch_shapes
from utils.data.image_cache import ImageCache
from utils.data.labels import LabeledSplit, scan_split
from utils.errors import UserError

AUGMENT_KEYS = ["hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective", "flipud", "fliplr"]
NO_AUGMENT = dict.fromkeys([*AUGMENT_KEYS, "mosaic", "mixup", "copy_paste"], 0.0)


@pytest.fixture(scope="module")
def rectangles_split(tmp_path_factory: pytest.TempPathFactory) -> LabeledSplit:
    """6 PNG images of 3 well-separated rectangles each; class = colour, unique per rectangle in the split."""
    root = tmp_path_factory.mktemp("rectangles")
    files = []
    for index, (height, width) in enumerate([(96, 128), (128, 96), (128, 128), (80, 128), (128, 112), (100, 100)]):
        boxes = [(6, 8, 40, 34), (54, 44, 80, 76), (20, height - 30, 44, height - 6)]
        image, labels = rectangles_image(height, width, boxes, [(3 * index + k) % 12 for k in range(3)])
        path = root / "images" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
        label = root / "labels" / f"{index}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n" for r in labels))
        files.append(path)
    return scan_split(files, num_classes=12, name="rectangles", use_cache=False)


def _check_item(item: tuple) -> None:
    image, targets, _, _ = item
    bgr = np.ascontiguousarray(image.numpy().transpose(1, 2, 0)[:, :, ::-1])
    height, width = bgr.shape[:2]
    boxes = xywhn2xyxy(targets[:, 2:].numpy(), width, height)
    assert_boxes_on_objects(bgr, boxes, targets[:, 1].numpy())


@pytest.mark.parametrize(
    "hyp",
    [
        {},
        {"fliplr": 1.0},
        {"flipud": 1.0},
        {"fliplr": 1.0, "flipud": 1.0, "translate": 0.1, "scale": 0.4},
        {"mosaic": 1.0},
        {"mosaic": 1.0, "scale": 0.5, "translate": 0.2, "fliplr": 0.5},
    ],
    ids=["letterbox", "fliplr", "flipud", "flips-translate-scale", "mosaic", "mosaic-scale-translate-flip"],
)
@pytest.mark.parametrize("index", [0, 1, 3])
def test_augmented_items_keep_boxes_on_objects(rectangles_split: LabeledSplit, hyp: dict, index: int) -> None:
    dataset = YoloDataset(rectangles_split, 128, {**NO_AUGMENT, **hyp}, augment=True, seed=index)
    _check_item(dataset[index])


@pytest.mark.parametrize("rect", [False, True])
def test_validation_items_keep_boxes_and_record_letterbox(rectangles_split: LabeledSplit, rect: bool) -> None:
    dataset = YoloDataset(rectangles_split, 96, NO_AUGMENT, augment=False, rect=rect, batch_size=2, pad=0.5)
    for index in range(len(dataset)):
        item = dataset[index]
        _check_item(item)
        (h0, w0), ((ratio_h, ratio_w), (pad_w, pad_h)) = item[3]
        _, height, width = item[0].shape
        assert round(h0 * ratio_h + 2 * pad_h) == height and round(w0 * ratio_w + 2 * pad_w) == width


def test_batch_contract(tiny_dataset: Path, default_hyp: dict) -> None:
    config = load_data_config(tiny_dataset)
    split, _ = prepare_split(config, "train", 128)
    dataset = YoloDataset(split, 128, default_hyp, augment=True)
    images, targets, paths, shapes = next(iter(build_dataloader(dataset, 4, 0, shuffle=True)))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 128, 128)
    assert targets.dtype == torch.float32 and targets.shape[1] == 6
    assert set(targets[:, 0].tolist()) <= {0.0, 1.0, 2.0, 3.0} and targets[:, 0].tolist() == sorted(targets[:, 0])
    assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all() and (targets[:, 1] < config.num_classes).all()
    assert len(paths) == len(shapes) == 4 and all(Path(p).is_file() for p in paths)


def _first_batches(dataset: YoloDataset, workers: int, seed: int, count: int = 2) -> list[tuple]:
    loader = build_dataloader(dataset, 3, workers, shuffle=True, seed=seed)
    return [batch for _, batch in zip(range(count), loader)]


def _assert_same_batches(first: list[tuple], second: list[tuple]) -> None:
    for (images_a, targets_a, paths_a, _), (images_b, targets_b, paths_b, _) in zip(first, second):
        assert paths_a == paths_b
        torch.testing.assert_close(images_a, images_b, rtol=0, atol=0)
        torch.testing.assert_close(targets_a, targets_b, rtol=0, atol=0)


def test_same_seed_same_batches_for_any_worker_count(tiny_dataset: Path) -> None:
    config = load_data_config(tiny_dataset)
    split, _ = prepare_split(config, "train", 96)
    hyp = {**NO_AUGMENT, "mosaic": 1.0, "mixup": 0.5, "degrees": 10.0, "scale": 0.5, "fliplr": 0.5, "hsv_v": 0.4}
    dataset = YoloDataset(split, 96, hyp, augment=True, seed=3)
    reference = _first_batches(dataset, 0, seed=5)
    _assert_same_batches(reference, _first_batches(dataset, 0, seed=5))
    _assert_same_batches(reference, _first_batches(dataset, 2, seed=5))
    different = _first_batches(YoloDataset(split, 96, hyp, augment=True, seed=4), 0, seed=5)
    assert not torch.equal(reference[0][0], different[0][0])
    dataset.set_epoch(1)
    assert not torch.equal(reference[0][0], _first_batches(dataset, 0, seed=5)[0][0])


def test_close_mosaic_turns_mosaic_and_mixup_off(tiny_dataset: Path) -> None:
    split, _ = prepare_split(load_data_config(tiny_dataset), "train", 96)
    dataset = YoloDataset(split, 96, {**NO_AUGMENT, "mosaic": 1.0, "mixup": 1.0}, augment=True)
    assert dataset[0][3] is None  # mosaic items carry no letterbox record
    dataset.close_mosaic()
    assert all(dataset[index][3] is not None for index in range(len(dataset)))


def test_mixup_items_carry_labels_of_both_mosaics(rectangles_split: LabeledSplit) -> None:
    plain = YoloDataset(rectangles_split, 128, {**NO_AUGMENT, "mosaic": 1.0}, augment=True)
    mixed = YoloDataset(rectangles_split, 128, {**NO_AUGMENT, "mosaic": 1.0, "mixup": 1.0}, augment=True)
    for index in range(3):  # same seed: the first mosaic is identical, the second one adds its labels
        first, blended = plain[index][1], mixed[index][1]
        assert len(blended) > len(first)
        torch.testing.assert_close(blended[: len(first)], first)


def test_rect_batches_are_sorted_and_stride_multiples() -> None:
    shapes = np.array([[100, 50], [50, 100], [100, 90], [100, 40], [60, 100]])  # (w, h)
    order, batch_shapes = rect_batch_shapes(shapes, batch_size=2, img_size=128, stride=32, pad=0.0)
    aspects = shapes[order, 1] / shapes[order, 0]
    assert (np.diff(aspects) >= 0).all()
    assert (batch_shapes % 32 == 0).all() and batch_shapes.tolist()[0] == [64, 128]


def test_rect_loader_batches_share_their_shape(tiny_dataset: Path) -> None:
    split, _ = prepare_split(load_data_config(tiny_dataset), "val", 128)
    dataset = YoloDataset(split, 128, NO_AUGMENT, augment=False, rect=True, batch_size=2, pad=0.5)
    shapes = [tuple(images.shape[2:]) for images, *_ in build_dataloader(dataset, 2, 0, shuffle=True)]
    assert [tuple(shape) for shape in dataset.batch_shapes] == shapes
    with pytest.raises(ValueError, match="batch size"):
        build_dataloader(dataset, 3, 0, shuffle=False)


@pytest.mark.parametrize("mode", ["ram", "disk"])
def test_image_cache_gives_identical_items(tiny_dataset: Path, default_hyp: dict, mode: str) -> None:
    config = load_data_config(tiny_dataset)
    split, cache = prepare_split(config, "val", 96, cache_mode=mode)
    assert cache.bytes_needed == sum(image.nbytes for image, *_ in (cache.load(i) for i in range(len(split))))
    if mode == "disk":
        assert all(cache.npy_path(i).is_file() for i in range(len(split)))
    cached = YoloDataset(split, 96, default_hyp, augment=True, seed=1, image_cache=cache)
    uncached = YoloDataset(split, 96, default_hyp, augment=True, seed=1)
    for index in range(2):
        torch.testing.assert_close(cached[index][0], uncached[index][0], rtol=0, atol=0)


def test_image_cache_refuses_when_memory_is_short(tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split, _ = prepare_split(load_data_config(tiny_dataset), "val", 96)
    monkeypatch.setattr(image_cache_module, "available_memory", lambda: 1000)
    with pytest.raises(UserError, match="--cache ram for val needs .* GB but only"):
        ImageCache(split, 96, "ram")


def test_one_split_serves_many_datasets_with_their_own_hyp(tiny_dataset: Path, default_hyp: dict) -> None:
    split, cache = prepare_split(load_data_config(tiny_dataset), "train", 96, cache_mode="ram")
    flipped = YoloDataset(split, 96, {**NO_AUGMENT, "fliplr": 1.0}, augment=True, image_cache=cache)
    plain = YoloDataset(split, 96, NO_AUGMENT, augment=True, image_cache=cache)
    torch.testing.assert_close(flipped[0][0], plain[0][0].flip(-1), rtol=0, atol=0)
    with pytest.raises(ValueError, match="another split or image size"):
        YoloDataset(split, 128, default_hyp, augment=True, image_cache=cache)


def test_copy_paste_in_mosaic_adds_objects_when_labels_have_segments(tmp_path: Path) -> None:
    files = []
    for index in range(4):
        image, labels = rectangles_image(96, 128, [(8, 10, 40, 40), (70, 50, 100, 80)], [2 * index, 2 * index + 1])
        files.append(tmp_path / "images" / f"{index}.png")
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(files[-1]), image)
        rows = []
        for cls, x, y, w, h in labels:
            corners = [x - w / 2, y - h / 2, x + w / 2, y - h / 2, x + w / 2, y + h / 2, x - w / 2, y + h / 2]
            rows.append(" ".join(f"{v:.6f}" for v in [cls, *corners]).replace(f"{cls:.6f}", str(int(cls)), 1))
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"{index}.txt").write_text("\n".join(rows) + "\n")
    split = scan_split(files, num_classes=12, use_cache=False)
    assert all(len(segments) == 2 for segments in split.segments)
    hyp = {**NO_AUGMENT, "mosaic": 1.0}
    plain = YoloDataset(split, 128, hyp, augment=True)
    pasted = YoloDataset(split, 128, {**hyp, "copy_paste": 1.0}, augment=True)
    assert sum(len(pasted[i][1]) for i in range(4)) > sum(len(plain[i][1]) for i in range(4))
