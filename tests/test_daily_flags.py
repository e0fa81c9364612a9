"""yolov5's daily training flags: --single-cls, --rect, --multi-scale, --image-weights and --save-period.

The data is 8 train and 4 val images of coloured rectangles, half 128x64 (wide) and half 64x128 (tall), with
three classes of which "blue" is rare, so that rectangular batches and class weights have something to show.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from tests.rectangles import rectangles_image
from utils.cli import build_train_options, evolution_setup, parse_train_args
from utils.data.config import single_class_names
from utils.data.dataset import EpochSampler
from utils.data.image_weights import class_frequency_weights, draw_weighted, image_weights
from utils.data.prepared import prepare_data
from utils.errors import UserError
from utils.evaluation.validator import Validation
from utils.training.checkpoint import load_checkpoint
from utils.training.engine import multi_scale_batch, multi_scale_range, train_one_epoch
from utils.training.hyp import load_hyp
from utils.training.options import OutputOptions, TrainOptions
from utils.training.trainer import (
    build_detector,
    build_step_context,
    build_train_loader,
    check_run,
    flag_notes,
    prepare_epoch,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["red", "green", "blue"]
IMG_SIZE = 64  # training size: the 128 px images are halved
WIDE, TALL = (64, 128), (128, 64)  # image (height, width)
WIDE_BATCH, TALL_BATCH = (32, 64), (64, 32)  # their rectangular batch shapes at IMG_SIZE
# (shape, [(x1, y1, x2, y2) pixels], [class]) per image; class 2 ("blue") appears once in train
TRAIN_IMAGES = [
    (WIDE, [(10, 10, 50, 40)], [0]),
    (WIDE, [(10, 10, 50, 40), (70, 20, 110, 60)], [0, 1]),
    (WIDE, [(60, 5, 120, 50)], [0]),
    (WIDE, [], []),
    (TALL, [(5, 10, 40, 60)], [1]),
    (TALL, [(10, 70, 50, 120)], [0]),
    (TALL, [(10, 10, 60, 50)], [2]),
    (TALL, [(5, 5, 40, 40), (20, 70, 60, 120)], [0, 1]),
]
VAL_IMAGES = [TRAIN_IMAGES[1], TRAIN_IMAGES[2], TRAIN_IMAGES[6], TRAIN_IMAGES[7]]
TINY = {"epochs": 2, "batch_size": 4, "workers": 0, "autoanchor": False}


def write_split(root: Path, split: str, images: list) -> None:
    for index, ((height, width), boxes, classes) in enumerate(images):
        image, labels = rectangles_image(height, width, boxes, classes)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / split / f"{index}.png"), image)
        rows = [f"{int(row[0])} {row[1]:.6f} {row[2]:.6f} {row[3]:.6f} {row[4]:.6f}" for row in labels]
        (root / "labels" / split / f"{index}.txt").write_text("\n".join(rows))


@pytest.fixture(scope="module")
def rect_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data yaml over non-square images with 3 classes."""
    folder = tmp_path_factory.mktemp("rect_data")
    write_split(folder / "rects", "train", TRAIN_IMAGES)
    write_split(folder / "rects", "val", VAL_IMAGES)
    yaml_path = folder / "rects.yaml"
    content = {"path": "rects", "train": "images/train", "val": "images/val", "names": NAMES}
    yaml_path.write_text(yaml.safe_dump(content, sort_keys=False))
    return yaml_path


@pytest.fixture(scope="module")
def data(rect_yaml: Path):
    return prepare_data(rect_yaml, IMG_SIZE)


@pytest.fixture(scope="module")
def hyp() -> dict[str, float]:
    return load_hyp()


def options(**changes) -> TrainOptions:
    base = TrainOptions(**TINY, outputs=OutputOptions(show_progress=False, plots=False))
    outputs = {key: changes.pop(key) for key in ("save_dir", "save_period") if key in changes}
    return dataclasses.replace(base, **changes).with_outputs(**outputs)


def batch_shapes(loader) -> list[tuple[int, int]]:
    return [tuple(images.shape[2:]) for images, *_ in loader]


# --single-cls


def test_single_class_names_follow_yolov5():
    assert single_class_names(["a", "b"]) == ["item"]
    assert single_class_names(["person"]) == ["person"]  # a one-class data set keeps its name


