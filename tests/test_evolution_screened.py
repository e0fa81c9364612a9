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
from utils.evolution.pruning import build_pruner
from utils.evolution.sampler import (
    PROBE_EVERY,
    STARTUP_CHILDREN,
    GeneticSampler,
    Observations,
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
    assert "screened" not in first.lineage[STARTUP_CHILDREN - 1]  # wide mutations of the base before the model
    for hyp in hyps:
        assert all(spec.low <= hyp[key] <= spec.high for key, spec in space.genes.items())


def test_the_first_children_are_wide_mutations_of_the_base(space):
    """Before the model, every child is yolov5's mutation of the base hyp (child 0) at 3x yolov5's step: the same
    rule as ``mutate(base, sigma=0.6)`` with the child's own random stream, never a mutation of the best child so
    far, so the first children spread around the base rather than follow the first lucky one."""
    sampler = build_sampler("ga", space, seed=4)
    study = evolve(sampler, space, STARTUP_CHILDREN)
    base = sampler.base_vector()
    specs = list(space.genes.values())
    for number in range(1, STARTUP_CHILDREN):
        assert sampler.lineage[number] == {"base": False, "parents": [0], "startup": True}
        expected = mutate(base, specs, child_rng(sampler.seed, number), sampler.floor_fraction, sigma=0.6)
        assert list(study.trials[number].params.values()) == pytest.approx(
            [float(value) for value in expected]
        )  # fmt: skip
    classic = evolve(build_sampler("classic", space, seed=4), space, STARTUP_CHILDREN)
    spread = {name: np.std([[to_unit(trial.params[key], spec) for key, spec in space.genes.items()]
                            for trial in made.trials[1:]], axis=0).mean()
              for name, made in (("ga", study), ("classic", classic))}  # fmt: skip
    assert spread["ga"] > 1.5 * spread["classic"]


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
    import utils.evolution.sampler as sampler_module

    monkeypatch.setattr(sampler_module, "FIT_MAX", 20)
    fitted = []
    real_fit = GaussianProcess.fit

    def spy(x, y, noise_floor=0.0):
        fitted.append(np.asarray(y).copy())
        return real_fit(x, y, noise_floor)

    monkeypatch.setattr(GaussianProcess, "fit", spy)
    rng = np.random.default_rng(0)
    x = rng.random((40, 3))
    y = x[:, 0] + rng.normal(0, 0.05, 40)
    sampler = ScreenedGeneticSampler(space, seed=0)
    sampler.model(Observations([], x, y, [(number, None) for number in range(40)], None))
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


@pytest.mark.parametrize("name", ["ga", "classic", "tpe", "random", "cmaes", "gp"])
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


def add_child(study, space, params, curve, last_step, complete):
    """A finished child: ``curve(step)`` reported at steps 1..last_step, completed at curve(last_step) or pruned."""
    state = optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.PRUNED
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=space.distributions(), state=state,
        value=curve(last_step) if complete else None,
        intermediate_values={step: curve(step) for step in range(1, last_step + 1)},
    ))  # fmt: skip


def lr_params(space, lr0):
    return {**space.base_params(), "lr0": lr0}


def test_pruned_children_are_read_at_each_level_on_the_final_scale(space):
    """Fitness rising in proportion to the step: every reading, at any level, lands on the child's final fitness once
    the lower levels are scaled by the chained median ratios, and the model predicts at the final fitness."""
    study = optuna.create_study(direction="maximize")
    qualities = np.linspace(0.2, 0.6, 12)
    for index, quality in enumerate(qualities):
        last, complete = (9, True) if index % 3 == 0 else (1, False) if index % 3 == 1 else (3, False)
        add_child(study, space, lr_params(space, 1e-3 * (1 + index)), lambda s, q=quality: q * s / 9, last, complete)
    data = ScreenedGeneticSampler(space).observations(study)
    assert [child.number for child in data.children] == list(range(12))
    by_child = {}
    for (number, step), value, fidelity in zip(data.rows, data.y, data.x[:, -1]):
        by_child.setdefault(number, []).append(step)
        assert value == pytest.approx(qualities[number])
        assert fidelity == pytest.approx(np.log1p(step) / np.log1p(10))  # the final fitness is read as step 10
    assert by_child[0] == [1, 3, 10] and by_child[1] == [1] and by_child[2] == [1, 3]
    assert data.fidelity == 1.0 and data.x.shape[1] == data.inputs(data.x[:1, :-1]).shape[1]


