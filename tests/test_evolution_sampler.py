"""Tests for utils/evolution/sampler.py: the yolov5 mutation, per-child seeding and child 0."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from utils.evolution.child import suggest_hyp
from utils.evolution.mutation import FACTOR_RANGE, child_rng, mutate, mutation_factors, select_parent
from utils.evolution.sampler import build_sampler, quiet_optuna
from utils.evolution.search_space import GeneSpec, load_meta, validate_search_space
from utils.evolution.seeded import IMPORTED_ATTR
from utils.training.hyp import load_hyp


@pytest.fixture(scope="module")
def space():
    return validate_search_space({**load_hyp(), "anchors": 3.0}, load_meta())


def specs_and_bounds(space):
    specs = list(space.genes.values())
    low = np.array([spec.low for spec in specs])
    high = np.array([spec.high for spec in specs])
    return specs, low, high


@pytest.mark.parametrize("seed", range(20))
def test_mutation_stays_within_bounds(space, seed):
    specs, low, high = specs_and_bounds(space)
    rng = np.random.default_rng(seed)
    # Parents anywhere in the box, including exactly on both bounds.
    parents = [rng.uniform(low, high), low.copy(), high.copy()]
    for index, parent in enumerate(parents):
        child = mutate(parent, specs, child_rng(seed, index))
        assert np.all(child >= low) and np.all(child <= high)
        assert not np.array_equal(child, parent) or np.array_equal(parent, low)


def test_zero_valued_keys_move(space):
    specs, low, high = specs_and_bounds(space)
    zero_keys = [index for index, spec in enumerate(specs) if spec.low == 0]
    assert len(zero_keys) >= 10
    parent = np.array([0.0 if spec.low == 0 else spec.low for spec in specs])
    children = np.array([mutate(parent, specs, child_rng(7, index)) for index in range(40)])
    moved = (children[:, zero_keys] > 0).any(axis=0)
    assert moved.all(), [specs[index] for index, was in zip(zero_keys, moved) if not was]


@pytest.mark.parametrize(("spec", "parent"), [(GeneSpec(1.0, 0.0, 100.0), 20.0), (GeneSpec(1.0, 1e-5, 0.1), 1e-4)])
def test_classic_step_above_the_floor_or_away_from_zero(spec, parent):
    """Above 10% of a range starting at 0, and anywhere in a range above 0, the step is yolov5's parent * v."""
    specs, parent = [spec], np.array([parent])
    rng_for_child, rng_for_factors = child_rng(3, 5), child_rng(3, 5)
    child = mutate(parent, specs, rng_for_child)
    factor = mutation_factors(np.array([1.0]), rng_for_factors)
    assert child[0] == pytest.approx(float(f"{parent[0] * factor[0]:.5g}"))


@pytest.mark.parametrize("seed", range(10))
def test_mutation_factors_change_something_and_are_clipped(seed):
    gains = np.array([1.0, 0.3, 0.0, 2.0])
    factors = mutation_factors(gains, np.random.default_rng(seed))
    assert np.any(factors != 1)
    assert factors[2] == 1  # gain 0 never moves
    assert np.all((factors >= FACTOR_RANGE[0]) & (factors <= FACTOR_RANGE[1]))


def test_mutation_rounds_to_five_significant_digits_and_ints(space):
    specs, low, high = specs_and_bounds(space)
    child = mutate((low + high) / 3, specs, child_rng(0, 1))
    for value, spec in zip(child, specs):
        assert float(f"{value:.5g}") == value
        if spec.type == "int":
            assert value == round(value)


def test_parent_selection():
    population = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    fitness = np.array([0.1, 0.2, 0.3])
    mean, chosen = select_parent(population, fitness, np.random.default_rng(0), "weighted")
    assert chosen is None and mean[0] == pytest.approx((0 * 1 + 0.1 * 2 + 0.2 * 3 + 3e-6) / (0.3 + 3e-6), rel=1e-4)
    picks = {select_parent(population, fitness, np.random.default_rng(seed), "single")[1] for seed in range(200)}
    assert picks == {1, 2}  # the least fit row gets weight 1e-6


def new_study(sampler):
    quiet_optuna()
    return optuna.create_study(direction="maximize", sampler=sampler)


def ask_child(study, space):
    trial = study.ask()
    return trial, suggest_hyp(trial, space)


@pytest.mark.parametrize("name", ["ga", "tpe", "random", "cmaes", "gp"])
def test_child_zero_is_the_base_hyp_then_children_differ(space, name):
    study = new_study(build_sampler(name, space, seed=1))
    hyps = []
    for index in range(4):
        trial, hyp = ask_child(study, space)
        hyps.append(hyp)
        study.tell(trial, 0.1 * index)
    assert hyps[0] == space.base_hyp
    assert all(hyp != space.base_hyp for hyp in hyps[1:])
    for hyp in hyps:
        assert all(spec.low <= hyp[key] <= spec.high for key, spec in space.genes.items())


def test_imported_rows_do_not_take_the_base_slot(space):
    study = new_study(build_sampler("ga", space, seed=0))
    imported = optuna.trial.create_trial(
        value=0.5,
        params={"lr0": 0.02},
        distributions={"lr0": space.genes["lr0"].distribution()},
        user_attrs={IMPORTED_ATTR: True},
    )
    study.add_trial(imported)
    _, hyp = ask_child(study, space)
    assert hyp == space.base_hyp


@pytest.mark.parametrize("name", ["ga", "tpe", "random"])
def test_same_seed_and_index_give_the_same_child(space, name):
    def children(seed):
        study = new_study(build_sampler(name, space, seed=seed))
        hyps = []
        for index in range(3):
            trial, hyp = ask_child(study, space)
            hyps.append(hyp)
            study.tell(trial, float(index))
        return hyps

    assert children(5) == children(5)
    assert children(5)[1:] != children(6)[1:]


def test_gp_children_are_a_function_of_seed_and_index_past_its_random_start(space):
    # Optuna's GPSampler draws children 1 to 9 at random (child 0 is the base), then its model picks them; a fresh
    # sampler per child, seeded by (seed, index), keeps the model's children reproducible under --seed, and a worker
    # that joins late (a fresh sampler) draws the child that a long-running one would
    def children(seed, fresh_at=None):
        study = new_study(build_sampler("gp", space, seed=seed))
        for index in range(13):
            if index == fresh_at:
                study.sampler = build_sampler("gp", space, seed=seed)
            trial, hyp = ask_child(study, space)
            study.tell(trial, -abs(np.log10(hyp["lr0"]) + 2.0) - abs(hyp["momentum"] - 0.9))
        return study.trials

    first = children(5)
    assert [trial.system_attrs.get("gp:relative_params:0") is not None for trial in first] == [False] * 10 + [True] * 3
    assert [trial.params for trial in first] == [trial.params for trial in children(5)]
    assert [trial.params for trial in first] == [trial.params for trial in children(5, fresh_at=12)]
    assert [trial.params for trial in first[10:]] != [trial.params for trial in children(6)[10:]]


def test_ga_records_its_parent(space):
    sampler = build_sampler("ga", space, seed=0)
    study = new_study(sampler)
    trial, _ = ask_child(study, space)
    study.tell(trial, 0.5)
    assert sampler.lineage.pop(0) == {"base": True, "parents": []}
    trial, _ = ask_child(study, space)
    assert sampler.lineage.pop(1) == {"base": False, "parents": [0], "startup": True}  # a mutation of the base
