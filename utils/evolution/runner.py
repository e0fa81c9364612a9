"""The evolution loop: claim a child in the shared study, run the objective on it, record it, refresh the views."""

from __future__ import annotations

import functools
import logging
import math
import tempfile
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from utils.errors import UserError
from utils.evolution.importer import import_evolve_csv
from utils.evolution.sampler import IMPORTED_ATTR, build_sampler, child_seed, quiet_optuna
from utils.evolution.search_space import GeneSpec, SearchSpace, validate_search_space
from utils.evolution.storage import WORKER_ATTR, Heartbeat, Worker, fail_stale_children, open_study, run_lock
from utils.evolution.views import write_views
from utils.run_dir import make_folder

LOGGER = logging.getLogger(__name__)
MAX_CONSECUTIVE_FAILURES = 10  # that many failed children in a row means the setup is broken, not the hyps
SURPLUS_ATTR = "surplus"
SETUP_ATTR = "setup"


@dataclass
class ChildContext:
    """What the objective gets besides the hyp: who the child is, where its files go, and pruning reports."""

    index: int
    seed: int
    hyp: dict[str, float]
    trial: optuna.Trial
    run_dir: Path

    def report(self, step: int, fitness: float) -> None:
        """Record an intermediate fitness; raises ``optuna.TrialPruned`` when pruning is on and the child lags."""
        self.trial.report(float(fitness), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} with fitness {fitness:.5g}")


Objective = Callable[[dict[str, float], ChildContext], Mapping[str, float]]


