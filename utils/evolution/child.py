"""One run of the objective: a child (a new hyp) or an evaluation (a child's hyp again, another seed or length),
with its own folder, heartbeat, and outcome recorded on its trial."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from utils.evolution.evaluations import Task
from utils.evolution.mutation import child_seed
from utils.evolution.search_space import SearchSpace
from utils.evolution.storage import FAILURE_ATTR, Failure, Heartbeat

LOGGER = logging.getLogger(__name__)


@dataclass
class ChildContext:
    """What the objective gets besides the hyp: who the child is, where its files go, and per-epoch reports.

    ``train_seed`` is the training seed this evaluation must use (every child trains with the evolution's seed; a
    repeat of a child uses another), and ``epochs`` a length to train instead of the usual one (fidelity runs).
    """

    index: int  # the child's number; a repeat or fidelity run carries the number of the child it evaluates
    seed: int  # the child's mutation seed
    hyp: dict[str, float | str]  # numbers, and choice names for choice genes ("optimizer": "AdamW")
    trial: optuna.Trial
    run_dir: Path
    name: str  # the run's name: "12" for child 12, "12-repeat-seed1" for an evaluation of it
    train_seed: int = 0
    epochs: int | None = None
    pruning: bool = False  # whether the study's pruner may stop this run (never for evaluations)

    def report(self, step: int, fitness: float) -> None:
        """Record an intermediate fitness (the study's learning curve of this run); with pruning on, raises
        ``optuna.TrialPruned`` when the pruner stops the child here."""
        self.trial.report(float(fitness), step)
        if self.pruning and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} with fitness {fitness:.5g}")


Objective = Callable[[dict[str, float | str], ChildContext], Mapping[str, float]]


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


def suggest_hyp(trial: optuna.Trial, space: SearchSpace) -> dict[str, float | str]:
    """Draw every evolved key through the study's sampler; fixed keys come from the base hyp."""
    params: dict[str, float | str] = {}
    for key, spec in space.genes.items():
        log = spec.scale == "log"
        if spec.type == "choice":
            params[key] = trial.suggest_categorical(key, spec.choices)
        elif spec.type == "int":
            params[key] = trial.suggest_int(key, int(spec.low), int(spec.high), log=log)
        else:
            params[key] = trial.suggest_float(key, spec.low, spec.high, log=log)
    return space.hyp_from_params(params)


def child_directory(run_dir: Path, name: str, save_children: bool) -> AbstractContextManager[str]:
    """The run's own folder: kept under children/ with --save-children, otherwise removed afterwards."""
    if save_children:
        path = run_dir / "children" / name
        path.mkdir(parents=True, exist_ok=True)
        return nullcontext(str(path))
    return tempfile.TemporaryDirectory(dir=run_dir, prefix=f".child{name}-")


def run_child(
    study: optuna.Study,
    trial: optuna.Trial,
    space: SearchSpace,
    objective: Objective,
    score: Callable[[Mapping[str, float]], float],
    seed: int,
    run_dir: Path,
    save_children: bool,
    announce: Callable[[int, dict[str, float | str]], None] | None = None,
) -> TrialState:
    """Run one child and record it as COMPLETE, PRUNED or FAIL (with the error); KeyboardInterrupt re-raises.

    ``announce(number, hyp)`` is called once its hyp is drawn, before the objective runs (the console header)."""
    hyp = suggest_hyp(trial, space)
    lineage = getattr(study.sampler, "lineage", {}).pop(trial.number, {})
    trial.set_user_attr("hyp", hyp)
    child = {"index": trial.number, "seed": seed, "child_seed": child_seed(seed, trial.number), "train_seed": seed}
    trial.set_user_attr("child", child)
    trial.set_user_attr("lineage", lineage)
    name = str(trial.number)
    pruning = not isinstance(study.pruner, optuna.pruners.NopPruner)
    context = ChildContext(trial.number, child_seed(seed, trial.number), dict(hyp), trial, run_dir, name,
                           train_seed=seed, pruning=pruning)  # fmt: skip
    folder = child_directory(run_dir, name, save_children)
    if announce is not None:
        announce(trial.number, dict(hyp))
    return record_run(study, trial, objective, score, context, folder)


def run_evaluation(
    evaluations: optuna.Study,
    trial: optuna.Trial,
    task: Task,
    child: FrozenTrial,
    objective: Objective,
    score: Callable[[Mapping[str, float]], float],
    seed: int,
    run_dir: Path,
    save_children: bool,
) -> TrialState:
    """Train child ``task.child``'s hyp again with the task's seed and length, recorded in the evaluations study."""
    hyp = dict(child.user_attrs["hyp"])
    trial.set_user_attr("hyp", hyp)
    name = f"{task.child}-{task.kind}-seed{task.seed}" + (f"-{task.epochs}ep" if task.epochs else "")
    context = ChildContext(task.child, child_seed(seed, task.child), hyp, trial, run_dir, name, task.seed, task.epochs)
    return record_run(evaluations, trial, objective, score, context, child_directory(run_dir, name, save_children))


def record_run(
    study: optuna.Study,
    trial: optuna.Trial,
    objective: Objective,
    score: Callable[[Mapping[str, float]], float],
    context: ChildContext,
    folder: AbstractContextManager[str],
) -> TrialState:
    """Call the objective on ``context`` in ``folder`` and tell ``study`` the outcome; KeyboardInterrupt re-raises."""
    try:
        with folder as path, Heartbeat(trial):
            context.run_dir = Path(path)
            metrics = scalar_metrics(objective(dict(context.hyp), context))
        value = score(metrics)
        if not math.isfinite(value):
            raise ValueError(f"fitness is {value} (metrics {metrics})")
    except optuna.TrialPruned as pruned:
        trial.set_user_attr("pruned", str(pruned))
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    except KeyboardInterrupt:
        trial.set_user_attr("error", "interrupted (KeyboardInterrupt)")
        trial.set_user_attr(FAILURE_ATTR, Failure.INTERRUPTED)
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as error:  # any failure of one run (NaN loss, OOM, bad value) must not end the evolution
        LOGGER.warning("run %d failed: %s: %s", trial.number, type(error).__name__, error)
        trial.set_user_attr("error", f"{type(error).__name__}: {error}")
        trial.set_user_attr(FAILURE_ATTR, Failure.OBJECTIVE)
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    trial.set_user_attr("metrics", metrics)
    study.tell(trial, value)
    return TrialState.COMPLETE
