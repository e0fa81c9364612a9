"""Tests for utils/training/run_outputs.py: the results.csv format and rows, no-folder runs, the resume state."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from utils.data.prepared import prepare_data
from utils.plots.results import read_results
from utils.training.checkpoint import load_checkpoint
from utils.training.options import OutputOptions, TrainOptions
from utils.training.run_outputs import RESULT_COLUMNS, RunOutputs, training_state
from utils.training.trainer import build_detector, build_step_context, build_train_loader, restore_state
from utils.yolo_csv import format_header, format_row

IMG_SIZE = 64
NUM_BATCHES = 3
LEARNING_RATES = (0.001, 0.002, 0.003)  # written into the bias, norm and decay groups
TRAIN_TERMS = {"train/box_loss": 0.123456789, "train/obj_loss": 0.05, "train/cls_loss": 0.0312}
VALIDATION = {
    "metrics/precision": 0.5,
    "metrics/recall": 0.25,
    "metrics/mAP_0.5": 0.125,
    "metrics/mAP_0.5:0.95": 0.0625,
    "val/box_loss": 0.1,
    "val/obj_loss": 0.2,
    "val/cls_loss": 0.3,
    "fitness": 0.08,  # not a results.csv column
}


@pytest.fixture(scope="module")
def prepared(tiny_dataset: Path):
    return prepare_data(tiny_dataset, IMG_SIZE)


@pytest.fixture(scope="module")
def hyp(default_hyp: dict) -> dict[str, float]:
    return {key: float(value) for key, value in default_hyp.items()}


def tiny_options(save_dir: Path | None, **output_changes: object) -> TrainOptions:
    options = TrainOptions(
        epochs=2, batch_size=4, workers=0, autoanchor=False, outputs=OutputOptions(show_progress=False, plots=False)
    )
    return options.with_outputs(save_dir=save_dir, **output_changes)


def build_run(options: TrainOptions, hyp: dict[str, float], prepared, seed: int = 0) -> tuple:
    """(model, context) as train() builds them."""
    torch.manual_seed(seed)
    model = build_detector(hyp, options, prepared)
    return model, build_step_context(model, hyp, options, prepared, num_batches=NUM_BATCHES)


@pytest.fixture(scope="module")
def shared_run(prepared, hyp) -> tuple:
    """One model and context for the tests that only write files; the save folder lives in RunOutputs alone."""
    return build_run(tiny_options(None), hyp, prepared)


@pytest.fixture
def run(shared_run, hyp, prepared):
    """(model, context, make_outputs): known learning rates in the optimizer, RunOutputs built per options."""
    model, context = shared_run
    for group, lr in zip(context.optimizer.param_groups, LEARNING_RATES):
        group["lr"] = lr
    return model, context, lambda options: RunOutputs(options, hyp, prepared, context)


def csv_lines(save_dir: Path) -> list[str]:
    return (save_dir / "results.csv").read_text().splitlines()


def test_result_columns_are_yolov5s() -> None:
    assert RESULT_COLUMNS == (
        "epoch",
        "train/box_loss",
        "train/obj_loss",
        "train/cls_loss",
        "metrics/precision",
        "metrics/recall",
        "metrics/mAP_0.5",
        "metrics/mAP_0.5:0.95",
        "val/box_loss",
        "val/obj_loss",
        "val/cls_loss",
        "x/lr0",
        "x/lr1",
        "x/lr2",
    )


def test_header_is_right_aligned_twenty_character_fields(run, tmp_path: Path) -> None:
    model, _, make_outputs = run
    outputs = make_outputs(tiny_options(tmp_path, save_weights=False))
    outputs.end_epoch(0, {**TRAIN_TERMS, **VALIDATION}, improved=False, best_fitness=0.0, model=model, final=False)
    header = csv_lines(tmp_path)[0]
    assert header == format_header(RESULT_COLUMNS)
    fields = header.split(",")
    assert [field.strip() for field in fields] == list(RESULT_COLUMNS)
    assert all(len(field) == 20 for field in fields)
    assert fields[0] == "               epoch" and fields[1] == "      train/box_loss"
    assert fields[7] == "metrics/mAP_0.5:0.95"  # exactly 20 characters: no padding, no truncation


def test_row_matches_a_hand_written_line(run, tmp_path: Path) -> None:
    model, _, make_outputs = run
    outputs = make_outputs(tiny_options(tmp_path, save_weights=False))
    outputs.end_epoch(0, {**TRAIN_TERMS, **VALIDATION}, improved=False, best_fitness=0.0, model=model, final=False)
    row = csv_lines(tmp_path)[1]
    values = ["0", "0.12346", "0.05", "0.0312", "0.5", "0.25", "0.125", "0.0625", "0.1", "0.2", "0.3"]
    values += ["0.001", "0.002", "0.003"]  # x/lr0..2: the optimizer's groups at the end of the epoch
    assert row == ",".join(" " * (20 - len(value)) + value for value in values)
    assert row.split(",")[1] == "             0.12346"  # %20.5g of 0.123456789
    numbers = [0, 0.123456789, 0.05, 0.0312, 0.5, 0.25, 0.125, 0.0625, 0.1, 0.2, 0.3, *LEARNING_RATES]
    assert row == format_row(numbers)


def test_one_row_per_epoch_in_order_with_nan_for_unvalidated_epochs(run, tmp_path: Path) -> None:
    model, context, make_outputs = run
    outputs = make_outputs(tiny_options(tmp_path, save_weights=False))
    outputs.end_epoch(0, dict(TRAIN_TERMS), improved=False, best_fitness=-math.inf, model=model, final=False)
    context.optimizer.param_groups[2]["lr"] = 0.0042
    outputs.end_epoch(1, {**TRAIN_TERMS, **VALIDATION}, improved=True, best_fitness=0.08, model=model, final=False)
    lines = csv_lines(tmp_path)
    assert len(lines) == 3 and lines[0] == format_header(RESULT_COLUMNS)
    first = dict(zip(RESULT_COLUMNS, lines[1].split(",")))
    for name in ("metrics/precision", "metrics/mAP_0.5:0.95", "val/box_loss", "val/cls_loss"):
        assert first[name] == "                 nan", name
    assert first["train/box_loss"].strip() == "0.12346"
    columns = read_results(tmp_path / "results.csv")
    assert columns["epoch"].tolist() == [0, 1]
    assert math.isnan(columns["metrics/mAP_0.5"][0]) and columns["metrics/mAP_0.5"][1] == 0.125
    assert columns["x/lr2"].tolist() == [0.003, 0.0042]


def test_rows_append_to_an_existing_file_without_a_second_header(run, tmp_path: Path) -> None:
    model, _, make_outputs = run
    options = tiny_options(tmp_path, save_weights=False)
    make_outputs(options).end_epoch(0, dict(TRAIN_TERMS), improved=False, best_fitness=0.0, model=model, final=False)
    resumed = make_outputs(options)  # a resumed run writes into the same folder
    resumed.end_epoch(1, dict(TRAIN_TERMS), improved=False, best_fitness=0.0, model=model, final=False)
    lines = csv_lines(tmp_path)
    assert [line.split(",")[0].strip() for line in lines] == ["epoch", "0", "1"]


def test_weights_follow_nosave_and_improvement(run, tmp_path: Path) -> None:
    model, _, make_outputs = run
    outputs = make_outputs(tiny_options(tmp_path, save_weights=False))
    outputs.end_epoch(0, dict(TRAIN_TERMS), improved=True, best_fitness=0.1, model=model, final=False)
    assert not (tmp_path / "weights" / "last.pt").exists()  # --nosave: only the final epoch saves
    outputs.end_epoch(1, {**TRAIN_TERMS, **VALIDATION}, improved=False, best_fitness=0.1, model=model, final=True)
    assert load_checkpoint(tmp_path / "weights" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "weights" / "best.pt").exists()


def test_no_save_dir_writes_nothing_anywhere(
    run, prepared, hyp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model, context, make_outputs = run
    options = tiny_options(None, plots=True)
    outputs = make_outputs(options)
    dataset, loader = build_train_loader(hyp, options, prepared)
    outputs.start(dataset, loader)
    outputs.end_epoch(0, {**TRAIN_TERMS, **VALIDATION}, improved=True, best_fitness=0.08, model=model, final=True)
    outputs.finish(model, context)
    assert outputs.save_dir is None and outputs.weights_dir is None
    assert list(tmp_path.iterdir()) == []


def test_start_writes_the_hyp_and_options(run, prepared, hyp, tmp_path: Path) -> None:
    options = tiny_options(tmp_path, record={"epochs": 2, "img": IMG_SIZE})
    run[2](options).start(*build_train_loader(hyp, options, prepared))
    assert yaml.safe_load((tmp_path / "hyp.yaml").read_text()) == hyp
    assert yaml.safe_load((tmp_path / "opt.yaml").read_text()) == {"epochs": 2, "img": IMG_SIZE}
    assert (tmp_path / "weights").is_dir()


def test_training_state_holds_what_resume_needs(prepared, hyp) -> None:
    options = tiny_options(None)
    model, context = build_run(options, hyp, prepared, seed=0)
    images = torch.rand(2, 3, IMG_SIZE, IMG_SIZE)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3], [1, 2, 0.4, 0.6, 0.2, 0.4]])
    for _ in range(2):  # real optimizer and EMA state to carry over
        loss, _ = context.loss_fn(model(images), targets)
        loss.backward()
        context.optimizer.step()
        context.optimizer.zero_grad()
        context.ema.update(model)
    state = training_state(model, context)
    assert set(state) == {"training_model", "optimizer", "scheduler", "ema", "ema_updates"}
    assert state["ema_updates"] == 2
    assert state["scheduler"]["name"] == "linear"

    fresh_model, fresh_context = build_run(options, hyp, prepared, seed=1)
    checkpoint = {**state, "epoch": 0, "best_fitness": 0.25}
    assert restore_state(fresh_model, fresh_context, checkpoint, num_batches=NUM_BATCHES) == (1, 0.25)
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[name], tensor), name
    for name, tensor in context.ema.ema.state_dict().items():
        assert torch.equal(fresh_context.ema.ema.state_dict()[name], tensor), name
    assert fresh_context.ema.updates == 2
    restored, saved = fresh_context.optimizer.state_dict()["state"], context.optimizer.state_dict()["state"]
    assert restored.keys() == saved.keys() and saved
    for key, entry in saved.items():
        assert torch.equal(restored[key]["momentum_buffer"], entry["momentum_buffer"])
