"""Tests for utils/evolution/views.py, importer.py and utils/plots/evolution.py: the yolov5-compatible files."""

from __future__ import annotations

import warnings

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.evolve_worker import synthetic_metrics
from utils.errors import UserError
from utils.evolution.child import compute_fitness
from utils.evolution.importer import import_evolve_csv
from utils.evolution.sampler import quiet_optuna
from utils.evolution.search_space import load_meta, validate_search_space
from utils.evolution.views import CSV_METRICS, csv_header, render_csv, write_views
from utils.plots.evolution import grid_shape, plot_evolve, plot_fitness, point_density
from utils.training.hyp import load_hyp


@pytest.fixture
def space():
    return validate_search_space(load_hyp(), load_meta())


def test_csv_metric_columns_are_the_shared_metric_names():
    from utils.evaluation.metrics import METRIC_KEYS, VAL_LOSS_KEYS

    assert CSV_METRICS == (*METRIC_KEYS, *VAL_LOSS_KEYS)


def completed_trial(space, number, lr0):
    hyp = space.hyp_from_params({"lr0": lr0})
    metrics = synthetic_metrics(hyp)
    return optuna.trial.create_trial(
        value=compute_fitness(metrics),
        params={"lr0": lr0},
        distributions={"lr0": space.genes["lr0"].distribution()},
        user_attrs={"hyp": hyp, "metrics": metrics},
    )


def study_with(space, lr0_values):
    quiet_optuna()
    study = optuna.create_study(direction="maximize")
    for number, lr0 in enumerate(lr0_values):
        study.add_trial(completed_trial(space, number, lr0))
    return study


def test_evolve_csv_format(space, tmp_path):
    study = study_with(space, [0.01, 0.003, 0.0012345678])
    write_views(study, tmp_path, list(space.base_hyp), space.evolved_keys, plots=False)
    lines = (tmp_path / "evolve.csv").read_text().splitlines()
    keys = [*CSV_METRICS, *space.base_hyp]
    assert lines[0] == ",".join(f"{key:>20}" for key in keys)
    assert sum(line == lines[0] for line in lines) == 1 and len(lines) == 4
    for line in lines[1:]:
        cells = line.split(",")
        assert len(cells) == len(keys) and all(len(cell) == 20 for cell in cells)
    lr0_column = keys.index("lr0")
    assert [line.split(",")[lr0_column] for line in lines[1:]] == [f"{v:20.5g}" for v in (0.01, 0.003, 0.0012346)]
    best = yaml.safe_load((tmp_path / "hyp_evolve.yaml").read_text())
    assert best["lr0"] == 0.003 and list(best) == list(space.base_hyp)
    assert "# Best generation: 1" in (tmp_path / "hyp_evolve.yaml").read_text()


def test_pruned_and_failed_children_are_not_rows(space):
    study = study_with(space, [0.01])
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"hyp": space.base_hyp}))
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.PRUNED, user_attrs={"hyp": space.base_hyp}, intermediate_values={0: 0.1}
        )
    )
    from utils.evolution.views import completed_children

    assert render_csv(completed_children(study), list(space.base_hyp)).count("\n") == 2


def yolov5_csv(space, rows, extra_columns=(), drop=()):
    """An evolve.csv the way yolov5 writes it: 20-wide fields, an anchors column, hyp keys in its order."""
    keys = [key for key in [*CSV_METRICS, *space.base_hyp, "anchors", *extra_columns] if key not in drop]
    lines = [("%20s," * len(keys) % tuple(keys)).rstrip(",")]
    for row in range(rows):
        hyp = {**space.base_hyp, "lr0": 0.001 * (row + 1), "anchors": 3.0, **dict.fromkeys(extra_columns, 1.0)}
        values = [{**synthetic_metrics(hyp), **hyp}[key] for key in keys]
        lines.append(("%20.5g," * len(values) % tuple(values)).rstrip(","))
    return "\n".join(lines) + "\n"


