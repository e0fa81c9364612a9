"""Tests for utils/evolution/pruning.py, through the real loop: each pruner stops lagging children, pruned children
are never rows of evolve.csv, Hyperband keeps one base child, the trust evaluations are never pruned."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from tests.evolve_worker import synthetic_metrics
from utils.errors import UserError
from utils.evolution import load_meta, run
from utils.evolution.evaluations import TrustPlan, evaluation_study
from utils.evolution.pruning import PRUNERS, ChildPruner, build_pruner
from utils.evolution.sampler import SAMPLERS
from utils.training.hyp import load_hyp

STEPS = 9


def quality(index: int) -> float:
    """Every third child is good (1.0); the others are bad, each a little worse than the one before."""
    return 1.0 if index % 3 == 0 else 0.5 - 0.01 * index


def with_fitness(hyp: dict, value: float) -> dict[str, float]:
    return {**synthetic_metrics(hyp), "metrics/mAP_0.5": value, "metrics/mAP_0.5:0.95": value}


def rising(hyp: dict, child) -> dict[str, float]:
    """Fitness rises in a straight line to the child's quality: the order at every step is the final order."""
    for step in range(1, STEPS + 1):
        child.report(step, quality(child.index) * step / STEPS)
    return with_fitness(hyp, quality(child.index))


def evolve(tmp_path, prune, n=15, **kwargs) -> optuna.Study:
    trust = kwargs.pop("trust", TrustPlan(confirm=0, confirm_seeds=0))
    return run(rising, load_hyp(), load_meta(), n, run_dir=tmp_path, prune=prune, steps=STEPS, plots=False,
               trust=trust, **kwargs)  # fmt: skip


def csv_rows(run_dir) -> list[str]:
    return (run_dir / "evolve.csv").read_text().splitlines()[1:]


@pytest.mark.parametrize("name", ["median", "halving", "hyperband"])
def test_each_pruner_stops_only_lagging_children_and_they_are_never_rows(tmp_path, name):
    study = evolve(tmp_path, name)
    pruned = [trial for trial in study.trials if trial.state == TrialState.PRUNED]
    completed = [trial for trial in study.trials if trial.state == TrialState.COMPLETE]
    assert pruned, f"{name} pruned nobody"
    assert all(quality(trial.number) < 1 for trial in pruned), "a good child was pruned"
    assert all(trial.state == TrialState.COMPLETE for trial in study.trials if quality(trial.number) == 1)
    assert all(max(trial.intermediate_values) < STEPS for trial in pruned), "pruned children saved no epochs"
    assert len(pruned) + len(completed) == 15, "pruned children count toward n"
    rows = csv_rows(tmp_path)
    assert len(rows) == len(completed)
    header = [name.strip() for name in (tmp_path / "evolve.csv").read_text().splitlines()[0].split(",")]
    keys = [key for key in header[7:] if isinstance(load_hyp()[key], (int, float))]  # a child's numeric hyp
    columns = [header.index(key) for key in keys]
    pruned_hyps = {tuple(f"{trial.user_attrs['hyp'][key]:20.5g}" for key in keys) for trial in pruned}
    row_hyps = {tuple(row.split(",")[column] for column in columns) for row in rows}
    assert len(row_hyps) == len(rows) and not pruned_hyps & row_hyps, "a pruned child is a row"


def test_without_pruning_every_child_completes(tmp_path):
    study = evolve(tmp_path, "none", n=8)
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE] * 8
    assert len(csv_rows(tmp_path)) == 8


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_hyperband_trains_the_base_hyp_once_with_every_sampler(tmp_path, sampler):
    # Optuna shows a sampler only the current bracket's trials when the pruner is a HyperbandPruner: the first child
    # of each bracket would then be taken for the base.
    study = evolve(tmp_path, "hyperband", n=20, sampler=sampler)
    bases = [trial.number for trial in study.trials if trial.user_attrs.get("lineage", {}).get("base")]
    assert bases == [0]
    assert any(trial.state == TrialState.PRUNED for trial in study.trials)


