"""The evolution loop: claim a child in the shared study, run the objective on it, record it, refresh the views."""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from utils.errors import UserError
from utils.evolution.child import Objective, compute_fitness, run_child, run_evaluation
from utils.evolution.console import child_header, eta_line, planned_evaluation_runs
from utils.evolution.evaluations import (
    REPEAT,
    SURPLUS_ATTR,
    Task,
    TrustPlan,
    claim_task,
    evaluation_study,
    finished_evaluations,
    planned_tasks,
)
from utils.evolution.importer import import_evolve_csv
from utils.evolution.pruning import build_pruner, pruner_name
from utils.evolution.sampler import build_sampler, quiet_optuna
from utils.evolution.search_space import GeneSpec, SearchSpace, validate_search_space
from utils.evolution.seeded import IMPORTED_ATTR
from utils.evolution.storage import (
    FAILURE_ATTR,
    WORKER_ATTR,
    Failure,
    Worker,
    fail_stale_children,
    open_study,
    run_lock,
)
from utils.evolution.trust import TrustReport, build_report
from utils.evolution.verdict import pooled_noise
from utils.evolution.views import write_views
from utils.run_dir import make_folder

LOGGER = logging.getLogger(__name__)
MAX_CONSECUTIVE_FAILURES = 10  # that many failed children in a row means the setup is broken, not the hyps
MAX_TASK_FAILURES = 2  # an evaluation that failed this often is given up
SETUP_ATTR = "setup"


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
    # Interrupted runs and runs of dead workers say nothing about the setup (a Ctrl-C of many workers fails many).
    finished = [
        trial for trial in own_children(study)
        if trial.state.is_finished() and (trial.state != TrialState.FAIL or is_objective_failure(trial))
    ]  # fmt: skip
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


# Setup keys recorded only since a later version, with the value every child had before: a study made earlier keeps
# it (its children trained in float32, so bf16 workers may not join it).
SETUP_BEFORE_RECORDED = {"cpu_fast": False}


def check_setup(study: optuna.Study, space: SearchSpace, setup: Mapping[str, object] | None) -> None:
    """Record what the study searches on first use; a worker or rerun with another setup must use another name.

    A setup value that is also an evolved gene (``optimizer`` with an optimizer gene) is not pinned: each child
    carries its own.
    """
    genes = {key: [spec.gain, spec.low, spec.high, spec.scale, spec.type] for key, spec in space.genes.items()}
    for key, spec in space.genes.items():
        if spec.type == "choice":
            genes[key].append(list(spec.choices))
    pinned = {key: value for key, value in (setup or {}).items() if key not in space.genes}
    current = {"hyp_keys": list(space.base_hyp), "hyp": dict(space.base_hyp), "search_space": genes, **pinned}
    recorded = study.user_attrs.get(SETUP_ATTR)
    if recorded is None:
        study.set_user_attr(SETUP_ATTR, current)
        return
    # A key that an older version did not record takes the value every child had then (SETUP_BEFORE_RECORDED) or,
    # once this worker matches every recorded key, this worker's: a refused worker writes nothing.
    recorded = {**{key: value for key, value in SETUP_BEFORE_RECORDED.items() if key in current}, **recorded}
    differing = sorted(key for key in recorded if current.get(key) != recorded[key])
    if differing:
        # The recorded values are named, so that a rerun can match them (cpu_fast=False: add --no-cpu-fast).
        shown = [text for key in differing for text in recorded_values(key, recorded.get(key), current.get(key))]
        raise UserError(
            f"study '{study.study_name}' was started with a different {', '.join(differing)}; "
            "use another --name to start a new evolution (--evolve-from can seed it from the old evolve.csv)"
            + (f"; the study has {', '.join(shown)}: rerun with flags that give these to continue it" if shown else "")
        )
    if not set(current) <= set(study.user_attrs[SETUP_ATTR]):
        genes = set(recorded.get("search_space", {}))  # a gene's value is each child's own, never pinned
        study.set_user_attr(SETUP_ATTR, {**{k: v for k, v in current.items() if k not in genes}, **recorded})


def recorded_values(key: str, recorded: object, current: object, most: int = 4) -> list[str]:
    """``key=value`` for a short recorded value; for a mapping (the hyp, the fitness weights), its entries that
    differ from ``current``'s (``hyp.lr0=0.01``), the first ``most`` of them."""
    if isinstance(recorded, Mapping) and isinstance(current, Mapping):
        keys = [name for name in {**recorded, **current} if recorded.get(name) != current.get(name)]
        return [f"{key}.{name}={recorded.get(name)!r}" for name in keys[:most]] + (["..."] if keys[most:] else [])
    return [f"{key}={recorded!r}"] if len(repr(recorded)) <= 40 else []


