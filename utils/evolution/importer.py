"""Import a yolov5 evolve.csv into a study as finished children, matching columns by name, once per file."""

from __future__ import annotations

import csv
import hashlib
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna

from utils.errors import UserError
from utils.evolution.search_space import SearchSpace
from utils.evolution.seeded import IMPORTED_ATTR
from utils.evolution.views import CSV_METRICS

IMPORTS_ATTR = "imported_files"  # study user attr: sha256 of every imported csv, so a rerun skips them


def read_evolve_csv(path: Path, space: SearchSpace, meta_keys: set[str]) -> list[tuple[dict, dict]]:
    """Rows of a yolov5 evolve.csv as (metrics, hyp) pairs.

    Columns are matched by name with whitespace stripped. Every metric column is required. A column that is
    neither a metric nor a meta key is an error naming it. A meta key the hyp does not set (``anchors``) is
    dropped, and a hyp key without a column takes the base hyp's value (a yolov5 csv has no ``optimizer``); both
    with a warning. A choice key's cells must name one of its choices.
    """
    if not path.is_file():
        raise UserError(f"--evolve-from file not found: {path}")
    try:
        with path.open(newline="") as file:
            rows = [[cell.strip() for cell in row] for row in csv.reader(file) if row]
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a csv file (not UTF-8 text: a binary file?)") from None
    if not rows:
        raise UserError(f"{path}: empty file, expected a yolov5 evolve.csv with a header row")
    header = rows[0]
    missing_metrics = [name for name in CSV_METRICS if name not in header]
    unknown = [name for name in header if name not in CSV_METRICS and name not in meta_keys]
    if missing_metrics or unknown:
        parts = [f"missing metric columns: {', '.join(missing_metrics)}"] if missing_metrics else []
        parts += [f"columns that are neither metrics nor meta keys: {', '.join(unknown)}"] if unknown else []
        raise UserError(f"{path}: {'; '.join(parts)}")
    dropped = [name for name in header if name in meta_keys and name not in space.base_hyp]
    absent = [key for key in space.base_hyp if key not in header]
    if dropped:
        warnings.warn(f"{path}: ignoring columns the hyp does not set: {', '.join(dropped)}", stacklevel=2)
    if absent:
        warnings.warn(f"{path}: no column for {', '.join(absent)}; using the base hyp's values", stacklevel=2)
    pairs = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise UserError(f"{path} line {line}: {len(row)} values for {len(header)} columns")
        cells = parse_cells(dict(zip(header, row)), space, f"{path} line {line}")
        metrics = {name: cells[name] for name in CSV_METRICS}
        hyp = {key: cells.get(key, base) for key, base in space.base_hyp.items()}
        pairs.append((metrics, hyp))
    return pairs


def parse_cells(cells: dict[str, str], space: SearchSpace, where: str) -> dict[str, float | str]:
    """One row's values: a choice key's cell must name one of its choices (our evolve.csv's ``optimizer``
    column); every other cell is a number."""
    values: dict[str, float | str] = {}
    for name, cell in cells.items():
        if name in space.choices:
            if cell not in space.choices[name]:
                raise UserError(f"{where}: {name} '{cell}' is not one of {', '.join(space.choices[name])}")
            values[name] = cell
            continue
        try:
            values[name] = float(cell)
        except ValueError as error:
            raise UserError(f"{where}: {error}") from None
    return values


def clip_to_space(hyp: dict[str, float | str], space: SearchSpace) -> dict[str, float | str]:
    """Evolved numeric keys clipped to the current bounds (an old run may have used other ones)."""
    clipped = dict(hyp)
    for key, spec in space.genes.items():
        if spec.type != "choice":
            clipped[key] = min(max(hyp[key], spec.low), spec.high)
    return clipped


def import_evolve_csv(
    study: optuna.Study,
    path: Path,
    space: SearchSpace,
    meta_keys: set[str],
    fitness: Callable[[dict[str, float]], float],
) -> int:
    """Add the csv's rows as COMPLETE children unless this file was imported before; returns rows added.

    Call under the run lock. Values of evolved keys outside the meta bounds are clipped, with a warning. A bad row
    anywhere adds nothing, so that fixing the file and rerunning never duplicates the rows before it.
    """
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    done = list(study.user_attrs.get(IMPORTS_ATTR, []))
    if digest and digest in done:
        return 0
    pairs = read_evolve_csv(path, space, meta_keys)
    distributions = space.distributions()
    clipped_rows, trials = 0, []
    for row, (metrics, hyp) in enumerate(pairs):  # every row is checked before the first is added
        value = fitness(metrics)
        if not math.isfinite(value):
            raise UserError(f"{path} line {row + 2}: fitness is not finite ({value})")
        bad = [key for key, cell in hyp.items() if isinstance(cell, float) and not math.isfinite(cell)]
        if bad:
            raise UserError(f"{path} line {row + 2}: {', '.join(bad)} is not a finite number")
        inside = clip_to_space(hyp, space)
        clipped_rows += inside != hyp
        params = {key: spec.cast(inside[key]) for key, spec in space.genes.items()}
        trial = optuna.trial.create_trial(
            value=value,
            params=params,
            distributions=distributions,
            user_attrs={
                "metrics": metrics,
                "hyp": {**inside, **params},
                IMPORTED_ATTR: True,
                "source": f"{path.name}:{row + 2}",
            },  # fmt: skip
        )
        trials.append(trial)
    study.add_trials(trials)
    if clipped_rows:
        warnings.warn(f"{path}: {clipped_rows} rows had values outside the meta bounds; clipped", stacklevel=2)
    study.set_user_attr(IMPORTS_ATTR, [*done, digest])
    return len(pairs)
