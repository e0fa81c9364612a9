"""Extra evaluations of a study's children: more training seeds (noise, confirmation) and longer runs (fidelity).

They are trials of a second Optuna study beside the children's, ``<name>/evaluations``, in the same storage: shared
by every worker, kept through kills and resumes, and invisible to the samplers, the pruner and ``evolve.csv``.
Each trial records its ``Task``: which child, which training seed, how many epochs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from utils.evolution.storage import EVALUATIONS_SUFFIX, WORKER_ATTR, Worker, fail_stale_children, name_metric

TASK_ATTR = "task"
SURPLUS_ATTR = "surplus"
REPEAT, FIDELITY = "repeat", "fidelity"
CLAIM_SETTLE_S = 30.0  # how long a claim waits for an earlier claim to name its task before going ahead anyway


@dataclass(frozen=True)
class Task:
    """One extra evaluation: child ``child`` (its trial number) trained with ``seed`` for ``epochs``."""

    kind: str  # REPEAT: another training seed at the children's length; FIDELITY: the child's seed, longer
    child: int
    seed: int
    epochs: int | None = None  # None: the children's length

    def as_attr(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def of(cls, trial: FrozenTrial) -> Task | None:
        attr = trial.user_attrs.get(TASK_ATTR)
        return cls(**attr) if attr else None


@dataclass(frozen=True)
class TrustPlan:
    """How much extra evaluation the evolution buys (the --confirm / --fidelity flags)."""

    confirm: int = 3  # top children retrained with fresh seeds once all children are done
    confirm_seeds: int = 2  # fresh seeds per confirmed child, and for the base (0: no repeats, noise unknown)
    fidelity: int = 0  # children retrained once at full length
    fidelity_epochs: int | None = None  # full length in epochs (the caller's default: 3 x the children's)


def evaluation_study(children: optuna.Study) -> optuna.Study:
    """The evaluations study beside ``children``, in the same storage (created on first use)."""
    study = optuna.create_study(
        storage=children._storage,  # the same journal file or database as the children
        study_name=f"{children.study_name}{EVALUATIONS_SUFFIX}",
        sampler=optuna.samplers.RandomSampler(),  # never asked for a value: tasks name their hyp
        pruner=optuna.pruners.NopPruner(),  # an evaluation is never pruned: it is a measurement, not a search
        direction="maximize",
        load_if_exists=True,
    )
    return name_metric(study)


def fresh_seeds(seed: int, count: int) -> list[int]:
    """The training seeds of repeats: the children all train with ``seed``; repeats take the next ones."""
    return [seed + offset for offset in range(1, count + 1)]


def spread_pick(ranked: Sequence[FrozenTrial], count: int) -> list[FrozenTrial]:
    """``count`` children that span the fitness range: the top half of the pick from the top, the rest evenly over
    the remaining ranks down to the last, so that a rank correlation has something to correlate."""
    if count >= len(ranked):
        return list(ranked)
    top = (count + 1) // 2
    rest = ranked[top:]
    picks = [round(position) for position in _linspace(0, len(rest) - 1, count - top)]
    return [*ranked[:top], *(rest[index] for index in picks)]


def _linspace(start: float, stop: float, count: int) -> list[float]:
    if count <= 0:
        return []
    if count == 1:
        return [stop]
    return [start + (stop - start) * index / (count - 1) for index in range(count)]


def planned_tasks(
    children: Sequence[FrozenTrial],
    base: FrozenTrial | None,
    all_done: bool,
    seed: int,
    plan: TrustPlan,
    ranking: Sequence[int] | None = None,
) -> list[Task]:
    """Every task the study's state makes available, in the order workers take them.

    The base's repeats come first, as soon as the base is done, so the noise is known early. Confirmation and
    fidelity wait until every child is done: only then are the top children known. The children confirmed are the
    first of ``ranking`` (child numbers, best first: the sampler model's mean), else the best by their one run.
    """
    tasks = []
    if base is not None and base.state == TrialState.COMPLETE and plan.confirm_seeds > 0:
        tasks += [Task(REPEAT, base.number, extra) for extra in fresh_seeds(seed, plan.confirm_seeds)]
    if not all_done:
        return tasks
    ranked = sorted(
        (child for child in children if child.state == TrialState.COMPLETE and child.value is not None),
        key=lambda child: (-child.value, child.number),
    )
    for child in confirmation_candidates(ranked, plan.confirm, ranking):
        if base is None or child.number != base.number:
            tasks += [Task(REPEAT, child.number, extra) for extra in fresh_seeds(seed, plan.confirm_seeds)]
    if plan.fidelity and plan.fidelity_epochs:
        tasks += [
            Task(FIDELITY, child.number, seed, plan.fidelity_epochs) for child in spread_pick(ranked, plan.fidelity)
        ]
    return tasks


def confirmation_candidates(
    ranked: Sequence[FrozenTrial], count: int, ranking: Sequence[int] | None = None
) -> list[FrozenTrial]:
    """The ``count`` children to confirm: the first of ``ranking`` that are in ``ranked`` (completed children, best
    run first), else the first of ``ranked``."""
    if ranking is None:
        return list(ranked[:count])
    by_number = {child.number: child for child in ranked}
    return [by_number[number] for number in ranking if number in by_number][:count]


def _claimed(trials: Iterable[FrozenTrial]) -> set[Task]:
    active = (TrialState.RUNNING, TrialState.COMPLETE)
    return {task for trial in trials if trial.state in active and (task := Task.of(trial)) is not None}


def claim_task(study: optuna.Study, tasks: Sequence[Task], worker: Worker) -> tuple[Task, optuna.Trial] | None:
    """Claim the first task no live worker has claimed or finished, or None when none is left.

    The task is written on the trial right after ``ask``; a claim then waits until every earlier claim has named
    its task (at most ``CLAIM_SETTLE_S``), and the earlier claim of the same task wins: the later one is closed
    as a surplus FAIL and this worker tries the next task. So two workers never train the same task.
    """
    fail_stale_children(study, worker)
    taken = _claimed(study.get_trials(deepcopy=False))
    for task in tasks:
        if task in taken:
            continue
        trial = study.ask()
        trial.set_user_attr(WORKER_ATTR, worker.as_attr())
        trial.set_user_attr(TASK_ATTR, task.as_attr())
        if _earlier_claim_of(study, trial.number, task):
            trial.set_user_attr(SURPLUS_ATTR, True)
            study.tell(trial, state=TrialState.FAIL)
            taken.add(task)
            continue
        return task, trial
    return None


def _earlier_claim_of(study: optuna.Study, number: int, task: Task) -> bool:
    deadline = time.monotonic() + CLAIM_SETTLE_S
    while True:
        earlier = [trial for trial in study.get_trials(deepcopy=False) if trial.number < number]
        unnamed = [
            trial for trial in earlier if trial.state == TrialState.RUNNING and TASK_ATTR not in trial.user_attrs
        ]
        if not unnamed or time.monotonic() > deadline:
            return task in _claimed(earlier)
        time.sleep(0.05)


def finished_evaluations(study: optuna.Study) -> list[tuple[Task, FrozenTrial]]:
    """Completed evaluations with their task, the earliest of any duplicate only, in trial order."""
    seen, kept = set(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        task = Task.of(trial)
        if task is not None and task not in seen:
            seen.add(task)
            kept.append((task, trial))
    return kept