def test_single_cls_data_has_one_class_in_both_splits(rect_yaml):
    data = prepare_data(rect_yaml, IMG_SIZE, single_cls=True)
    assert data.names == ["item"] and data.num_classes == 1
    for split in (data.train_split, data.val_split):
        classes = np.concatenate([labels[:, 0] for labels in split.labels])
        assert len(classes) and (classes == 0).all()
    assert prepare_data(rect_yaml, IMG_SIZE).num_classes == 3


def test_single_cls_checkpoint_has_one_class(rect_yaml, hyp, tmp_path):
    data = prepare_data(rect_yaml, IMG_SIZE, single_cls=True)
    train(hyp, options(epochs=1, single_cls=True, save_dir=tmp_path), data)
    checkpoint = load_checkpoint(tmp_path / "weights" / "last.pt")
    assert checkpoint["num_classes"] == 1 and checkpoint["names"] == ["item"] and checkpoint["single_cls"] is True
    assert checkpoint["model"]["model.24.m.0.bias"].shape[0] == 3 * (5 + 1)  # 3 anchors x (box, obj, 1 class)


def test_single_cls_options_must_match_the_data(data, hyp):
    with pytest.raises(ValueError, match="single_cls"):
        build_train_loader(hyp, options(single_cls=True), data)


# --rect


def test_rect_batches_take_each_batch_shape(data, hyp):
    _, square = build_train_loader(hyp, options(), data)
    assert set(batch_shapes(square)) == {(IMG_SIZE, IMG_SIZE)}
    dataset, loader = build_train_loader(hyp, options(rect=True), data)
    assert not dataset.use_mosaic
    assert batch_shapes(loader) == [WIDE_BATCH, TALL_BATCH]  # aspect order: the 4 wide images, then the 4 tall ones


def test_rect_does_not_shuffle(data, hyp):
    dataset, loader = build_train_loader(hyp, options(rect=True), data)
    orders = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        orders.append([path for _, _, paths, _ in loader for path in paths])
    assert orders[0] == orders[1]


def test_rect_keeps_training_flips(data, hyp):
    still = {**hyp, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0, "translate": 0, "scale": 0, "flipud": 0}
    plain = data.train_dataset({**still, "fliplr": 0.0}, 4, seed=0, rect=True)
    flipped = data.train_dataset({**still, "fliplr": 1.0}, 4, seed=0, rect=True)
    image, targets, *_ = plain[1]  # image 1 of the wide batch: two objects
    flipped_image, flipped_targets, *_ = flipped[1]
    assert tuple(image.shape[1:]) == WIDE_BATCH
    torch.testing.assert_close(flipped_image, image.flip(-1))
    torch.testing.assert_close(flipped_targets[:, 2], 1 - targets[:, 2])


def test_rect_with_gpu_augment_on_is_a_user_error(data, hyp):
    with pytest.raises(UserError, match="--gpu-augment on"):
        check_run(hyp, options(rect=True, gpu_augment="on"), data)


# --multi-scale


def test_multi_scale_batch_draws_stride_multiples_within_half_and_one_and_a_half():
    images, targets = torch.rand(2, 3, 64, 128), torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.2]])
    low, high = multi_scale_range(128, 32)
    assert (low, high) == (64, 192)
    sizes = set()
    for seed in range(40):
        resized, same_targets = multi_scale_batch(images, targets, np.random.default_rng(seed), 128, 32)
        height, width = resized.shape[2:]
        assert height % 32 == 0 and width % 32 == 0 and low <= width <= high
        assert height == max(32, int(np.ceil(width / 2 / 32)) * 32)  # the aspect survives, rounded to the stride
        assert same_targets is targets  # normalised targets need no change
        sizes.add(width)
    assert sizes == {64, 96, 128, 160, 192}


def test_multi_scale_batch_is_deterministic_per_generator_seed():
    images, targets = torch.rand(1, 3, 64, 64), torch.zeros(0, 6)
    first = [multi_scale_batch(images, targets, np.random.default_rng([3, 0, k]), 64, 32)[0].shape for k in range(6)]
    again = [multi_scale_batch(images, targets, np.random.default_rng([3, 0, k]), 64, 32)[0].shape for k in range(6)]
    assert first == again