def test_before_any_child_completes_the_model_reads_the_highest_level_three_children_reached(space):
    study = optuna.create_study(direction="maximize")
    for index in range(8):
        last = 3 if index < 3 else 1
        add_child(study, space, lr_params(space, 1e-3 * (1 + index)), lambda s, q=0.1 * (index + 1): q * s, last, False)
    data = ScreenedGeneticSampler(space).observations(study)
    assert {step for _, step in data.rows} == {1, 3}
    assert data.fidelity == pytest.approx(np.log1p(3) / np.log1p(4))
    assert np.allclose(data.y, [0.1 * (number + 1) * 3 for number, _ in data.rows])  # level 1 on level 3's scale


def test_the_levels_are_the_lowest_pruning_step_and_the_commonest_ones(space):
    study = optuna.create_study(direction="maximize")
    steps = [2, 4, 4, 4, 5, 6, 6, 7, 7, 7, 7]
    for index, last in enumerate(steps):
        add_child(study, space, lr_params(space, 1e-3 * (1 + index)), lambda s: 0.1 * s, last, False)
    data = ScreenedGeneticSampler(space).observations(study)
    assert sorted({step for _, step in data.rows}) == [2, 4, 7]


def test_without_pruned_children_the_model_reads_final_fitness_only(space):
    study = evolve(build_sampler("ga", space, seed=1), space, STARTUP_CHILDREN + 2)
    data = ScreenedGeneticSampler(space).observations(study)
    assert data.fidelity is None and data.rows == [(trial.number, None) for trial in study.trials]
    assert data.y.tolist() == [trial.value for trial in study.trials]
    assert data.inputs(data.x) is data.x


def test_the_multi_fidelity_model_sees_through_fast_starters(space):
    """lr0 sets the final fitness; warmup only how fast a child starts. Children pruned early were read while the
    fast starters led, yet the model's prediction at the final fitness follows lr0, not warmup."""
    study = optuna.create_study(direction="maximize")
    rng = np.random.default_rng(0)
    spec_lr, spec_warm = space.genes["lr0"], space.genes["warmup_epochs"]
    truth = []
    for index in range(40):
        u_lr, u_warm = rng.random(2)
        params = {**space.base_params(), "lr0": float(from_unit(u_lr, spec_lr)),
                  "warmup_epochs": float(from_unit(u_warm, spec_warm))}  # fmt: skip
        quality, tau = 0.2 + 0.4 * u_lr, 0.15 * np.exp(1.5 * u_warm)

        def curve(step, quality=quality, tau=tau):
            return quality * (1 - np.exp(-step / 9 / tau)) / (1 - np.exp(-1 / tau))

        last, complete = (9, True) if index % 4 == 0 else (1 if index % 4 == 1 else 3, False)
        add_child(study, space, params, curve, last, complete)
        truth.append((u_lr, u_warm, quality))
    sampler = ScreenedGeneticSampler(space)
    data = sampler.observations(study)
    model = sampler.model(data)
    grid = np.array([[a, b] for a in np.linspace(0.05, 0.95, 7) for b in np.linspace(0.05, 0.95, 7)])
    points = np.repeat(sampler.units([sampler.vector(study.trials[0])]), len(grid), axis=0)
    names = list(space.genes)
    points[:, names.index("lr0")], points[:, names.index("warmup_epochs")] = grid[:, 0], grid[:, 1]
    mean, _ = model.predict(data.inputs(points))
    assert np.corrcoef(mean, grid[:, 0])[0, 1] > 0.9  # the final quality
    assert abs(np.corrcoef(mean, grid[:, 1])[0, 1]) < 0.3  # not the start


def test_a_pruned_child_with_no_usable_reading_is_read_at_the_lowest_fitness(space):
    """Real training often validates to 0 mAP after one epoch: those readings cannot be put on another level's scale
    by a ratio, yet the children pruned there lagged their peers and must not vanish from the model."""
    study = optuna.create_study(direction="maximize")
    for index in range(10):
        last = 3 if index < 4 else 1
        add_child(study, space, lr_params(space, 1e-3 * (1 + index)), lambda s, q=0.1 * (index + 1): q * (s - 1), last,
                  False)  # fmt: skip
    data = ScreenedGeneticSampler(space).observations(study)
    assert [child.number for child in data.children] == [0, 1, 2, 3]  # read at 3; parents come from these only
    assert sorted(number for number, _ in data.rows) == list(range(10))
    assert all(step == 3 for _, step in data.rows) and data.y[4:].tolist() == [data.y[:4].min()] * 6


