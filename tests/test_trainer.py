"""Training as a function: outputs, reuse of prepared data across runs, resume, NaN handling, close-mosaic."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import utils.data.dataset as dataset_module
import utils.data.labels as labels_module
from utils.data.prepared import prepare_data
from utils.plots.results import read_results
from utils.training.checkpoint import load_checkpoint
from utils.training.engine import NonFiniteLossError
from utils.training.hyp import load_hyp
from utils.training.options import OutputOptions, TrainOptions
from utils.training.trainer import train

IMG_SIZE = 64
PROMISED_OUTPUTS = (
    "weights/best.pt",
    "weights/last.pt",
    "results.csv",
    "results.png",
    "hyp.yaml",
    "opt.yaml",
    "labels.jpg",
    "train_batch0.jpg",
    "lr.png",
)


@pytest.fixture(scope="module")
def prepared(tiny_dataset: Path):
    return prepare_data(tiny_dataset, IMG_SIZE)


@pytest.fixture(scope="module")
def hyp() -> dict[str, float]:
    return load_hyp()


def tiny_options(save_dir: Path | None = None, plots: bool = False, **changes) -> TrainOptions:
    options = TrainOptions(epochs=2, batch_size=4, workers=0, outputs=OutputOptions(show_progress=False, plots=False))
    return dataclasses.replace(options, **changes).with_outputs(save_dir=save_dir, plots=plots)


def test_train_writes_every_promised_output(prepared, hyp, tmp_path):
    metrics = train(hyp, tiny_options(save_dir=tmp_path, plots=True), prepared)
    for name in PROMISED_OUTPUTS:
        assert (tmp_path / name).is_file(), f"missing {name}"
    columns = read_results(tmp_path / "results.csv")
    assert columns["epoch"].tolist() == [0, 1]
    assert set(metrics) >= {"metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "train/box_loss", "fitness"}
    assert all(0.0 <= metrics[name] <= 1.0 for name in ("metrics/mAP_0.5", "metrics/mAP_0.5:0.95"))
    checkpoint = load_checkpoint(tmp_path / "weights" / "last.pt")
    assert checkpoint["epoch"] == 1 and checkpoint["names"] == prepared.names


def test_train_is_callable_repeatedly_without_rescanning(prepared, hyp, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the dataset was scanned again")

    monkeypatch.setattr(labels_module, "scan_split", refuse)
    monkeypatch.setattr(dataset_module, "scan_split", refuse)
    fitted_anchors = {}
    first = train(hyp, tiny_options(epochs=1), prepared, fitted_anchors=fitted_anchors)
    second = train({**hyp, "lr0": 0.02, "mosaic": 0.0}, tiny_options(epochs=1), prepared, fitted_anchors=fitted_anchors)
    assert set(first) == set(second)
    assert len(fitted_anchors) == 1  # AutoAnchor is not rerun for the same settings


def test_train_with_no_save_dir_writes_nothing(prepared, hyp, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(hyp, tiny_options(epochs=1), prepared)
    assert list(tmp_path.iterdir()) == []


def test_resume_continues_the_same_epochs_and_learning_rates(prepared, hyp, tmp_path):
    full_dir, interrupted_dir = tmp_path / "full", tmp_path / "interrupted"
    options = tiny_options(epochs=3, seed=3)
    train(hyp, options.with_outputs(save_dir=full_dir), prepared)

    def stop_after_first_epoch(epoch, metrics):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(hyp, options.with_outputs(save_dir=interrupted_dir), prepared, on_epoch_end=stop_after_first_epoch)
    last = interrupted_dir / "weights" / "last.pt"
    saved_optimizer = load_checkpoint(last)["optimizer"]
    # A stop between epoch 1's results.csv row and its last.pt: the resumed run trains epoch 1 again, and its row
    # must not appear twice (rows 0, 1, 1, 2 before).
    csv = interrupted_dir / "results.csv"
    row = csv.read_text().splitlines()[-1].split(",")
    csv.write_text(csv.read_text() + ",".join([f"{1:20.5g}", *row[1:]]) + "\n")
    train(hyp, dataclasses.replace(options, resume=str(last)).with_outputs(save_dir=interrupted_dir), prepared)
    assert (interrupted_dir / "results.dropped.csv").read_text().split(",")[0].strip() == "1"

    full, resumed = read_results(full_dir / "results.csv"), read_results(interrupted_dir / "results.csv")
    assert resumed["epoch"].tolist() == [0, 1, 2]
    for group in ("x/lr0", "x/lr1", "x/lr2"):
        assert resumed[group] == pytest.approx(full[group], rel=1e-6)
    assert saved_optimizer["state"], "the optimizer state (momentum buffers) must be saved for resume"


def test_resume_restores_optimizer_state_exactly(prepared, hyp, tmp_path):
    from utils.training.trainer import build_detector, build_step_context, restore_state

    options = tiny_options(epochs=2, save_dir=tmp_path)
    train(hyp, options, prepared)
    checkpoint = load_checkpoint(tmp_path / "weights" / "last.pt")
    model = build_detector(hyp, dataclasses.replace(options, epochs=4), prepared)
    context = build_step_context(model, hyp, dataclasses.replace(options, epochs=4), prepared, num_batches=3)
    start_epoch, _ = restore_state(model, context, checkpoint, num_batches=3)
    assert start_epoch == 2
    restored = context.optimizer.state_dict()["state"]
    for key, state in checkpoint["optimizer"]["state"].items():
        assert torch.equal(restored[key]["momentum_buffer"], state["momentum_buffer"])
    assert context.ema.updates == checkpoint["ema_updates"] > 0


def test_non_finite_loss_stops_with_a_clear_error(prepared, hyp, monkeypatch):
    import utils.training.trainer as trainer_module

    original = trainer_module.YoloLoss

    class NanLoss(original):
        def __call__(self, predictions, targets):
            total, terms = super().__call__(predictions, targets)
            return total * float("nan"), terms

    monkeypatch.setattr(trainer_module, "YoloLoss", NanLoss)
    with pytest.raises(NonFiniteLossError, match="loss became nan"):
        train(hyp, tiny_options(epochs=1), prepared)


def test_close_mosaic_switches_the_dataset_off_for_the_last_epochs(prepared, hyp, monkeypatch):
    import utils.training.trainer as trainer_module

    seen: list[bool] = []
    original = trainer_module.train_one_epoch

    def spy(model, loader, context, epoch, epochs, show_progress=True):
        seen.append(loader.dataset.use_mosaic)
        return original(model, loader, context, epoch, epochs, show_progress=show_progress)

    monkeypatch.setattr(trainer_module, "train_one_epoch", spy)
    train(hyp, tiny_options(epochs=3, close_mosaic=1, validate_every_epoch=False), prepared)
    assert seen == [True, True, False]


def test_batched_device_augmentation_path_trains(prepared, hyp, monkeypatch):
    import utils.training.trainer as trainer_module
    from utils.data.gpu_augment import GpuAugmentLoader

    loaders = []
    original = trainer_module.build_train_loader

    def spy(*args, **kwargs):
        dataset, loader = original(*args, **kwargs)
        loaders.append(loader)
        return dataset, loader

    monkeypatch.setattr(trainer_module, "build_train_loader", spy)
    metrics = train(hyp, tiny_options(epochs=2, gpu_augment="on", close_mosaic=1), prepared)
    assert isinstance(loaders[0], GpuAugmentLoader)
    assert metrics["train/box_loss"] > 0 and 0.0 <= metrics["metrics/mAP_0.5"] <= 1.0


def test_a_recorded_hyp_and_seed_reproduce_their_fitness(prepared, hyp):
    """What the evolution records for every run (its hyp and training seed) retrains to the same fitness on the CPU;
    another seed gives another result, which is the noise the evolution measures."""
    options = tiny_options(epochs=2, seed=7)
    first, again = train(hyp, options, prepared), train(dict(hyp), options, prepared)
    assert first["fitness"] == again["fitness"] and first == again
    other = train(hyp, dataclasses.replace(options, seed=8), prepared)
    assert other["train/box_loss"] != first["train/box_loss"]