def engine_input_sizes(data, hyp, seed: int, multi_scale: bool) -> list[int]:
    """The image sizes the model saw over an epoch of 4 batches."""
    run_options = options(seed=seed, multi_scale=multi_scale, batch_size=2)
    torch.manual_seed(0)
    model = build_detector(hyp, run_options, data)
    dataset, loader = build_train_loader(hyp, run_options, data)
    context = build_step_context(model, hyp, run_options, data, num_batches=len(loader))
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda module, inputs: sizes.append(inputs[0].shape[-1]))
    train_one_epoch(model, loader, context, 0, 1, show_progress=False)
    return sizes


def test_multi_scale_varies_batch_sizes_reproducibly_with_the_seed(data, hyp):
    assert set(engine_input_sizes(data, hyp, seed=0, multi_scale=False)) == {IMG_SIZE}
    sizes = engine_input_sizes(data, hyp, seed=0, multi_scale=True)
    assert len(sizes) == 4 and len(set(sizes)) > 1
    assert engine_input_sizes(data, hyp, seed=0, multi_scale=True) == sizes
    assert engine_input_sizes(data, hyp, seed=1, multi_scale=True) != sizes


# --image-weights


def test_image_weights_favour_rare_classes_and_low_map():
    labels = [np.array([[0, 0.5, 0.5, 0.1, 0.1]] * 3), np.array([[1, 0.5, 0.5, 0.1, 0.1]]), np.zeros((0, 5))]
    frequency = class_frequency_weights(labels, 3)
    np.testing.assert_allclose(frequency, np.array([1 / 3, 1, 1]) / (1 / 3 + 2))  # absent class 2 counts once
    weights = image_weights(labels, 3, np.zeros(3))
    np.testing.assert_allclose(weights, [3 * frequency[0], frequency[1], 0])  # equal: 3 objects of a 3x class
    learned = image_weights(labels, 3, np.array([0.0, 0.5, 0.0]))
    assert learned[1] == pytest.approx(weights[1] * 0.25)  # (1 - mAP) ** 2
    np.testing.assert_array_equal(image_weights([np.zeros((0, 5))] * 2, 3, np.zeros(3)), [1, 1])


def test_draw_weighted_follows_the_weights():
    draws = draw_weighted(np.array([0.0, 1.0, 0.0, 3.0] * 250), np.random.default_rng(0))
    counts = np.bincount(draws % 4, minlength=4)
    assert len(draws) == 1000 and counts[0] == counts[2] == 0
    assert 2.5 < counts[3] / counts[1] < 3.5


def test_epoch_sampler_draws_by_image_weights_per_epoch(data, hyp):
    dataset = data.train_dataset(hyp, 4, seed=0)
    assert sorted(EpochSampler(dataset, shuffle=True, seed=0)) == list(range(8))
    dataset.set_image_weights(np.array([0, 0, 0, 0, 0, 0, 1.0, 1.0]))
    drawn = list(EpochSampler(dataset, shuffle=True, seed=0))
    assert len(drawn) == 8 and set(drawn) == {6, 7}
    assert list(EpochSampler(dataset, shuffle=True, seed=0)) == drawn
    dataset.set_epoch(1)
    assert list(EpochSampler(dataset, shuffle=True, seed=0)) != drawn


@pytest.mark.parametrize("gpu_augment", ["off", "on"])  # "on" runs the batched augmenter on the CPU here
def test_image_weights_flag_samples_by_labels_and_class_map(data, hyp, gpu_augment):
    flagged = options(image_weights=True, gpu_augment=gpu_augment)
    dataset, loader = build_train_loader(hyp, flagged, data)
    prepare_epoch(dataset, 0, flagged, data, None)
    assert dataset.image_weights is not None
    drawn = [Path(path).stem for _, _, paths, _ in loader for path in paths]
    assert len(drawn) == 8 and "3" not in drawn  # the image without objects weighs 0
    validation = Validation({"metrics/mAP_0.5:0.95": 0.5}, {"per_class": [
        {"class": 0, "metrics/mAP_0.5:0.95": 1.0}, {"class": 1, "metrics/mAP_0.5:0.95": 1.0}]}, None, {})  # fmt: skip
    np.testing.assert_allclose(validation.class_maps(3), [1.0, 1.0, 0.5])  # absent from val: the overall mAP
    prepare_epoch(dataset, 1, flagged, data, validation)
    assert {Path(path).stem for _, _, paths, _ in loader for path in paths} == {"6"}  # only "blue" left to learn
    plain, _ = build_train_loader(hyp, options(gpu_augment=gpu_augment), data)
    prepare_epoch(plain, 0, options(gpu_augment=gpu_augment), data, validation)
    assert plain.image_weights is None