def test_with_halving_a_fresh_sampler_proposes_the_same_child_and_pruned_children_are_parents(space):
    """The multi-fidelity model is a function of the study too: at every child a fresh sampler (a resume, another
    worker) draws what the running one drew, though the scaled readings move with every child (curves of different
    shapes). A child halving stopped can be a parent when its readings say its region is good."""
    quiet_optuna()
    sampler = build_sampler("ga", space, seed=2)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=build_pruner("halving", 9))
    for _ in range(STARTUP_CHILDREN + 32):
        trial = study.ask()
        hyp = suggest_hyp(trial, space)
        frozen = study.trials[-1]
        fresh = build_sampler("ga", space, seed=2).sample_relative(study, frozen, space.distributions())
        assert fresh == frozen.params, f"child {trial.number}"
        trial.set_user_attr("hyp", hyp)
        draws = np.random.default_rng(trial.number)
        noise, power = draws.normal(0, 0.2), draws.uniform(0.5, 2)  # the order at the rungs is mostly noise
        state, value = optuna.trial.TrialState.COMPLETE, None
        for step in range(1, 10):
            value = (quadratic(hyp, space) + noise) * (step / 9) ** power
            trial.report(value, step)
            if trial.should_prune():
                state, value = optuna.trial.TrialState.PRUNED, None
                break
        study.tell(trial, value, state=state)
    completed = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert len(completed) < STARTUP_CHILDREN  # the model screens from the readings, not from completed children
    assert "probe" in sampler.lineage[40] and "screened" in sampler.lineage[41]
    pruned = {trial.number for trial in study.trials if trial.state == optuna.trial.TrialState.PRUNED}
    parents = {number for entry in sampler.lineage.values() if "screened" in entry for number in entry["parents"]}
    assert parents & pruned


def test_imported_rows_stay_in_the_multi_fidelity_model(space):
    """Imported rows are completed children with no per-epoch fitness: they keep a row at their final fitness (and
    can be parents) while too few children of this run have completed to put it on the chain's scale."""
    study = optuna.create_study(direction="maximize")
    for index in range(3):
        add_child(study, space, lr_params(space, 2e-3 * (1 + index)), lambda s: 0.9, 0, True)
    for index in range(12):
        quality, last = 0.01 * (index + 1), 3 - index % 2
        add_child(study, space, lr_params(space, 1e-3 * (1 + index)), lambda s, q=quality: q * s, last, False)
    data = ScreenedGeneticSampler(space).observations(study)
    numbers = [child.number for child in data.children]
    assert numbers == list(range(15))  # the imported rows and every pruned child
    final_rows = [value for (number, step), value in zip(data.rows, data.y) if number < 3]
    assert final_rows == [0.9, 0.9, 0.9]
    assert {step for number, step in data.rows if number >= 3} == {2, 3}
    assert data.fidelity == pytest.approx(np.log1p(3) / np.log1p(4))


def test_a_level_of_zero_readings_is_never_the_anchor(space):
    """Real training often validates 0 mAP after the first epochs: a level where no child has a positive fitness
    cannot anchor the model (it would be flat), so the old rule holds: pruned children at the lowest fitness."""
    study = optuna.create_study(direction="maximize")
    for index in range(12):
        add_child(study, space, lr_params(space, 1e-3 * (1 + index)), lambda s: 0.0, 1, index < 2)
    data = ScreenedGeneticSampler(space).observations(study)
    assert data.fidelity is None and [child.number for child in data.children] == [0, 1]
    assert len(data.rows) == 12 and data.y.tolist() == [0.0] * 12


def test_a_fit_on_first_children_without_readings_still_fits_a_multi_fidelity_model(space):
    """The fit uses the first children alone; when they have no positive reading anywhere (0 mAP early in real
    training) and later children have, the fit still has the fidelity input, so the model can be conditioned."""
    study = optuna.create_study(direction="maximize")
    for index in range(12):
        quality = 0.0 if index < 11 else 0.5
        add_child(study, space, lr_params(space, 1e-3 * (1 + index)), lambda s, q=quality: q * s, 1 + index % 2, False)
    for index in range(12, 14):  # 14 children: the fit takes the first 12
        quality = 0.01 * index
        add_child(study, space, lr_params(space, 1e-3 * (1 + index)), lambda s, q=quality: q * s, 1 + index % 2, False)
    sampler = ScreenedGeneticSampler(space)
    data = sampler.observations(study)
    assert data.fidelity is not None and sampler.observations(study, set(range(12))).fidelity is None
    mean, _ = sampler.model(data, study).predict(data.x)
    assert np.all(np.isfinite(mean))


def test_a_noise_floor_is_the_least_noise_the_fit_finds():
    """Few children in many dimensions can be fitted as all signal; a measured seed noise keeps the fit honest."""
    rng = np.random.default_rng(0)
    x = rng.random((12, 6))
    y = 0.1 + 0.02 * rng.standard_normal(12)  # pure noise around a flat fitness
    free = GaussianProcess.fit(x, y)
    floor = 0.02**2
    floored = GaussianProcess.fit(x, y, noise_floor=floor)
    assert floored.noise >= floor * (1 - 1e-9)
    assert free.noise < floor, "without the floor this fit explains the noise as signal (else the test shows nothing)"
    _, sd = floored.predict(x)
    assert np.all(np.isfinite(sd))