def run(
    objective: Objective,
    base_hyp: Mapping[str, float | str],
    meta: Mapping[str, GeneSpec | Mapping],
    n: int,
    *,
    run_dir: Path,
    storage: str | None = None,
    study_name: str | None = None,
    sampler: str = "ga",
    seed: int = 0,
    freeze: Iterable[str] = (),
    prune: str | optuna.pruners.BasePruner = "none",
    steps: int | None = None,
    evolve_from: str | Path | None = None,
    fitness_weights: Mapping[str, float] | None = None,
    parent_selection: str = "single",
    save_children: bool = False,
    plots: bool = True,
    setup: Mapping[str, object] | None = None,
    trust: TrustPlan | None = None,
    poll_seconds: float = 5.0,
) -> optuna.Study:
    """Evolve ``base_hyp`` until the study holds ``n`` finished children, sharing the study with other workers.

    ``base_hyp`` holds numbers, and names for choice genes (``optimizer: "SGD"``), as each child's hyp does;
    ``objective(hyp, child)`` returns metrics, scored by ``utils.evaluation.fitness.fitness(metrics, fitness_weights)``.
    Workers with the same ``run_dir`` (journal) or ``storage`` URL and study name share one study; rerunning resumes
    toward ``n``; imported rows (``evolve_from``) and ``trust``'s extra evaluations (noise, confirmation, fidelity;
    default ``TrustPlan()``) do not count toward ``n``. ``setup`` (json-safe) joins the hyp keys and search space
    recorded on the study: a worker whose setup differs is refused. ``plots=False`` skips the PNGs. A worker with
    nothing to claim waits (``poll_seconds``) while others still run, so every worker ends with the same verdict.
    ``prune`` (a name of ``pruning.PRUNERS`` or an Optuna pruner) judges ``child.report(step, fitness)``; ``steps``
    is a child's last step (epochs). Pruned children count toward ``n`` but are never rows of evolve.csv.
    """
    if n < 1:
        raise UserError(f"--evolve needs a number of children >= 1 (got {n})")
    space = validate_search_space(base_hyp, meta, freeze)
    run_dir = make_folder(Path(run_dir))
    quiet_optuna()
    score = functools.partial(compute_fitness, weights=fitness_weights)
    pruner = build_pruner(prune, steps) if isinstance(prune, str) else prune
    with run_lock(run_dir):
        search = build_sampler(sampler, space, seed, parent_selection)
        study = open_study(run_dir, storage, study_name or run_dir.name, search, pruner)
        # The seed and the seeds per confirmation define which runs are "fresh": every worker must share them.
        # So must the pruner: halving and hyperband record rung results on the children that another rule misreads.
        shared = {"seed": seed, "confirm_seeds": (trust or TrustPlan()).confirm_seeds, "pruner": pruner_name(prune)}
        check_setup(study, space, {**(setup or {}), **shared})
        if evolve_from is not None:
            import_evolve_csv(study, Path(evolve_from), space, set(meta) | set(space.base_hyp), score)
    work = Work(study, evaluation_study(study), space, objective, score, seed, run_dir, save_children, n,
                trust or TrustPlan(), Worker.current(), plots, steps)  # fmt: skip
    while (ran := work.step()) or work.pending():
        if not ran:
            time.sleep(poll_seconds)  # nothing to claim, but other workers still train children or evaluations
    work.finish()
    return study