# --save-period


@pytest.mark.parametrize(("epochs", "period", "expected"), [(2, 1, {0, 1}), (3, 2, {0, 2}), (1, -1, set())])
def test_save_period_writes_epoch_checkpoints(data, hyp, tmp_path, epochs, period, expected):
    train(hyp, options(epochs=epochs, save_period=period, save_dir=tmp_path, validate_every_epoch=False), data)
    saved = {int(path.stem.removeprefix("epoch")) for path in (tmp_path / "weights").glob("epoch*.pt")}
    assert saved == expected
    for epoch in expected:
        assert load_checkpoint(tmp_path / "weights" / f"epoch{epoch}.pt")["epoch"] == epoch


# the command line


def test_notes_say_what_each_flag_does(data):
    assert flag_notes(options(), data, 32) == []
    flags = options(rect=True, multi_scale=True, image_weights=True, save_period=3)
    notes = flag_notes(dataclasses.replace(flags, single_cls=True), data, 32)
    assert [note.split(":")[0].split()[0] for note in notes] == [
        "--single-cls", "--rect", "--multi-scale", "--image-weights", "--save-period"
    ]  # fmt: skip
    assert "shuffle=False" in notes[1] and "32 to 96 px" in notes[2]


def test_flags_reach_train_options_and_the_evolution_setup(rect_yaml):
    argv = ["--data", str(rect_yaml), "--single-cls", "--rect", "--multi-scale", "--save-period", "5"]
    args = parse_train_args(argv)
    built = build_train_options(args, torch.device("cpu"))
    assert (built.single_cls, built.rect, built.multi_scale, built.outputs.save_period) == (True, True, True, 5)
    setup, plain = evolution_setup(args), evolution_setup(parse_train_args(["--data", str(rect_yaml)]))
    assert setup["single_cls"] and setup["rect"] and setup["multi_scale"] and not plain["rect"]
    assert "save_period" not in setup
    with pytest.raises(UserError, match="--image-weights is not supported under DDP"):
        build_train_options(parse_train_args(["--image-weights"]), torch.device("cpu"), rank=0, world_size=2)
    with pytest.raises(UserError, match="--rect is not supported under DDP"):
        build_train_options(parse_train_args(["--rect"]), torch.device("cpu"), rank=0, world_size=2)


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_cli_run_with_the_flags_logs_them_and_val_reads_the_single_class_checkpoint(rect_yaml, tmp_path):
    common = ["--data", str(rect_yaml), "--img", "64", "--device", "cpu", "--workers", "0"]
    result = run_script("train.py", *common, "--batch", "4", "--epochs", "1", "--noautoanchor", "--noplots",
                        "--project", str(tmp_path), "--name", "flags",
                        "--single-cls", "--rect", "--multi-scale", "--save-period", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for note in ("--single-cls: training the 3 classes", "setting shuffle=False", "--multi-scale: each batch",
                 "--save-period 1: also saving"):  # fmt: skip
        assert note in result.stderr
    weights = tmp_path / "flags" / "weights"
    assert (weights / "epoch0.pt").is_file()
    assert load_checkpoint(weights / "last.pt")["num_classes"] == 1
    validation = run_script("val.py", *common, "--weights", str(weights / "last.pt"), "--project", str(tmp_path))
    assert validation.returncode == 0, validation.stderr[-3000:]
    assert "as trained" in validation.stdout and "item" in validation.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rect", "--image-weights"], "--image-weights draws images regardless of --rect"),
        (["--rect", "--gpu-augment", "on"], "--gpu-augment on cannot make --rect"),
        (["--save-period", "-2"], "--save-period must be at least -1"),
    ],
)
def test_bad_combinations_are_one_line_errors(rect_yaml, tmp_path, flags, message):
    result = run_script("train.py", "--data", str(rect_yaml), "--img", "64", "--epochs", "1", "--device", "cpu",
                        "--workers", "0", "--project", str(tmp_path), *flags)  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-2000:]


def test_val_single_cls_refuses_a_multi_class_checkpoint(tiny_dataset, tiny_checkpoint, tmp_path):
    result = run_script("val.py", "--weights", str(tiny_checkpoint), "--data", str(tiny_dataset), "--single-cls",
                        "--img", "64", "--device", "cpu", "--workers", "0", "--project", str(tmp_path))  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "has 1 with --single-cls" in error_lines[0], result.stderr[-2000:]
