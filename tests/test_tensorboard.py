"""Tests for utils/training/tensorboard_log.py: a train run's and an evolution child's event files, read back."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from utils.evolution.storage import JOURNAL_NAME, open_storage
from utils.plots.results import read_results
from utils.training import tensorboard_log
from utils.training.run_outputs import RESULT_COLUMNS
from utils.training.tensorboard_log import TensorBoardLog

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--img", "64", "--batch", "4", "--epochs", "2", "--workers", "0", "--device", "cpu"]
MAP = "metrics/mAP_0.5:0.95"


def read_events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def scalar_series(events: EventAccumulator, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in events.Scalars(tag)}


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900, cwd=ROOT)


def test_train_run_logs_the_results_columns_and_its_images(tiny_dataset, tmp_path):
    result = run_script("train.py", "--data", str(tiny_dataset), *TINY_ARGS, "--project", str(tmp_path),
                        "--name", "tb")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "tb"
    assert list(run_dir.glob("events.out.tfevents.*")), "the event file lies in the run folder"
    events = read_events(run_dir)
    assert set(events.Tags()["scalars"]) == set(RESULT_COLUMNS) - {"epoch"}
    results = read_results(run_dir / "results.csv")
    for tag in ("train/box_loss", MAP, "val/cls_loss", "x/lr2"):
        series = scalar_series(events, tag)
        assert sorted(series) == [0, 1], f"{tag}: one value per epoch"
        assert [series[0], series[1]] == pytest.approx(list(results[tag]), rel=1e-4, abs=1e-9)
    assert set(events.Tags()["images"]) == {"labels", "train_batch0"}
    image = events.Images("train_batch0")[0]
    assert image.width > 0 and image.height > 0


def test_every_evolution_child_writes_its_own_series(tiny_dataset, tmp_path):
    evolve = ["--evolve", "2", "--confirm", "0", "--confirm-seeds", "0"]  # two children, no extra evaluations
    result = run_script("train.py", "--data", str(tiny_dataset), *TINY_ARGS, "--noplots", "--project",
                        str(tmp_path), "--name", "evo", *evolve)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "evo"
    study = optuna.load_study(study_name="evo", storage=open_storage(run_dir, None))
    assert sorted(path.name for path in (run_dir / "tensorboard").iterdir()) == ["child_0", "child_1"]
    for trial in study.trials:
        events = read_events(run_dir / "tensorboard" / f"child_{trial.number}")
        assert {"fitness", MAP, "train/box_loss", "final/fitness"} <= set(events.Tags()["scalars"])
        # Without --prune a child validates its last epoch only (0-based epoch 1): one point.
        assert scalar_series(events, "fitness") == {1: pytest.approx(trial.value)}
        assert scalar_series(events, "final/fitness") == {1: pytest.approx(trial.value)}
        assert trial.intermediate_values == {2: pytest.approx(trial.value)}, "reported without --prune"
    assert study.metric_names == ["fitness"]
    assert (run_dir / JOURNAL_NAME).is_file()


def test_scalars_leave_out_nan_and_non_numbers(tmp_path):
    board = TensorBoardLog(tmp_path)
    board.scalars(0, {"train/box_loss": 0.5, MAP: float("nan"), "note": "text"})
    board.scalars(1, {"train/box_loss": 0.25, MAP: 0.125})
    board.close()
    events = read_events(tmp_path)
    assert scalar_series(events, "train/box_loss") == {0: 0.5, 1: 0.25}
    assert scalar_series(events, MAP) == {1: 0.125}, "an epoch not validated (NaN) is no point"
    assert set(events.Tags()["scalars"]) == {"train/box_loss", MAP}


def test_without_tensorboard_one_line_and_nothing_written(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    tensorboard_log.summary_writer_class.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=tensorboard_log.__name__):
            for step in range(2):
                board = TensorBoardLog(tmp_path / f"run{step}")
                board.scalars(step, {"train/box_loss": 0.5})
                board.images({"labels": tmp_path / "missing.jpg"})
                board.close()
    finally:
        tensorboard_log.summary_writer_class.cache_clear()
    assert not list(tmp_path.iterdir()), "no folder and no event file"
    lines = [record.getMessage() for record in caplog.records if "tensorboard" in record.getMessage()]
    assert len(lines) == 1 and "not installed" in lines[0], lines