@dataclass
class Work:
    """One worker's share: due evaluations first (the base's repeats as soon as the base is done, then
    confirmation and fidelity once every child is done), else a new child."""

    study: optuna.Study
    evaluations: optuna.Study
    space: SearchSpace
    objective: Objective
    score: Callable[[Mapping[str, float]], float]
    seed: int
    run_dir: Path
    save_children: bool
    n: int
    trust: TrustPlan
    worker: Worker
    plots: bool
    steps: int | None = None  # a child's epochs, to weigh longer evaluations in the ETA
    seconds_per_child: list[float] = field(default_factory=list)  # this worker's finished children, for the ETA
    eta_explained: bool = False

    def step(self) -> bool:
        """Run one evaluation or child; False when neither is available to this worker now."""
        claimed = claim_task(self.evaluations, self.due_tasks(), self.worker)
        if claimed is not None:
            task, trial = claimed
            child = {trial.number: trial for trial in self.study.get_trials(deepcopy=False)}[task.child]
            length = f", {task.epochs} epochs" if task.epochs else ""
            print(f"evolve: {task.kind} of child {task.child} (seed {task.seed}{length})", flush=True)
            try:
                state = run_evaluation(self.evaluations, trial, task, child, self.objective, self.score, self.seed,
                                       self.run_dir, self.save_children)  # fmt: skip
            finally:
                self.refresh()
            value = self.evaluations.get_trials(deepcopy=False)[trial.number].value
            result = f"fitness {value:.5g}" if state == TrialState.COMPLETE else state.name.lower()
            print(f"evolve: {task.kind} of child {task.child} (seed {task.seed}{length}) {result}", flush=True)
            self.report_eta()
            return True
        self.measure_noise()
        trial = claim_child(self.study, self.n, self.worker)
        if trial is None:
            return False
        started = time.monotonic()
        try:
            state = run_child(self.study, trial, self.space, self.objective, self.score, self.seed, self.run_dir,
                              self.save_children, announce=self.announce)  # fmt: skip
        finally:
            self.refresh()
        if state != TrialState.FAIL:
            self.seconds_per_child.append(time.monotonic() - started)
        report_progress(self.study, trial.number, state, self.n)
        self.report_eta()
        return True

    def measure_noise(
        self, children: Sequence[FrozenTrial] | None = None, evaluations: list | None = None
    ) -> tuple[FrozenTrial | None, list[float]]:
        """Hand the sampler's model the study's measured seed noise, from the base's runs (its own and its repeats),
        when the sampler takes one; returns (the base, its runs)."""
        children = own_children(self.study) if children is None else children
        evaluations = finished_evaluations(self.evaluations) if evaluations is None else evaluations
        base = base_child(children)
        if base is None or base.state != TrialState.COMPLETE:
            return base, []
        runs = [float(base.value)] + [float(trial.value) for task, trial in evaluations
                                      if task.kind == REPEAT and task.child == base.number]  # fmt: skip
        if hasattr(self.study.sampler, "measured_noise"):
            noise = pooled_noise([runs])
            self.study.sampler.measured_noise = noise.sd**2 if noise.known else 0.0
        return base, runs

    def announce(self, number: int, hyp: Mapping[str, float | str]) -> None:
        """The child's header, before it trains."""
        workers = self.workers()
        label = None
        if len(workers) > 1:
            several_hosts = len({host for host, _ in workers}) > 1
            label = f"{self.worker.host}:{self.worker.pid}" if several_hosts else str(self.worker.pid)
        print(child_header(number, self.n, hyp, self.space.base_hyp, self.space.genes, label), flush=True)

    def run_length(self, task: Task) -> float:
        """An evaluation's length in children's lengths (fidelity runs train longer)."""
        return task.epochs / self.steps if task.epochs and self.steps else 1.0

    def workers(self) -> set[tuple[str, int]]:
        """(host, pid) of this worker and of every worker with a child or evaluation running now."""
        running = [
            *self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)),
            *self.evaluations.get_trials(deepcopy=False, states=(TrialState.RUNNING,)),
        ]
        owners = [trial.user_attrs.get(WORKER_ATTR) for trial in running]
        return {(owner["host"], owner["pid"]) for owner in owners if owner} | {(self.worker.host, self.worker.pid)}

    def report_eta(self) -> None:
        """The time left for the whole evolution (children, then evaluations), from this worker's median child."""
        if not self.seconds_per_child:
            return
        children_left = max(self.n - count_finished(self.study), 0)
        done = [task for task, _ in finished_evaluations(self.evaluations)]
        if all_children_done(self.study, self.n):  # the evaluations are known now, no longer an upper estimate
            evaluations_left = sum(map(self.run_length, set(self.due_tasks()) - set(done)))
        else:
            planned = planned_evaluation_runs(self.trust, self.n, self.steps)
            evaluations_left = max(planned - sum(map(self.run_length, done)), 0.0)
        if children_left + evaluations_left <= 0:
            return
        workers = len(self.workers())
        line = eta_line(self.seconds_per_child, children_left, evaluations_left, workers, not self.eta_explained)
        self.eta_explained = self.eta_explained or workers > 1
        print(line, flush=True)

    def due_tasks(self) -> list[Task]:
        """The planned evaluations, less those given up."""
        children = own_children(self.study)
        ready, ranking = self.confirmation_order(children)
        tasks = planned_tasks(children, base_child(children), ready, self.seed, self.trust, ranking)
        given_up = self.given_up()
        return [task for task in tasks if task not in given_up]

    def confirmation_order(
        self, children: Sequence[FrozenTrial], evaluations: list | None = None
    ) -> tuple[bool, list[int] | None]:
        """(whether the top children can be picked now, their order): once every child is done, and for a sampler
        with a model (``rank_children``) once the base's repeats are in too, in the model's order (its noise then the
        one the base's runs measured), so that every worker and rerun picks the same children; else None (by one
        run each)."""
        rank = getattr(self.study.sampler, "rank_children", None)
        if not all_children_done(self.study, self.n) or rank is None:
            return all_children_done(self.study, self.n), None
        base, runs = self.measure_noise(children, evaluations)
        given_up = {task.child for task in self.given_up()}
        if base is not None and runs and len(runs) - 1 < self.trust.confirm_seeds and base.number not in given_up:
            return False, None
        return True, rank(self.study)

    def given_up(self) -> set[Task]:
        """Evaluations whose objective failed twice (a run that keeps failing, say out of memory at full length).
        An objective that stops an evaluation itself (raises ``optuna.TrialPruned``) counts as failing it.
        Interrupted runs and runs of dead workers do not count: rerunning the command retries them."""
        states = (TrialState.FAIL, TrialState.PRUNED)
        failures = Counter(
            Task.of(trial)
            for trial in self.evaluations.get_trials(deepcopy=False, states=states)
            if trial.state == TrialState.PRUNED or is_objective_failure(trial)
        )
        return {task for task, count in failures.items() if count >= MAX_TASK_FAILURES}

    def pending(self) -> bool:
        """Whether other workers may still finish children or evaluations (then this one waits for them)."""
        running = (TrialState.RUNNING,)
        return bool(self.study.get_trials(deepcopy=False, states=running)) or bool(
            self.evaluations.get_trials(deepcopy=False, states=running)
        )

    def finish(self) -> None:
        """Write the final views and print where they are, then the trust report, the verdict last."""
        self.refresh()
        views = sorted(path.name for path in self.run_dir.iterdir() if path.suffix in (".csv", ".yaml", ".png"))
        print(f"evolve: views in {self.run_dir}: {', '.join(views)}", flush=True)
        for line in self.report().lines():
            print(f"evolve: {line}", flush=True)

    def refresh(self) -> None:
        """Rewrite every view from the two studies, under the run lock so that writers never interleave."""
        evaluations = finished_evaluations(self.evaluations)
        with run_lock(self.run_dir):
            write_views(self.study, self.run_dir, self.space.column_keys, self.space.evolved_keys, self.plots,
                        evaluations=evaluations, report=self.report(evaluations))  # fmt: skip

    def report(self, evaluations: list | None = None) -> TrustReport:
        children = own_children(self.study)
        evaluations = finished_evaluations(self.evaluations) if evaluations is None else evaluations
        given_up = {task.child for task in self.given_up()}
        ready, ranking = self.confirmation_order(children, evaluations)
        return build_report(children, base_child(children), evaluations, ready, self.trust, given_up, ranking)