def test_a_child_is_never_pruned_at_its_last_step():
    class Always(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    pruner = ChildPruner(Always(), steps=STEPS)
    study = optuna.create_study(direction="maximize")
    trial = optuna.trial.create_trial(state=TrialState.RUNNING, intermediate_values={1: 0.1, STEPS - 1: 0.2})
    assert pruner.prune(study, trial)
    trial = optuna.trial.create_trial(state=TrialState.RUNNING, intermediate_values={1: 0.1, STEPS: 0.2})
    assert not pruner.prune(study, trial)


def test_trust_evaluations_are_never_pruned(tmp_path):
    repeats = []

    def evaluations_lag(hyp, child):
        # Repeats (another training seed) report poor starts, each worse than the last: halving would stop them.
        if child.train_seed != 0:
            repeats.append(child.index)
            for step in range(1, STEPS + 1):
                child.report(step, 0.1 / len(repeats) * step / STEPS)
            return with_fitness(hyp, quality(child.index))
        return rising(hyp, child)

    trust = TrustPlan(confirm=2, confirm_seeds=2)
    study = run(evaluations_lag, load_hyp(), load_meta(), 10, run_dir=tmp_path, prune="halving", steps=STEPS,
                plots=False, trust=trust)  # fmt: skip
    assert any(trial.state == TrialState.PRUNED for trial in study.trials)
    evaluations = evaluation_study(study).trials
    assert len(evaluations) >= 4  # the base's two repeats, then two fresh seeds for the best other child
    assert all(trial.state == TrialState.COMPLETE for trial in evaluations)
    assert all(len(trial.intermediate_values) == STEPS for trial in evaluations)


def test_a_study_keeps_its_pruner(tmp_path):
    evolve(tmp_path, "halving", n=4)
    evolve(tmp_path, "halving", n=5)
    with pytest.raises(UserError, match="different pruner; use another --name"):
        evolve(tmp_path, "hyperband", n=6)


@pytest.mark.parametrize("name", PRUNERS)
def test_every_name_builds(name):
    assert isinstance(build_pruner(name, STEPS), optuna.pruners.BasePruner)
    with pytest.raises(ValueError, match="pruner must be one of"):
        build_pruner("asha", STEPS)


def test_an_evaluation_the_objective_stops_is_given_up_not_retried_forever(tmp_path):
    """An objective that raises TrialPruned in a repeat (not the pruner's doing) must not loop: the repeat is given up
    after two tries, like a failing one, and the evolution ends."""
    attempts = []

    def stops_repeats(hyp, child):
        if child.train_seed != 0:
            attempts.append(child.index)
            raise optuna.TrialPruned("the objective stopped this repeat")
        return rising(hyp, child)

    run(stops_repeats, load_hyp(), load_meta(), 3, run_dir=tmp_path, plots=False,
        trust=TrustPlan(confirm=1, confirm_seeds=1), poll_seconds=0.01)  # fmt: skip
    assert 0 < len(attempts) <= 4  # each planned repeat tried at most twice


def test_the_default_sampler_learns_from_pruned_children(tmp_path, monkeypatch):
    """The ga's model sees pruned children (at the lowest completed fitness), so it stops proposing where children
    get pruned."""
    from utils.evolution import surrogate

    sizes = []
    condition = surrogate.GaussianProcess.condition.__func__

    def counting(cls, x, y, *args):
        sizes.append((len(x), float(min(y))))
        return condition(cls, x, y, *args)

    monkeypatch.setattr(surrogate.GaussianProcess, "condition", classmethod(counting))
    study = evolve(tmp_path, "halving", n=45, sampler="ga")
    pruned = [trial for trial in study.trials if trial.state == TrialState.PRUNED]
    assert pruned
    completed = sum(trial.state == TrialState.COMPLETE for trial in study.trials)
    assert max(size for size, _ in sizes) > completed  # more rows than completed children: the pruned ones


def test_the_median_pruner_waits_for_five_children_at_each_epoch():
    """Imported rows count as completed trials but have no per-epoch values: a child must still be judged against
    five children that reported at its epoch, not against the base alone."""
    inner = build_pruner("median", STEPS).pruner
    assert inner._n_min_trials == 5 and inner._n_startup_trials == 5
