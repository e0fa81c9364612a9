"""yolov5-compatible views of a study: evolve.csv and hyp_evolve.yaml, regenerated whole and written atomically."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from utils.evolution.evaluations import FIDELITY, REPEAT, Task
from utils.evolution.trust import TrustReport
from utils.evolution.verdict import fidelity_sentence
from utils.files import free_backup_path, write_atomic
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
EVOLVE_PLOT_NAME = "evolve.png"
FITNESS_PLOT_NAME = "fitness.png"
CONFIRM_CSV_NAME = "confirm.csv"  # repeated evaluations: evolve.csv's columns plus the child and the seed
FIDELITY_CSV_NAME = "fidelity.csv"
FIDELITY_PLOT_NAME = "fidelity.png"
VIEW_RECORD_NAME = ".views.json"  # sha256 of each view as this evolution last wrote it


def completed_children(study: optuna.Study) -> list[FrozenTrial]:
    """Children with a result, in child-index order (imported rows included): the rows of evolve.csv."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted((trial for trial in trials if "hyp" in trial.user_attrs), key=lambda trial: trial.number)


def csv_header(hyp_keys: Sequence[str]) -> str:
    return format_header((*CSV_METRICS, *hyp_keys))


def csv_row(metrics: dict[str, float], hyp: dict[str, float | str], hyp_keys: Sequence[str]) -> str:
    values = [metrics.get(name, math.nan) for name in CSV_METRICS] + [hyp.get(key, math.nan) for key in hyp_keys]
    return format_row(values)


def render_csv(children: Sequence[FrozenTrial], hyp_keys: Sequence[str]) -> str:
    """evolve.csv text: one header, then one row per completed child. ``hyp_keys`` in column order: the numeric
    keys first (yolov5's columns), then choice keys such as ``optimizer``, whose cells are names."""
    lines = [csv_header(hyp_keys)]
    lines += [csv_row(child.user_attrs.get("metrics", {}), child.user_attrs["hyp"], hyp_keys) for child in children]
    return "\n".join(lines) + "\n"


def render_evaluations_csv(evaluations: Sequence[tuple[Task, FrozenTrial]], hyp_keys: Sequence[str], kind: str) -> str:
    """confirm.csv (repeats) or fidelity.csv: evolve.csv's columns, then the evaluated child, the seed (and epochs)."""
    extra = ("child", "seed", "epochs") if kind == FIDELITY else ("child", "seed")
    lines = [format_header((*CSV_METRICS, *hyp_keys, *extra))]
    for task, trial in evaluations:
        if task.kind != kind:
            continue
        row = csv_row(trial.user_attrs.get("metrics", {}), trial.user_attrs.get("hyp", {}), hyp_keys)
        lines.append(f"{row},{format_row([task.child, task.seed, task.epochs][: len(extra)])}")
    return "\n".join(lines) + "\n"


def render_best_yaml(
    children: Sequence[FrozenTrial], hyp_keys: Sequence[str], report: TrustReport | None = None
) -> str:
    """hyp_evolve.yaml text: yolov5's comments (best and last generation, the best metrics), the trust report, then
    the hyp: the confirmed winner once confirmation is complete, until then the best single run."""
    best_row = max(range(len(children)), key=lambda row: children[row].value)
    if report is not None and report.confirmed:
        best_row = next(row for row, child in enumerate(children) if child.number == report.winner)
    best = children[best_row]
    metrics = best.user_attrs.get("metrics", {})
    status = "best single run, not confirmed"
    if report is not None and report.confirmed:
        beyond = report.comparison is not None and report.comparison.beyond_noise
        status = "confirmed winner, beyond noise" if beyond else "confirmed winner, within noise of the base"
        status = "the base: no confirmed hyp beats it" if report.winner == report.base else status
    comments = [
        "# Hyperparameter evolution results",
        f"# Best generation: {best_row} (child {best.number}, fitness {best.value:.5g}; {status})",
        f"# Last generation: {len(children) - 1}",
        "# " + ("%20s," * len(CSV_METRICS) % CSV_METRICS).rstrip(","),
        "# " + ("%20.5g," * len(CSV_METRICS) % tuple(metrics.get(name, math.nan) for name in CSV_METRICS)).rstrip(","),
    ]
    if report is not None:
        comments += [f"# {line}" for line in report.lines()]
    hyp = {key: best.user_attrs["hyp"][key] for key in hyp_keys}
    return "\n".join(comments) + "\n\n" + yaml.safe_dump(hyp, sort_keys=False)


