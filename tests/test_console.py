"""What the console shows: utils/evolution/console.py's lines, the runner's child headers and ETA, the labelled
training lines of a child, and real train.py runs (an ``all`` line per validated epoch, best.pt's table and plots;
an evolution's headers, epoch lines and ETA)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.evolve_worker import synthetic_metrics
from utils.evaluation.metrics import CLASS_TABLE_HEADER, format_class_table
from utils.evolution import load_meta, run
from utils.evolution.console import (
    child_header,
    epoch_line,
    eta_line,
    format_duration,
    moved_most,
    planned_evaluation_runs,
    relative_change,
)
from utils.evolution.evaluations import TrustPlan
from utils.evolution.search_space import GeneSpec
from utils.evolution.training_objective import epoch_figures, labelled_training_lines
from utils.training.best_validation import validate_best
from utils.training.hyp import load_hyp
from utils.training.options import TrainOptions

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--img", "64", "--batch", "4", "--workers", "0", "--device", "cpu"]
GENES = {
    "lr0": GeneSpec(1, 1e-5, 0.1, scale="log"),
    "mosaic": GeneSpec(1, 0.0, 1.0),
    "hsv_h": GeneSpec(1, 0.0, 0.1),
    "degrees": GeneSpec(1, 0.0, 45.0),
    "optimizer": GeneSpec(1, 0, 1, type="choice", choices=("SGD", "AdamW")),
}
BASE = {"lr0": 0.01, "mosaic": 1.0, "hsv_h": 0.015, "degrees": 0.0, "optimizer": "SGD", "fixed": 3.0}


@pytest.mark.parametrize(
    ("key", "base", "value", "expected"),
    [
        ("mosaic", 1.0, 0.75, 0.25),  # a quarter of the range
        ("degrees", 0.0, 9.0, 0.2),
        ("lr0", 0.01, 0.001, 0.25),  # one decade of the four the log range spans
        ("lr0", 0.001, 0.0001, 0.25),  # the same step lower down moves as far
        ("optimizer", "SGD", "AdamW", 1.0),
        ("optimizer", "SGD", "SGD", 0.0),
        ("mosaic", 1.0, 1.0, 0.0),
    ],
)
def test_relative_change_is_on_the_meta_scale(key, base, value, expected):
    assert relative_change(GENES[key], base, value) == pytest.approx(expected)


def test_moved_most_ranks_by_relative_change_not_by_value():
    # hsv_h moves 0.03 in value but 30% of its range; degrees moves 4.5 in value but 10% of its range.
    hyp = {**BASE, "lr0": 0.0132, "mosaic": 0.71, "hsv_h": 0.045, "degrees": 4.5}
    assert moved_most(hyp, BASE, GENES) == ["hsv_h", "mosaic", "degrees"]
    assert moved_most(hyp, BASE, GENES, count=5) == ["hsv_h", "mosaic", "degrees", "lr0"], "unmoved keys left out"
    assert moved_most({**BASE, "optimizer": "AdamW", "mosaic": 0.9}, BASE, GENES) == ["optimizer", "mosaic"]
    assert moved_most(BASE, BASE, GENES) == []


def test_child_header_names_the_child_and_its_moves():
    hyp = {**BASE, "lr0": 0.0132, "mosaic": 0.71, "hsv_h": 0.045}
    expected = "evolve: child 7/30: hsv_h 0.015→0.045, mosaic 1→0.71, lr0 0.01→0.0132"
    assert child_header(7, 30, hyp, BASE, GENES) == expected
    assert child_header(0, 2, BASE, BASE, GENES, worker="4242") == "evolve: child 0/2 (worker 4242): the base hyp"


def test_epoch_line_shows_the_validation_figures_only_when_the_epoch_validated():
    trained = {"train/box_loss": 0.1, "train/obj_loss": 0.02, "train/cls_loss": 0.003}
    validated = {**trained, "metrics/mAP_0.5": 0.41, "metrics/mAP_0.5:0.95": 0.22, "fitness": 0.239}
    assert epoch_line(7, 3, 10, epoch_figures(trained)) == "evolve: child 7  epoch 3/10  loss 0.123"
    assert epoch_line(7, 10, 10, epoch_figures(validated)) == (
        "evolve: child 7  epoch 10/10  loss 0.123  mAP50 0.41  mAP50-95 0.22  fitness 0.239"
    )


@pytest.mark.parametrize(("seconds", "text"), [(42.4, "42s"), (185, "3m 05s"), (7620, "2h 07m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_eta_counts_children_and_evaluations_and_says_once_that_workers_make_it_an_estimate():
    line = eta_line([60.0, 120.0, 600.0], children_left=4, evaluations_left=2.0, workers=1, explain=True)
    expected = "evolve: ETA 12m 00s (4 children and 2 evaluations left, 2m 00s per child, median of this worker's 3)"
    assert line == expected
    shared = eta_line([60.0], children_left=1, evaluations_left=0, workers=2, explain=True)
    assert shared.startswith("evolve: ETA 30s (1 child left,") and "an estimate" in shared
    assert "an estimate" not in eta_line([60.0], 1, 0, workers=2, explain=False)


def test_planned_evaluations_count_repeats_and_longer_fidelity_runs():
    assert planned_evaluation_runs(TrustPlan(confirm=3, confirm_seeds=2), n=30, epochs=10) == 8
    assert planned_evaluation_runs(TrustPlan(confirm=3, confirm_seeds=2), n=2, epochs=10) == 6
    plan = TrustPlan(confirm=0, confirm_seeds=0, fidelity=2, fidelity_epochs=30)
    assert planned_evaluation_runs(plan, n=30, epochs=10) == 6


def test_class_table_without_header_follows_a_progress_bar():
    results = {"num_images": 128, "num_instances": 929, "per_class": [],
               **dict(zip(("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"),
                          (0.577, 0.548, 0.587, 0.372)))}  # fmt: skip
    all_line = "                   all        128        929      0.577      0.548      0.587      0.372"
    assert format_class_table(results, per_class=False, header=False) == all_line
    assert format_class_table(results, per_class=False).splitlines() == [CLASS_TABLE_HEADER, all_line]


def test_the_runner_prints_a_header_per_child_and_an_eta(tmp_path, capsys):
    study = run(lambda hyp, child: synthetic_metrics(hyp), load_hyp(), load_meta(), 3, run_dir=tmp_path,
                plots=False, trust=TrustPlan(confirm=1, confirm_seeds=1))  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    headers = [line for line in lines if re.match(r"evolve: child \d+/3: ", line)]
    assert headers[0] == "evolve: child 0/3: the base hyp" and len(headers) == 3
    space = {key: spec for key, spec in load_meta().items() if spec.gain > 0 and key in load_hyp()}
    moved = moved_most(study.trials[1].user_attrs["hyp"], load_hyp(), space)
    assert headers[1].startswith(f"evolve: child 1/3: {moved[0]} ") and headers[1].count("→") == len(moved)
    etas = [line for line in lines if line.startswith("evolve: ETA ")]
    # After the base: 2 children, its repeat and the top child's repeat are left (an upper estimate: the top
    # child may be the base); once every child is done the evaluations left are known exactly.
    assert "(2 children and 2 evaluations left," in etas[0]
    assert "workers" not in etas[0], "one worker: no estimate note"
    assert lines[-1].startswith("evolve: verdict:"), "the verdict stays last"


def test_a_childs_own_training_lines_are_labelled(caplog):
    caplog.set_level(logging.INFO)
    autoanchor = logging.getLogger("utils.training.autoanchor")
    with labelled_training_lines("evolve: child 5 "):
        autoanchor.info("autoanchor: refitted")
    autoanchor.info("autoanchor: after the child")
    assert caplog.messages == ["evolve: child 5 autoanchor: refitted", "autoanchor: after the child"]


def test_validate_best_skips_a_run_without_best_pt(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert validate_best(tmp_path, data=None, options=TrainOptions()) is None  # never touches the data
    assert caplog.messages == [f"no {tmp_path / 'weights' / 'best.pt'} to validate (--nosave keeps best.pt only when "
                               "the final epoch is the best)"]  # fmt: skip


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.mark.slow
def test_train_prints_an_all_line_per_validated_epoch_then_best_pt_table(tiny_dataset, tmp_path):
    result = run_script("train.py", "--data", str(tiny_dataset), *TINY_ARGS, "--epochs", "2",
                        "--project", str(tmp_path), "--name", "run")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.replace("\r", "\n").splitlines()
    best = tmp_path / "run" / "weights" / "best.pt"
    final = lines.index(f"Validating {best}...")
    all_lines = [index for index, line in enumerate(lines) if line.split()[:2] == ["all", "6"]]
    epoch_all_lines = [index for index in all_lines if index < final]
    assert len(epoch_all_lines) == 2, "an all line per validated epoch"
    for index in all_lines:
        assert CLASS_TABLE_HEADER in lines[index - 1] and "100%" in lines[index - 1], "each after its finished bar"
    assert len(all_lines) == 3 and all_lines[-1] > final
    class_rows = lines[all_lines[-1] + 1 : all_lines[-1] + 4]
    assert [row.split()[0] for row in class_rows] == ["circle", "square", "triangle"], "the per-class rows by name"
    for name in ("PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png", "confusion_matrix.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0


@pytest.mark.slow
def test_evolve_prints_child_headers_epoch_lines_and_an_eta(tiny_dataset, tmp_path):
    result = run_script("train.py", "--data", str(tiny_dataset), *TINY_ARGS, "--epochs", "2", "--noplots",
                        "--project", str(tmp_path), "--name", "evo", "--evolve", "2", "--confirm", "0",
                        "--confirm-seeds", "0")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = lines.index("evolve: child 0/2: the base hyp")
    assert lines[header + 1].startswith("evolve: child 0  epoch 1/2  loss "), "the epoch lines follow the header"
    assert any(line.startswith("evolve: child 1/2: ") and "→" in line for line in lines), "the second child's moves"
    epoch_lines = [line for line in lines if re.match(r"evolve: child \d  epoch \d/2  loss ", line)]
    assert len(epoch_lines) == 4 and all("mAP50-95" in line for line in epoch_lines[1::2])
    assert "mAP50" not in epoch_lines[0], "children validate only their last epoch"
    assert any(line.startswith("evolve: ETA ") and "(1 child left," in line for line in lines)