def compute_fitness(metrics: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    from utils.evaluation.fitness import fitness

    return float(fitness(dict(metrics), dict(weights) if weights is not None else None))


def scalar_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """The metrics that are single numbers (floats, numpy or 0-d tensor scalars); anything else is not recorded."""
    scalars = {}
    for name, value in metrics.items():
        try:
            scalars[name] = float(value)
        except (TypeError, ValueError, RuntimeError):  # arrays, strings, multi-element tensors
            continue
    return scalars


def own_children(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Children run by evolution workers: imported rows and surplus claims left out."""
    trials = study.get_trials(deepcopy=False)
    return [
        trial for trial in trials if not trial.user_attrs.get(IMPORTED_ATTR) and SURPLUS_ATTR not in trial.user_attrs
    ]


def count_finished(study: optuna.Study) -> int:
    return sum(trial.state in (TrialState.COMPLETE, TrialState.PRUNED) for trial in own_children(study))


def check_failure_streak(study: optuna.Study) -> None:
    """Stop when the last children all failed: a broken setup would otherwise burn the whole budget."""
    finished = [trial for trial in own_children(study) if trial.state.is_finished()]
    streak = finished[-MAX_CONSECUTIVE_FAILURES:]
    if len(streak) == MAX_CONSECUTIVE_FAILURES and all(trial.state == TrialState.FAIL for trial in streak):
        last_error = streak[-1].user_attrs.get("error", "unknown error")
        raise UserError(f"the last {MAX_CONSECUTIVE_FAILURES} children all failed (last: {last_error})")


def claim_child(study: optuna.Study, n: int, worker: Worker) -> optuna.Trial | None:
    """A new child for this worker, or None when the study has (or is running) its ``n`` children.

    Trial numbers are unique per study, so a child's slot is its rank among the unfinished-or-successful
    children before it; a claim beyond ``n`` (workers racing for the last slot) is closed as a surplus FAIL
    that every view ignores. Failed children free their slot: rerunning the command completes ``n``.
    """
    fail_stale_children(study, worker)
    check_failure_streak(study)
    children = own_children(study)
    active = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    if sum(trial.state in active for trial in children) >= n:
        return None
    trial = study.ask()
    trial.set_user_attr(WORKER_ATTR, worker.as_attr())
    earlier = [child for child in own_children(study) if child.number < trial.number and child.state in active]
    if len(earlier) >= n:
        trial.set_user_attr(SURPLUS_ATTR, True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial


def check_setup(study: optuna.Study, space: SearchSpace, setup: Mapping[str, object] | None) -> None:
    """Record what the study searches on first use; a worker or rerun with another setup must use another name."""
    genes = {key: [spec.gain, spec.low, spec.high, spec.scale, spec.type] for key, spec in space.genes.items()}
    current = {"hyp_keys": list(space.base_hyp), "search_space": genes, **(setup or {})}
    recorded = study.user_attrs.get(SETUP_ATTR)
    if recorded is None:
        study.set_user_attr(SETUP_ATTR, current)
        return
    differing = sorted(key for key in set(current) | set(recorded) if current.get(key) != recorded.get(key))
    if differing:
        raise UserError(
            f"study '{study.study_name}' was started with a different {', '.join(differing)}; "
            "use another --name to start a new evolution (--evolve-from can seed it from the old evolve.csv)"
        )


def suggest_hyp(trial: optuna.Trial, space: SearchSpace) -> dict[str, float]:
    """Draw every evolved key through the study's sampler; fixed keys come from the base hyp."""
    params = {}
    for key, spec in space.genes.items():
        log = spec.scale == "log"
        if spec.type == "int":
            params[key] = trial.suggest_int(key, int(spec.low), int(spec.high), log=log)
        else:
            params[key] = trial.suggest_float(key, spec.low, spec.high, log=log)
    return space.hyp_from_params(params)


def child_directory(run_dir: Path, index: int, save_children: bool) -> AbstractContextManager[str]:
    """The child's own folder: kept under children/ with --save-children, otherwise removed afterwards."""
    if save_children:
        path = run_dir / "children" / str(index)
        path.mkdir(parents=True, exist_ok=True)
        return nullcontext(str(path))
    return tempfile.TemporaryDirectory(dir=run_dir, prefix=f".child{index}-")


def run_child(
    study: optuna.Study,
    trial: optuna.Trial,
    space: SearchSpace,
    objective: Objective,
    score: Callable[[Mapping[str, float]], float],
    seed: int,
    run_dir: Path,
    save_children: bool,
) -> TrialState:
    """Run one child and record it as COMPLETE, PRUNED or FAIL (with the error); KeyboardInterrupt re-raises."""
    hyp = suggest_hyp(trial, space)
    lineage = getattr(study.sampler, "lineage", {}).pop(trial.number, {})
    trial.set_user_attr("hyp", hyp)
    trial.set_user_attr("child", {"index": trial.number, "seed": seed, "child_seed": child_seed(seed, trial.number)})
    trial.set_user_attr("lineage", lineage)
    try:
        with child_directory(run_dir, trial.number, save_children) as folder, Heartbeat(trial):
            context = ChildContext(trial.number, child_seed(seed, trial.number), dict(hyp), trial, Path(folder))
            metrics = scalar_metrics(objective(dict(hyp), context))
        value = score(metrics)
        if not math.isfinite(value):
            raise ValueError(f"fitness is {value} (metrics {metrics})")
    except optuna.TrialPruned as pruned:
        trial.set_user_attr("pruned", str(pruned))
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    except KeyboardInterrupt:
        trial.set_user_attr("error", "interrupted (KeyboardInterrupt)")
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as error:  # any failure of one child (NaN loss, OOM, bad value) must not end the evolution
        LOGGER.warning("child %d failed: %s: %s", trial.number, type(error).__name__, error)
        trial.set_user_attr("error", f"{type(error).__name__}: {error}")
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    trial.set_user_attr("metrics", metrics)
    study.tell(trial, value)
    return TrialState.COMPLETE


def run(
    objective: Objective,
    base_hyp: Mapping[str, float],
    meta: Mapping[str, GeneSpec | Mapping],
    n: int,
    *,
    run_dir: Path,
    storage: str | None = None,
    study_name: str | None = None,
    sampler: str = "ga",
    seed: int = 0,
    freeze: Iterable[str] = (),
    prune: bool = False,
    evolve_from: str | Path | None = None,
    fitness_weights: Mapping[str, float] | None = None,
    parent_selection: str = "single",
    save_children: bool = False,
    plots: bool = True,
    setup: Mapping[str, object] | None = None,
) -> optuna.Study:
    """Evolve ``base_hyp`` until the study holds ``n`` finished children, sharing the study with other workers.

    ``objective(hyp, child)`` returns metrics by name; fitness is
    ``utils.evaluation.fitness.fitness(metrics, fitness_weights)``.
    Workers started with the same ``run_dir`` (journal storage) or ``storage`` URL and study name share one study;
    rerunning the same command resumes toward ``n``. Imported rows (``evolve_from``) do not count toward ``n``.
    ``setup`` (json-safe, e.g. data and model) joins the hyp keys and search space recorded on the study: a worker
    whose setup differs is refused. ``plots=False`` skips evolve.png/fitness.png (the csv and yaml are always kept).
    """
    if n < 1:
        raise UserError(f"--evolve needs a number of children >= 1 (got {n})")
    space = validate_search_space(base_hyp, meta, freeze)
    run_dir = make_folder(Path(run_dir))
    quiet_optuna()
    score = functools.partial(compute_fitness, weights=fitness_weights)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1) if prune else optuna.pruners.NopPruner()
    worker = Worker.current()
    with run_lock(run_dir):
        search = build_sampler(sampler, space, seed, parent_selection)
        study = open_study(run_dir, storage, study_name or run_dir.name, search, pruner)
        check_setup(study, space, setup)
        if evolve_from is not None:
            meta_keys = set(meta) | set(space.base_hyp)
            import_evolve_csv(study, Path(evolve_from), space, meta_keys, score)
    refresh = functools.partial(refresh_views, study, run_dir, space, plots)
    while (trial := claim_child(study, n, worker)) is not None:
        try:
            state = run_child(study, trial, space, objective, score, seed, run_dir, save_children)
        finally:
            refresh()
        report_progress(study, trial.number, state, n)
    refresh()
    return study


def refresh_views(study: optuna.Study, run_dir: Path, space: SearchSpace, plots: bool) -> None:
    with run_lock(run_dir):
        write_views(study, run_dir, list(space.base_hyp), space.evolved_keys, plots=plots)


def report_progress(study: optuna.Study, number: int, state: TrialState, n: int) -> None:
    trials = study.get_trials(deepcopy=False)
    result = f"fitness {trials[number].value:.5g}" if state == TrialState.COMPLETE else state.name.lower()
    completed = [trial.value for trial in trials if trial.state == TrialState.COMPLETE]
    best = f", best {max(completed):.5g}" if completed else ""
    print(f"evolve: child {number} {result} ({count_finished(study)}/{n} finished{best})", flush=True)