class OwnedViews:
    """The view files of one run folder that this evolution wrote, told apart from files it did not write.

    Each view's sha256 is recorded in ``.views.json`` after it is written. A view file found with another content
    (a yolov5 ``evolve.csv`` copied into the folder, a file a user edited), or a folder with a view's name, is moved
    to a free backup name such as ``evolve.backup.csv`` with a console line, never overwritten. Call under the run
    lock.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.record_path = run_dir / VIEW_RECORD_NAME
        try:
            recorded = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            recorded = {}
        self.hashes: dict[str, str] = recorded if isinstance(recorded, dict) else {}

    def claim(self, name: str, content: str | bytes | None = None) -> Path:
        """The path to write view ``name`` to, after moving aside a file there that this evolution did not write.

        A file whose bytes equal the ``content`` about to be written is kept in place: nothing would be lost.
        """
        path = self.run_dir / name
        if not os.path.lexists(path):
            return path
        if path.is_file():
            existing = path.read_bytes()
            new = content.encode() if isinstance(content, str) else content
            if self.hashes.get(name) == sha256(existing) or existing == new:
                return path
        backup = free_backup_path(path)  # a folder of that name moves aside too: a view cannot replace it
        os.replace(path, backup)
        hint = f"; import it with --evolve-from {backup}" if name == CSV_NAME and backup.is_file() else ""
        print(f"evolve: {path} was not written by this evolution: kept as {backup.name}{hint}", flush=True)
        return path

    def write(self, name: str, content: str | bytes) -> None:
        write_atomic(self.claim(name, content), content)
        self.written(name)

    def written(self, name: str) -> None:
        """Record a view just written; saved at once, so an interruption never makes it look foreign."""
        self.hashes[name] = sha256((self.run_dir / name).read_bytes())
        self.save()

    def save(self) -> None:
        write_atomic(self.record_path, json.dumps(self.hashes, indent=1, sort_keys=True) + "\n")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_views(
    study: optuna.Study,
    run_dir: Path,
    hyp_keys: Sequence[str],
    evolved_keys: Sequence[str],
    plots: bool = True,
    evaluations: Sequence[tuple[Task, FrozenTrial]] = (),
    report: TrustReport | None = None,
) -> None:
    """Regenerate every view from the study; call under the run lock so writers never interleave.

    A view file this evolution did not write is kept under a backup name (``OwnedViews``), never overwritten.
    """
    children = completed_children(study)
    views = OwnedViews(run_dir)
    views.write(CSV_NAME, render_csv(children, hyp_keys))
    if children:
        views.write(YAML_NAME, render_best_yaml(children, hyp_keys, report))
    for kind, name in ((REPEAT, CONFIRM_CSV_NAME), (FIDELITY, FIDELITY_CSV_NAME)):
        if any(task.kind == kind for task, _ in evaluations):
            views.write(name, render_evaluations_csv(evaluations, hyp_keys, kind))
    if plots:
        from utils.plots.evolution import plot_evolve, plot_fidelity, plot_fitness  # matplotlib only when plotting

        if children:
            plot_evolve(children, evolved_keys, views.claim(EVOLVE_PLOT_NAME))
            views.written(EVOLVE_PLOT_NAME)
        overlay = noise_overlay(report) if report is not None else None
        plot_fitness(study.get_trials(deepcopy=False), views.claim(FITNESS_PLOT_NAME), overlay)
        views.written(FITNESS_PLOT_NAME)
        if report is not None and report.fidelity is not None:
            numbers = sorted(report.long)
            short, long = [report.runs[number][0] for number in numbers], [report.long[number] for number in numbers]
            title = fidelity_sentence(report.fidelity, report.fidelity_epochs).split(";")[0].removeprefix("fidelity: ")
            label = f"fitness, {report.fidelity_epochs} epochs"
            plot_fidelity(numbers, short, long, title, label, views.claim(FIDELITY_PLOT_NAME))
            views.written(FIDELITY_PLOT_NAME)


def noise_overlay(report: TrustReport) -> object:
    """fitness.png's band, extra seeds and confirmed winner, from the trust report."""
    from utils.plots.evolution import NoiseOverlay

    base = report.runs.get(report.base) if report.base is not None else None
    winner = report.fresh.get(report.winner) if report.winner is not None else None
    return NoiseOverlay(
        base_mean=sum(base) / len(base) if base else None,
        noise_sd=report.noise.sd if report.noise.known else None,
        repeats=tuple((number, value) for number, values in report.fresh.items() for value in values),
        winner=(report.winner, sum(winner) / len(winner)) if winner else None,
    )
