"""Tests for utils/evolution/runner.py and cli.py: the run API in one process (faults, pruning, resume, flags)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.evolve_worker import synthetic_metrics
from utils.errors import UserError
from utils.evolution import load_meta, run
from utils.evolution.evaluations import TrustPlan, evaluation_study
from utils.training.hyp import load_hyp

ROOT = Path(__file__).resolve().parents[1]


def instant(hyp, child):
    return synthetic_metrics(hyp)


def csv_rows(run_dir):
    return (run_dir / "evolve.csv").read_text().splitlines()[1:]


def test_run_writes_views_and_resumes_toward_n(tmp_path):
    run_dir = tmp_path / "exp"
    study = run(instant, load_hyp(), load_meta(), 4, run_dir=run_dir, plots=False)
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE] * 4
    assert study.trials[0].user_attrs["hyp"] == load_hyp()
    first_rows = csv_rows(run_dir)
    study = run(instant, load_hyp(), load_meta(), 6, run_dir=run_dir, plots=False)
    assert len(study.trials) == 6 and csv_rows(run_dir)[:4] == first_rows and len(csv_rows(run_dir)) == 6
    study = run(instant, load_hyp(), load_meta(), 6, run_dir=run_dir, plots=True)
    assert len(study.trials) == 6
    assert (run_dir / "evolve.png").is_file() and (run_dir / "fitness.png").is_file()
    assert (run_dir / "hyp_evolve.yaml").read_text().count("lr0:") == 1


def test_the_python_api_is_the_evolution_package():
    import utils.evolution

    assert utils.evolution.run is run and {"run", "ChildContext", "EvolveOptions", "load_meta"} <= set(
        utils.evolution.__all__
    )


def test_failing_child_is_recorded_and_evolution_goes_on(tmp_path):
    def sometimes_fails(hyp, child):
        if child.index in (1, 3):
            raise FloatingPointError("loss is nan")
        return synthetic_metrics(hyp)

    study = run(sometimes_fails, load_hyp(), load_meta(), 4, run_dir=tmp_path, plots=False)
    states = [trial.state for trial in study.trials]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.FAIL) == 2
    assert study.trials[1].user_attrs["error"] == "FloatingPointError: loss is nan"
    assert len(csv_rows(tmp_path)) == 4


def test_non_finite_fitness_and_missing_metrics_fail_the_child(tmp_path):
    def bad_metrics(hyp, child):
        if child.index == 1:
            return {**synthetic_metrics(hyp), "metrics/mAP_0.5:0.95": math.nan}
        if child.index == 2:
            return {"val/box_loss": 1.0}
        return synthetic_metrics(hyp)

    study = run(bad_metrics, load_hyp(), load_meta(), 2, run_dir=tmp_path, plots=False)
    assert "fitness is nan" in study.trials[1].user_attrs["error"]
    assert "mAP_0.5" in study.trials[2].user_attrs["error"]


def test_a_broken_setup_stops(tmp_path):
    def always_fails(hyp, child):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(UserError, match="all failed.*CUDA out of memory"):
        run(always_fails, load_hyp(), load_meta(), 50, run_dir=tmp_path, plots=False)


def test_keyboard_interrupt_fails_the_child_and_refreshes_views(tmp_path):
    def interrupted(hyp, child):
        if child.index == 2:
            raise KeyboardInterrupt
        return synthetic_metrics(hyp)

    with pytest.raises(KeyboardInterrupt):
        run(interrupted, load_hyp(), load_meta(), 5, run_dir=tmp_path, plots=False)
    assert len(csv_rows(tmp_path)) == 2
    study = run(instant, load_hyp(), load_meta(), 5, run_dir=tmp_path, plots=False)
    assert study.trials[2].state == TrialState.FAIL and "interrupted" in study.trials[2].user_attrs["error"]
    assert len(csv_rows(tmp_path)) == 5


def test_pruning_keeps_pruned_children_out_of_the_csv(tmp_path):
    def reporting(hyp, child):
        metrics = synthetic_metrics(hyp)
        # Children after the first five report a poor start so the median pruner stops them.
        start = 0.0 if child.index >= 5 else 1.0
        for epoch in range(3):
            child.report(epoch, start + 0.01 * epoch)
        return metrics

    study = run(reporting, load_hyp(), load_meta(), 8, run_dir=tmp_path, prune="median", plots=False)
    states = [trial.state for trial in study.trials]
    assert states[:5] == [TrialState.COMPLETE] * 5 and TrialState.PRUNED in states[5:]
    completed = states.count(TrialState.COMPLETE)
    assert len(csv_rows(tmp_path)) == completed < len(states)


def test_without_prune_reports_never_prune(tmp_path):
    def reporting(hyp, child):
        child.report(0, 1.0 if child.index < 5 else 0.0)
        child.report(1, 1.0 if child.index < 5 else 0.0)
        return synthetic_metrics(hyp)

    study = run(reporting, load_hyp(), load_meta(), 7, run_dir=tmp_path, plots=False)
    assert all(trial.state == TrialState.COMPLETE for trial in study.trials)
    expected = [{0: 1.0, 1: 1.0}] * 5 + [{0: 0.0, 1: 0.0}] * 2
    assert [trial.intermediate_values for trial in study.trials] == expected, "the dashboard's learning curves"


def test_the_objective_is_named_fitness_once_per_study(tmp_path):
    trust = TrustPlan(confirm=0, confirm_seeds=1)
    run(instant, load_hyp(), load_meta(), 2, run_dir=tmp_path, plots=False, trust=trust)
    study = run(instant, load_hyp(), load_meta(), 3, run_dir=tmp_path, plots=False, trust=trust)  # a rerun joins
    assert study.metric_names == ["fitness"]
    assert evaluation_study(study).metric_names == ["fitness"]
    names_set = (tmp_path / "study.journal").read_text().count("study:metric_names")
    assert names_set == 2, "named once per study (children, evaluations), not again by a rerun or joining worker"


def test_child_context_and_saved_children(tmp_path):
    seen = []

    def recording(hyp, child):
        (child.run_dir / "weights.txt").write_text(str(child.index))
        seen.append((child.index, child.seed, child.hyp == hyp, child.train_seed))
        metrics = synthetic_metrics(hyp)
        bonus = 0.05 if child.index == 1 else 0.0  # child 1 beats the base, whatever the sampler drew
        return {**metrics, "metrics/mAP_0.5": metrics["metrics/mAP_0.5"] + bonus,
                "metrics/mAP_0.5:0.95": metrics["metrics/mAP_0.5:0.95"] + bonus}  # fmt: skip

    trust = TrustPlan(confirm=1, confirm_seeds=1)
    run(recording, load_hyp(), load_meta(), 2, run_dir=tmp_path, save_children=True, seed=3, plots=False, trust=trust)
    # child 0 is the base: one repeat with the next seed as soon as it is done; then child 1, the top one, confirmed
    assert [(index, train_seed) for index, _, _, train_seed in seen] == [(0, 3), (0, 4), (1, 3), (1, 4)]
    assert all(same for _, _, same, _ in seen) and seen[0][1] != seen[2][1]
    assert (tmp_path / "children" / "1" / "weights.txt").read_text() == "1"
    assert (tmp_path / "children" / "1-repeat-seed4" / "weights.txt").read_text() == "1"


def test_unsaved_children_leave_nothing(tmp_path):
    run(instant, load_hyp(), load_meta(), 2, run_dir=tmp_path, plots=False)
    assert not (tmp_path / "children").exists() and not list(tmp_path.glob(".child*"))


def test_fitness_weights_are_used(tmp_path):
    weights = {"metrics/precision": 1.0}
    study = run(instant, load_hyp(), load_meta(), 2, run_dir=tmp_path, fitness_weights=weights, plots=False)
    assert study.trials[0].value == pytest.approx(0.5)


def test_import_then_evolve(tmp_path):
    from tests.test_evolution_views import yolov5_csv
    from utils.evolution.search_space import validate_search_space

    space = validate_search_space(load_hyp(), load_meta())
    old = tmp_path / "old.csv"
    old.write_text(yolov5_csv(space, 3))
    with pytest.warns(UserWarning):
        study = run(instant, load_hyp(), load_meta(), 2, run_dir=tmp_path / "exp", evolve_from=old, plots=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file is skipped (already imported), so nothing to warn about
        study = run(instant, load_hyp(), load_meta(), 2, run_dir=tmp_path / "exp", evolve_from=old, plots=False)
    assert len(study.trials) == 5 and len(csv_rows(tmp_path / "exp")) == 5
    assert study.trials[3].user_attrs["hyp"] == load_hyp()  # the first own child is the base hyp


def test_a_different_setup_cannot_join_the_study(tmp_path):
    run(instant, load_hyp(), load_meta(), 1, run_dir=tmp_path, setup={"data": "a.yaml"}, plots=False)
    run(instant, load_hyp(), load_meta(), 2, run_dir=tmp_path, setup={"data": "a.yaml"}, plots=False)
    with pytest.raises(UserError, match="different data; use another --name"):
        run(instant, load_hyp(), load_meta(), 3, run_dir=tmp_path, setup={"data": "b.yaml"}, plots=False)
    with pytest.raises(UserError, match="different search_space"):
        run(instant, load_hyp(), load_meta(), 3, run_dir=tmp_path, freeze=("lr0",), setup={"data": "a.yaml"})


def test_a_study_recorded_before_cpu_fast_keeps_its_float32_children(tmp_path):
    """A setup made before 'cpu_fast' was recorded gets the value its children had (False), not the worker's: bf16
    workers may not join it, --no-cpu-fast ones may."""
    run(instant, load_hyp(), load_meta(), 1, run_dir=tmp_path, setup={"data": "a.yaml"}, plots=False)
    with pytest.raises(UserError, match="different cpu_fast; .* the study has cpu_fast=False"):
        run(instant, load_hyp(), load_meta(), 2, run_dir=tmp_path, setup={"data": "a.yaml", "cpu_fast": True})
    run(instant, load_hyp(), load_meta(), 2, run_dir=tmp_path, setup={"data": "a.yaml", "cpu_fast": False}, plots=False)


def test_only_scalar_metrics_are_recorded(tmp_path):
    import numpy as np

    def extra_outputs(hyp, child):
        return {**synthetic_metrics(hyp), "per_class_ap": np.array([0.1, 0.2]), "fitness": np.float32(0.5)}

    study = run(extra_outputs, load_hyp(), load_meta(), 1, run_dir=tmp_path, plots=False)
    assert study.trials[0].state == TrialState.COMPLETE
    assert "per_class_ap" not in study.trials[0].user_attrs["metrics"]
    assert study.trials[0].user_attrs["metrics"]["fitness"] == 0.5


def test_workers_with_another_optimizer_or_nominal_batch_cannot_join(tmp_path):
    from utils.cli import evolution_setup, parse_train_args

    first = evolution_setup(parse_train_args(["--evolve", "2"]))
    assert first["optimizer"] == "AdamW" and first["nbs"] == 16  # shapes.yaml's recommended recipe
    run(instant, load_hyp(), load_meta(), 1, run_dir=tmp_path, setup=first, plots=False)
    sgd = evolution_setup(parse_train_args(["--evolve", "2", "--optimizer", "SGD", "--nbs", "64"]))
    with pytest.raises(UserError, match="different nbs, optimizer") as error:
        run(instant, load_hyp(), load_meta(), 2, run_dir=tmp_path, setup=sgd, plots=False)
    assert "; the study has nbs=16, optimizer='AdamW': rerun with" in str(error.value)  # what a rerun must match


def test_an_interrupted_base_is_trained_again_before_any_other_child(tmp_path):
    def interrupted_base(hyp, child):
        if child.index == 0:
            raise KeyboardInterrupt
        return synthetic_metrics(hyp)

    trust = TrustPlan(confirm=1, confirm_seeds=1)
    with pytest.raises(KeyboardInterrupt):
        run(interrupted_base, load_hyp(), load_meta(), 3, run_dir=tmp_path, plots=False, trust=trust)
    study = run(instant, load_hyp(), load_meta(), 3, run_dir=tmp_path, plots=False, trust=trust)
    lineage = [trial.user_attrs["lineage"]["base"] for trial in study.trials]
    assert lineage == [True, True, False, False] and study.trials[0].user_attrs["failure"] == "interrupted"
    assert study.trials[1].user_attrs["hyp"] == load_hyp()
    evaluations = evaluation_study(study).trials
    assert [trial.user_attrs["task"]["child"] for trial in evaluations][0] == 1  # the base's repeat, for the noise
    assert "base (child 1)" in (tmp_path / "hyp_evolve.yaml").read_text()


def test_a_base_that_fails_by_itself_is_tried_twice_then_the_search_goes_on(tmp_path):
    def base_fails(hyp, child):
        if hyp == load_hyp():
            raise RuntimeError("interrupted by a bad value")  # its words must not make it look like a Ctrl-C
        return synthetic_metrics(hyp)

    study = run(base_fails, load_hyp(), load_meta(), 3, run_dir=tmp_path, plots=False, trust=TrustPlan(0, 0))
    lineage = [trial.user_attrs["lineage"]["base"] for trial in study.trials]
    assert lineage == [True, True, False, False, False]
    assert [trial.user_attrs.get("failure") for trial in study.trials[:2]] == ["objective", "objective"]


def test_an_evaluation_that_fails_by_itself_is_given_up_whatever_its_message(tmp_path):
    calls = []

    def repeats_fail(hyp, child):
        if child.train_seed != 0:
            calls.append(child.index)
            if len(calls) > 10:
                raise SystemExit("retried for ever")  # not an Exception: it ends the run, and the test
            raise RuntimeError("interrupted by a bad value")  # its words must not make it look like a Ctrl-C
        return synthetic_metrics(hyp)

    study = run(repeats_fail, load_hyp(), load_meta(), 2, run_dir=tmp_path, plots=False, trust=TrustPlan(1, 1))
    failed = [
        (trial.user_attrs["failure"], trial.user_attrs["task"]["child"]) for trial in evaluation_study(study).trials
    ]
    assert failed and all(failure == "objective" for failure, _ in failed)
    assert set(Counter(child for _, child in failed).values()) == {2}  # each task given up after its second failure


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"base_hyp": {**load_hyp(), "lr0": 0.02, "momentum": 0.9}}, "hyp.lr0=0.01, hyp.momentum=0.937"),
        ({"meta": {**load_meta(), "lr0": dataclasses.replace(load_meta()["lr0"], high=0.05)}}, "search_space"),
        ({"freeze": ("lr0",)}, "search_space"),
        ({"seed": 1}, "seed=0"),
        ({"prune": "median"}, "pruner='none'"),
        ({"trust": TrustPlan(confirm_seeds=3)}, "confirm_seeds=2"),
    ],
)
def test_a_worker_whose_hyp_search_or_seeds_differ_is_refused_naming_the_study_values(tmp_path, change, named):
    arguments = {"base_hyp": load_hyp(), "meta": load_meta(), "run_dir": tmp_path, "plots": False}
    run(instant, n=1, **arguments)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    with pytest.raises(UserError, match="was started with a different") as error:
        run(instant, n=2, **{**arguments, **change})
    assert named in str(error.value)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before


def test_other_childrens_failures_never_use_up_the_bases_attempts():
    """Several workers: while the base trained, two other children failed by their own error; then the base was
    interrupted. The next child still retrains it."""
    import optuna

    from utils.evolution.seeded import is_base_child

    study = optuna.create_study(direction="maximize")
    for base, failure in ((True, "interrupted"), (False, None), (False, "objective"), (False, "objective")):
        trial = study.ask()
        trial.set_user_attr("lineage", {"base": base, "parents": []})
        if failure is None:
            study.tell(trial, 0.5)
        else:
            trial.set_user_attr("failure", failure)
            study.tell(trial, state=TrialState.FAIL)
    assert is_base_child(study, 4)


def test_many_interrupted_runs_are_not_a_broken_setup(tmp_path):
    """One Ctrl-C of a command with many workers fails as many children, as interrupted: the rerun goes on."""

    def interrupted(hyp, child):
        raise KeyboardInterrupt

    for _ in range(12):
        with pytest.raises(KeyboardInterrupt):
            run(interrupted, load_hyp(), load_meta(), 5, run_dir=tmp_path, plots=False, trust=TrustPlan(0, 0))
    study = run(instant, load_hyp(), load_meta(), 5, run_dir=tmp_path, plots=False, trust=TrustPlan(0, 0))
    assert sum(trial.state == TrialState.COMPLETE for trial in study.trials) == 5


def test_a_refused_worker_records_nothing_that_would_refuse_the_study_own_workers(tmp_path):
    """The study evolves the optimizer (a gene, so not pinned); a worker without that gene pins an optimizer and is
    refused, and must not leave its optimizer behind: the study's own command still joins."""
    recipe = {"base_hyp": {**load_hyp(), "optimizer": "SGD"}, "meta": load_meta(ROOT / "data/hyps/meta.recipe.yaml")}
    arguments = {"run_dir": tmp_path, "plots": False, "setup": {"optimizer": "SGD"}, "trust": TrustPlan(0, 0)}
    run(instant, n=1, **recipe, **arguments)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    with pytest.raises(UserError, match="was started with a different"):
        run(instant, load_hyp(), load_meta(), 2, **arguments)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before
    assert len(run(instant, n=2, **recipe, **arguments).trials) == 2


def noisy(hyp, child):
    from tests.evolve_worker import noisy_metrics

    return noisy_metrics(hyp, child.train_seed, noise=0.02)


def test_the_measured_noise_reaches_the_model_and_confirmation_follows_its_mean(tmp_path):
    from utils.evolution.evaluations import finished_evaluations
    from utils.evolution.verdict import pooled_noise

    study = run(noisy, load_hyp(), load_meta(), 14, run_dir=tmp_path, plots=False, trust=TrustPlan(3, 2))
    sampler = study.sampler
    done = finished_evaluations(evaluation_study(study))
    base_runs = [study.trials[0].value] + [trial.value for task, trial in done if task.child == 0]
    assert len(base_runs) == 3
    assert sampler.measured_noise == pytest.approx(pooled_noise([base_runs]).sd ** 2) and sampler.measured_noise > 0
    assert sampler.model(sampler.observations(study), study).noise >= sampler.measured_noise
    ranking = sampler.rank_children(study)
    assert sorted(ranking) == [trial.number for trial in study.trials if trial.state == TrialState.COMPLETE]
    confirmed = {task.child for task, _ in done if task.child != 0}
    assert confirmed == {number for number in ranking[:3] if number != 0}, "the model's top 3, not by one run each"