def is_objective_failure(trial: FrozenTrial) -> bool:
    """A FAIL the objective caused, not a surplus claim, an interruption or a worker that died (as recorded on the
    trial; a run failed by an older version, which recorded no reason, counts as retryable)."""
    return trial.state == TrialState.FAIL and trial.user_attrs.get(FAILURE_ATTR) == Failure.OBJECTIVE


def base_child(children: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The child that trained the base hyp: the one that completed, else the one still running (or pruned), else
    the last that failed (a failed base is trained again by the next child: ``seeded.is_base_child``)."""
    bases = [child for child in children if child.user_attrs.get("lineage", {}).get("base")]
    by_preference = (
        *(child for child in bases if child.state == TrialState.COMPLETE),
        *(child for child in reversed(bases) if child.state != TrialState.FAIL),
        *reversed(bases),
    )
    return next(iter(by_preference), None)


def all_children_done(study: optuna.Study, n: int) -> bool:
    """``n`` children finished and none still running: the top children are final."""
    children = own_children(study)
    return count_finished(study) >= n and not any(child.state == TrialState.RUNNING for child in children)


def report_progress(study: optuna.Study, number: int, state: TrialState, n: int) -> None:
    trials = study.get_trials(deepcopy=False)
    result = f"fitness {trials[number].value:.5g}" if state == TrialState.COMPLETE else state.name.lower()
    completed = [trial.value for trial in trials if trial.state == TrialState.COMPLETE]
    best = f", best {max(completed):.5g}" if completed else ""
    print(f"evolve: child {number} {result} ({count_finished(study)}/{n} finished{best})", flush=True)