def import_file(space, tmp_path, text, study=None):
    path = tmp_path / "old_evolve.csv"
    path.write_text(text)
    study = study or optuna.create_study(direction="maximize")
    meta_keys = set(load_meta())
    return study, import_evolve_csv(study, path, space, meta_keys, compute_fitness)


def test_yolov5_csv_imports_once(space, tmp_path):
    with pytest.warns(UserWarning, match="anchors"):
        study, added = import_file(space, tmp_path, yolov5_csv(space, 4))
    assert added == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, added_again = import_file(space, tmp_path, yolov5_csv(space, 4), study=study)
    assert added_again == 0 and len(study.trials) == 4
    assert [trial.params["lr0"] for trial in study.trials] == [0.001, 0.002, 0.003, 0.004]
    assert study.best_trial.user_attrs["hyp"]["lr0"] == 0.003  # closest to the synthetic optimum 3e-3


def test_missing_hyp_columns_come_from_the_base_hyp(space, tmp_path):
    with pytest.warns(UserWarning) as record:
        study, _ = import_file(space, tmp_path, yolov5_csv(space, 2, drop=("mixup", "copy_paste")))
    messages = [str(warning.message) for warning in record]
    assert any("no column for mixup, copy_paste" in message for message in messages)
    assert any("ignoring columns the hyp does not set: anchors" in message for message in messages)
    assert study.trials[0].user_attrs["hyp"]["mixup"] == space.base_hyp["mixup"]


@pytest.mark.parametrize(
    ("text_args", "expected"),
    [
        ({"extra_columns": ("my_gain",)}, "neither metrics nor meta keys: my_gain"),
        ({"drop": ("metrics/recall",)}, "missing metric columns: metrics/recall"),
    ],
)
def test_bad_csv_columns_are_named(space, tmp_path, text_args, expected):
    with pytest.raises(UserError, match=expected), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import_file(space, tmp_path, yolov5_csv(space, 2, **text_args))


def test_ragged_csv_row(space, tmp_path):
    text = yolov5_csv(space, 2).splitlines()
    text[2] = text[2].rsplit(",", 1)[0]
    with pytest.raises(UserError, match="line 3"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import_file(space, tmp_path, "\n".join(text) + "\n")


@pytest.mark.parametrize("count", [1, 7, 35])
def test_grid_fits_any_number_of_keys(count):
    rows, columns = grid_shape(count)
    assert rows * columns >= count and (rows - 1) * columns < count


def test_point_density_counts_neighbours():
    x = np.array([0.0, 0.0, 0.0, 1.0])
    density = point_density(x, x, bins=2)
    assert list(density) == [3, 3, 3, 1]


def test_plots_written(space, tmp_path):
    study = study_with(space, [0.01, 0.003, 0.002, 0.02])
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, intermediate_values={0: 0.1}))
    children = [trial for trial in study.trials if trial.state == TrialState.COMPLETE]
    keys = [*space.evolved_keys, *(f"k{index}" for index in range(12))]  # more than yolov5's 30-plot cap
    plot_evolve(children, keys, tmp_path / "evolve.png")
    plot_fitness(study.trials, tmp_path / "fitness.png")
    for name in ("evolve.png", "fitness.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp"))


def test_header_helper_right_aligns():
    assert csv_header(["lr0"]).split(",")[-1] == " " * 17 + "lr0"


@pytest.mark.parametrize("column", ["metrics/mAP_0.5", "lr0"])
def test_a_bad_row_midway_adds_no_row(space, tmp_path, column):
    """A nan in row 3 is refused before rows 1-2 enter the study, so the fixed file's rerun does not duplicate them."""
    lines = yolov5_csv(space, 4).splitlines()
    header = [name.strip() for name in lines[0].split(",")]
    cells = lines[3].split(",")
    cells[header.index(column)] = "nan"
    lines[3] = ",".join(cells)
    study = optuna.create_study(direction="maximize")
    with pytest.raises(UserError, match="line 4"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import_file(space, tmp_path, "\n".join(lines) + "\n", study=study)
    assert study.trials == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, added = import_file(space, tmp_path, yolov5_csv(space, 4), study=study)
    assert added == 4 and len(study.trials) == 4
