"""yolov5-compatible views of a study: evolve.csv and hyp_evolve.yaml, regenerated whole and written atomically."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from utils.yolo_csv import format_header, format_row

# The 7 metric columns of yolov5's evolve.csv, in its order (fitness is computed from them, never by position).
CSV_METRICS = (
    "metrics/precision",
    "metrics/recall",
    "metrics/mAP_0.5",
    "metrics/mAP_0.5:0.95",
    "val/box_loss",
    "val/obj_loss",
    "val/cls_loss",
)
CSV_NAME = "evolve.csv"
YAML_NAME = "hyp_evolve.yaml"


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a whole file through a temporary sibling and ``os.replace``: readers never see half a file."""
    mode = "wb" if isinstance(data, bytes) else "w"
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as file:
            file.write(data)
        os.chmod(temporary, 0o644)  # mkstemp makes 0600 files; views are meant to be read by anyone
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def completed_children(study: optuna.Study) -> list[FrozenTrial]:
    """Children with a result, in child-index order (imported rows included): the rows of evolve.csv."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted((trial for trial in trials if "hyp" in trial.user_attrs), key=lambda trial: trial.number)


def csv_header(hyp_keys: Sequence[str]) -> str:
    return format_header((*CSV_METRICS, *hyp_keys))


def csv_row(metrics: dict[str, float], hyp: dict[str, float], hyp_keys: Sequence[str]) -> str:
    values = [metrics.get(name, math.nan) for name in CSV_METRICS] + [hyp.get(key, math.nan) for key in hyp_keys]
    return format_row(values)


def render_csv(children: Sequence[FrozenTrial], hyp_keys: Sequence[str]) -> str:
    """evolve.csv text: one header, then one row per completed child."""
    lines = [csv_header(hyp_keys)]
    lines += [csv_row(child.user_attrs.get("metrics", {}), child.user_attrs["hyp"], hyp_keys) for child in children]
    return "\n".join(lines) + "\n"


def render_best_yaml(children: Sequence[FrozenTrial], hyp_keys: Sequence[str]) -> str:
    """hyp_evolve.yaml text: comments with the best and last generation and the best metrics, then the best hyp."""
    best_row = max(range(len(children)), key=lambda row: children[row].value)
    best = children[best_row]
    metrics = best.user_attrs.get("metrics", {})
    comments = [
        "# Hyperparameter evolution results",
        f"# Best generation: {best_row} (child {best.number}, fitness {best.value:.5g})",
        f"# Last generation: {len(children) - 1}",
        "# " + ("%20s," * len(CSV_METRICS) % CSV_METRICS).rstrip(","),
        "# " + ("%20.5g," * len(CSV_METRICS) % tuple(metrics.get(name, math.nan) for name in CSV_METRICS)).rstrip(","),
    ]
    hyp = {key: best.user_attrs["hyp"][key] for key in hyp_keys}
    return "\n".join(comments) + "\n\n" + yaml.safe_dump(hyp, sort_keys=False)


def write_views(
    study: optuna.Study, run_dir: Path, hyp_keys: Sequence[str], evolved_keys: Sequence[str], plots: bool = True
) -> None:
    """Regenerate every view from the study; call under the run lock so writers never interleave."""
    children = completed_children(study)
    write_atomic(run_dir / CSV_NAME, render_csv(children, hyp_keys))
    if children:
        write_atomic(run_dir / YAML_NAME, render_best_yaml(children, hyp_keys))
    if plots:
        from utils.plots.evolution import plot_evolve, plot_fitness  # matplotlib only when plotting

        if children:
            plot_evolve(children, evolved_keys, run_dir / "evolve.png")
        plot_fitness(study.get_trials(deepcopy=False), run_dir / "fitness.png")
