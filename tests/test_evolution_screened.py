"""Tests for the default sampler (ga: yolov5 moves screened by a GP model), its model and choice-gene moves."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from utils.evolution.child import suggest_hyp
from utils.evolution.mutation import (
    CHOICE_SWITCH_PROBABILITY,
    child_rng,
    from_unit,
    gene_spread,
    mutate,
    mutate_rows,
    probe_move,
    probe_weights,
    select_parent,
    subspace_move,
    to_unit,
    uniform_draw,
)
from utils.evolution.sampler import (
    PROBE_EVERY,
    STARTUP_CHILDREN,
    GeneticSampler,
    ScreenedGeneticSampler,
    build_sampler,
    quiet_optuna,
)
from utils.evolution.search_space import GeneSpec, SearchSpace, load_meta, validate_search_space
from utils.evolution.surrogate import GaussianProcess, ParzenScreen, upper_confidence_bound
from utils.training.hyp import load_hyp


@pytest.fixture(scope="module")
def space():
    return validate_search_space(load_hyp(), load_meta())


def quadratic(hyp, space):
    """A smooth objective where lr0 (log scale) and mixup matter: its best is lr0 = 1e-3, mixup = 0.5."""
    lr0 = np.log10(hyp["lr0"] / 1e-3) / 4
    return 1.0 - lr0**2 - (hyp["mixup"] - 0.5) ** 2


def evolve(sampler, space, children, objective=quadratic):
    quiet_optuna()
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(children):
        trial = study.ask()
        hyp = suggest_hyp(trial, space)
        trial.set_user_attr("hyp", hyp)
        study.tell(trial, objective(hyp, space))
    return study


def test_gp_finds_the_dimension_that_matters_and_predicts():
    rng = np.random.default_rng(0)
    x = rng.random((60, 6))
    y = np.sin(5 * x[:, 2]) + rng.normal(0, 0.01, 60)
    model = GaussianProcess.fit(x, y)
    assert model.lengths[2] < 0.5 * np.delete(model.lengths, 2).min()
    test = rng.random((200, 6))
    mean, sd = model.predict(test)
    assert np.corrcoef(mean, np.sin(5 * test[:, 2]))[0, 1] > 0.95
    assert np.all(sd > 0)
    assert GaussianProcess.fit(x, y).lengths.tolist() == model.lengths.tolist()  # deterministic


def test_gp_fit_on_clustered_noisy_children_finds_the_genes_that_matter():
    """Children bunched around a parent, noise 0.03, 6 of 24 genes matter: from the prior's mode alone the fit
    explained everything as noise (all length scales ~20, noise sd 0.065); the second start finds the genes."""
    rng = np.random.default_rng(0)
    x = np.clip(0.4 + rng.normal(0, 0.1, (40, 24)), 0, 1)
    y = 0.5 - 0.3 * np.abs(x[:, :6] - 0.6).sum(1) + rng.normal(0, 0.03, 40)
    model = GaussianProcess.fit(x, y)
    assert np.median(model.lengths[:6]) < 0.2 * np.median(model.lengths[6:])
    assert 0.01 < np.sqrt(model.noise) < 0.05


def test_fantasies_lower_the_uncertainty_where_others_train():
    rng = np.random.default_rng(1)
    x = rng.random((30, 3))
    model = GaussianProcess.fit(x, x.sum(1))
    point = np.array([[1.5, -0.5, 1.5]])  # away from every observed child
    _, before = model.predict(point)
    _, after = model.with_fantasies(point).predict(point)
    assert after[0] < 0.5 * before[0]


def test_the_upper_confidence_bound_prefers_higher_mean_and_more_uncertainty():
    ucb = upper_confidence_bound(np.array([0.0, 0.1, 0.0]), np.array([0.1, 0.1, 0.3]), beta=2.0)
    assert ucb.tolist() == pytest.approx([0.2, 0.3, 0.6])


def test_the_default_is_the_screened_sampler_and_classic_is_yolov5s_rule(space):
    assert isinstance(build_sampler("ga", space), ScreenedGeneticSampler)
    classic = build_sampler("classic", space)
    assert type(classic) is GeneticSampler and classic.floor_fraction == 0.0


def test_screened_children_are_reproducible_recorded_and_in_bounds(space):
    first = build_sampler("ga", space, seed=3)
    study = evolve(first, space, STARTUP_CHILDREN + 5)
    again = evolve(build_sampler("ga", space, seed=3), space, STARTUP_CHILDREN + 5)
    hyps = [trial.user_attrs["hyp"] for trial in study.trials]
    assert hyps == [trial.user_attrs["hyp"] for trial in again.trials]
    numbers = [number for number in range(STARTUP_CHILDREN + 1, STARTUP_CHILDREN + 5) if number % PROBE_EVERY]
    screened = [first.lineage[number] for number in numbers]
    assert all(entry["screened"]["pool"] > 100 for entry in screened)
    assert any(entry["parents"] for entry in screened)  # a uniform proposal has no parents
    assert "screened" not in first.lineage[STARTUP_CHILDREN - 1]  # classic moves before the model has data
    for hyp in hyps:
        assert all(spec.low <= hyp[key] <= spec.high for key, spec in space.genes.items())


def test_a_fresh_sampler_proposes_the_same_child(space):
    """Another worker (a fresh process) that sees the same children proposes the same child: the model's fit and the
    trust region are derived from the study, not from what one sampler instance remembers."""
    sampler = build_sampler("ga", space, seed=5)
    study = evolve(sampler, space, STARTUP_CHILDREN + 30)
    for _ in range(2):  # child 40 is a probe (40 = 5 x PROBE_EVERY), child 41 is screened
        trial = study.ask()
        suggest_hyp(trial, space)
        frozen = study.trials[-1]
        fresh = build_sampler("ga", space, seed=5).sample_relative(study, frozen, space.distributions())
        assert fresh == frozen.params
    assert "probe" in sampler.lineage[40] and "screened" in sampler.lineage[41]


def test_the_model_is_never_fitted_on_the_best_children_alone(space, monkeypatch):
    """Above FIT_MAX children the fit takes children spread by number, never the best by their noisy fitness: the
    best 120 of 150 noisy children were mostly the lucky ones, the fit saw little but noise, the model went flat
    and the children the search proposed got worse (issue #14's plateau)."""
    from types import SimpleNamespace

    import utils.evolution.sampler as sampler_module

    monkeypatch.setattr(sampler_module, "FIT_MAX", 20)
    fitted = []
    real_fit = GaussianProcess.fit

    def spy(x, y):
        fitted.append(np.asarray(y).copy())
        return real_fit(x, y)

    monkeypatch.setattr(GaussianProcess, "fit", spy)
    rng = np.random.default_rng(0)
    x = rng.random((40, 3))
    y = x[:, 0] + rng.normal(0, 0.05, 40)
    completed = [SimpleNamespace(number=number) for number in range(40)]
    sampler = ScreenedGeneticSampler(space, seed=0)
    sampler.model(completed, x, y)
    assert len(fitted) == 1 and len(fitted[0]) == 20
    assert fitted[0].min() < np.sort(y)[len(y) - 20]  # worse children than the best 20 are in the fit


def test_screening_beats_plain_mutation_on_a_smooth_objective(space):
    """Same budget, same seeds: the model-screened children reach a better best child than classic moves."""

    def best(name, seed):
        return evolve(build_sampler(name, space, seed=seed), space, 30).best_value

    screened = [best("ga", seed) for seed in range(3)]
    plain = [best("classic", seed) for seed in range(3)]
    assert np.median(screened) > np.median(plain)


def test_a_child_in_training_is_not_proposed_again(space):
    """Two children asked before either finishes (two workers) differ, and the model sees the first one."""
    sampler = build_sampler("ga", space, seed=0)
    study = evolve(sampler, space, STARTUP_CHILDREN + 2)
    first = study.ask()
    hyp_first = suggest_hyp(first, space)
    second = study.ask()
    hyp_second = suggest_hyp(second, space)
    assert hyp_first != hyp_second


CHOICE_SPACE = SearchSpace(
    base_hyp={"lr0": 0.01, "optimizer": "SGD"},
    genes={"lr0": GeneSpec(1.0, 1e-5, 0.1, "log"), "optimizer": GeneSpec(1.0, 0.0, 2.0, "linear", "choice",
                                                                      ("SGD", "AdamW", "Adam"))},
)  # fmt: skip


def test_choice_genes_switch_with_the_documented_probability():
    specs = list(CHOICE_SPACE.genes.values())
    children = np.array([mutate(np.array([0.01, 0.0]), specs, child_rng(0, index)) for index in range(4000)])
    switched = children[:, 1] != 0
    assert set(np.unique(children[:, 1])) == {0.0, 1.0, 2.0}
    assert switched.mean() == pytest.approx(CHOICE_SWITCH_PROBABILITY, abs=0.02)


def test_mutate_rows_follows_mutates_rule(space):
    """The pool's mutation of many parents at once: within bounds, each gene moves with yolov5's probability and by
    the same spread as ``mutate``; a choice gene switches with the documented probability."""
    specs = list(space.genes.values())
    base = np.array([space.base_hyp[key] for key in space.genes], dtype=float)
    rows = mutate_rows(np.tile(base, (3000, 1)), specs, np.random.default_rng(0))
    single = np.array([mutate(base, specs, child_rng(0, index)) for index in range(3000)])
    low, high = np.array([spec.low for spec in specs]), np.array([spec.high for spec in specs])
    assert np.all((rows >= low) & (rows <= high))
    assert np.allclose((rows != base).mean(0), (single != base).mean(0), atol=0.04)
    assert np.allclose(rows.std(0), single.std(0), rtol=0.15, atol=1e-9)
    choice_specs = list(CHOICE_SPACE.genes.values())
    choices = mutate_rows(np.tile([0.01, 0.0], (4000, 1)), choice_specs, np.random.default_rng(1))[:, 1]
    assert set(np.unique(choices)) == {0.0, 1.0, 2.0}
    assert (choices != 0).mean() == pytest.approx(CHOICE_SWITCH_PROBABILITY, abs=0.02)


def test_a_lone_choice_gene_always_switches():
    spec = CHOICE_SPACE.genes["optimizer"]
    children = [mutate(np.array([1.0]), [spec], child_rng(0, index))[0] for index in range(50)]
    assert all(child != 1.0 for child in children)


@pytest.mark.parametrize("name", ["ga", "classic", "tpe", "random", "cmaes"])
def test_every_sampler_draws_choice_genes(name):
    def objective(hyp, _space):
        return (hyp["optimizer"] == "AdamW") + 0.01 * np.log10(hyp["lr0"])

    study = evolve(build_sampler(name, CHOICE_SPACE, seed=0), CHOICE_SPACE, 30, objective)
    choices = [trial.params["optimizer"] for trial in study.trials]
    assert choices[0] == "SGD"  # child 0 is the base
    assert set(choices) >= {"SGD", "AdamW"}


def test_parzen_draws_stay_on_the_unit_cube_near_the_best_children():
    rng = np.random.default_rng(0)
    x = rng.random((60, 4))
    y = -np.abs(x[:, 0] - 0.8)  # the best children have x0 near 0.8
    draws = ParzenScreen.fit(x, y).sample(500, np.random.default_rng(1))
    assert draws.shape == (500, 4) and np.all((draws >= 0) & (draws <= 1))
    assert abs(np.median(draws[:, 0]) - 0.8) < 0.1
    assert abs(np.median(draws[:, 1]) - 0.8) > abs(np.median(draws[:, 0]) - 0.8)


def test_subspace_moves_change_a_few_relevant_genes(space):
    specs = list(space.genes.values())
    parent = np.array([space.base_hyp[key] for key in space.genes])
    relevance = np.zeros(len(specs))
    relevance[[0, 3]] = 0.5  # only genes 0 and 3 matter
    for index in range(30):
        child = subspace_move(parent, specs, child_rng(0, index), relevance)
        changed = set(np.flatnonzero(child != parent))
        assert changed <= {0, 3}
        assert all(spec.low <= value <= spec.high for value, spec in zip(child, specs))


@pytest.mark.parametrize("key", ["lr0", "momentum", "mixup"])
def test_unit_coordinates_round_trip(space, key):
    spec = space.genes[key]
    for position in (0.0, 0.37, 1.0):
        assert to_unit(from_unit(position, spec), spec) == pytest.approx(position, abs=1e-4)


def test_uniform_draws_respect_bounds_and_search_scale(space):
    specs = list(space.genes.values())
    draws = np.array([uniform_draw(specs, child_rng(0, index)) for index in range(2000)])
    assert all(np.all((draws[:, i] >= spec.low) & (draws[:, i] <= spec.high)) for i, spec in enumerate(specs))
    lr0 = draws[:, list(space.genes).index("lr0")]
    assert 0.4 < np.mean(lr0 < 1e-3) < 0.6  # log scale: half of [1e-5, 0.1] in decades lies below 1e-3
    choices = np.array([uniform_draw([CHOICE_SPACE.genes["optimizer"]], child_rng(1, i))[0] for i in range(3000)])
    assert np.allclose(np.bincount(choices.astype(int)) / 3000, 1 / 3, atol=0.04)


def test_choice_genes_are_never_averaged():
    """--parent-selection weighted: a choice gene takes the fittest parent's choice, not the mean of indices."""
    population = np.array([[0.01, 0.0], [0.02, 2.0]])
    parent, _ = select_parent(population, np.array([0.2, 0.1]), child_rng(0, 0), "weighted", np.array([False, True]))
    assert parent[1] == 0.0 and 0.01 < parent[0] < 0.02


def test_subspace_moves_switch_choice_genes():
    specs = list(CHOICE_SPACE.genes.values())
    children = [subspace_move(np.array([0.01, 1.0]), specs, child_rng(2, i), np.array([0.0, 1.0])) for i in range(60)]
    assert {child[1] for child in children} == {0.0, 2.0}


def test_every_eighth_child_is_a_probe_of_the_best_child(space):
    """Once the model screens, each child whose number is a multiple of PROBE_EVERY moves one gene of the child the
    model rates best to a uniform value, and records which."""
    sampler = build_sampler("ga", space, seed=2)
    study = evolve(sampler, space, STARTUP_CHILDREN + 15)
    hyps = {trial.number: trial.user_attrs["hyp"] for trial in study.trials}
    probes = [number for number in hyps if number >= STARTUP_CHILDREN and number % PROBE_EVERY == 0]
    assert PROBE_EVERY == 8 and probes == [16, 24]
    for number in range(STARTUP_CHILDREN, STARTUP_CHILDREN + 15):
        entry = sampler.lineage[number]
        assert ("probe" in entry) == (number in probes)
        if number in probes:
            parent = hyps[entry["parents"][0]]
            moved = [key for key in space.genes if hyps[number][key] != parent[key]]
            assert moved == [entry["probe"]]  # a probe equal to its parent is a duplicate: screened instead


def test_a_probe_moves_the_genes_the_best_children_never_vary_most_often(space):
    specs = list(space.genes.values())
    rng = np.random.default_rng(0)
    elite = np.array([[from_unit(rng.random(), spec) for spec in specs] for _ in range(20)])
    stuck = list(space.genes).index("mixup")
    elite[:, stuck] = 0.0
    spread = gene_spread(elite, specs)
    assert spread[stuck] == 0.0 and np.all(np.delete(spread, stuck) > 0.1)
    weights = probe_weights(spread, specs)
    chosen = [probe_move(elite[0], specs, np.random.default_rng(seed), weights)[1] for seed in range(400)]
    assert chosen.count(stuck) / len(chosen) > 3 / len(specs)  # uniform over genes would be 1 / len(specs)


def test_a_probe_of_a_choice_gene_switches_it():
    spec = GeneSpec(gain=1.0, low=0.0, high=2.0, type="choice", choices=("SGD", "Adam", "AdamW"))
    rows = np.array([[1.0], [1.0], [2.0], [1.0]])
    assert gene_spread(rows, [spec]).tolist() == [0.25]
    for seed in range(20):
        child, index = probe_move(rows[0], [spec], np.random.default_rng(seed), np.ones(1))
        assert index == 0 and child[0] in (0.0, 2.0)


def test_a_gene_that_cannot_move_is_never_probed():
    fixed, free = GeneSpec(1.0, 0.5, 0.5), GeneSpec(1.0, 0.0, 1.0)
    weights = probe_weights(np.zeros(2), [fixed, free])  # both never vary, but only one can
    assert weights[0] == 0.0 and weights[1] > 0


def test_a_probe_the_study_already_has_is_screened_instead():
    """With one two-choice gene, every probe (the best child with the other choice) is a child the study already has:
    no probe is trained twice, the child is screened instead."""
    optimizer = GeneSpec(1.0, 0.0, 1.0, "linear", "choice", ("SGD", "AdamW"))
    space = SearchSpace(base_hyp={"optimizer": "SGD"}, genes={"optimizer": optimizer})
    sampler = build_sampler("ga", space, seed=0)

    def objective(hyp, space):
        return 1.0 if hyp["optimizer"] == "AdamW" else 0.0

    evolve(sampler, space, STARTUP_CHILDREN + 8, objective)
    assert {entry.get("probe") for entry in sampler.lineage.values()} == {None}
    assert all("screened" in sampler.lineage[number] for number in range(STARTUP_CHILDREN, STARTUP_CHILDREN + 8))
