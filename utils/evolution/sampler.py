"""Samplers: the yolov5 genetic mutation as an Optuna sampler, the default ``ga``, and ``build_sampler`` (Optuna's
own samplers, seeded per child by ``seeded.PerChildSeededSampler``).

Every child's randomness comes from ``(evolution seed, child index)`` only, never the clock, so workers
sharing a study never draw identical children and a child can be replayed from its recorded seed.
The base hyp is the first child that is not an imported row: that rule needs no lock, so concurrent
workers never duplicate the baseline (yolov5 enqueues it per process).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, CmaEsSampler, GPSampler, RandomSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from utils.errors import UserError
from utils.evolution.fidelity import Observations, observations
from utils.evolution.mutation import (
    PARENT_SELECTIONS,
    ZERO_FLOOR_FRACTION,
    child_rng,
    encode,
    from_unit_array,
    gene_spread,
    genetic_pool,
    mutate,
    probe_move,
    probe_weights,
    select_parent,
    to_unit,
)
from utils.evolution.search_space import SearchSpace
from utils.evolution.seeded import PerChildSeededSampler, cast_params, is_base_child, own_trials_before
from utils.evolution.surrogate import GaussianProcess, ParzenScreen, upper_confidence_bound

SAMPLERS = ("ga", "classic", "tpe", "cmaes", "gp", "random")
STARTUP_CHILDREN = 10  # completed children before the model screens proposals (wide mutations of the base until then)
STARTUP_SIGMA = 0.6  # the step of those first mutations: 3x yolov5's MUTATION_SIGMA
PARZEN_PROPOSALS = 250  # and TPE-style draws from the density of the best children
FIT_MAX = 300  # the model's hyperparameters are fitted on at most this many children (spread by child number)
UCB_BETA = 2.0  # a screened child is the proposal with the highest mean + 2 sd under the model
PROBE_EVERY = 8  # every 8th child (by number) is a probe: one gene of the best child moved to a uniform value
PROBE_ELITE = 20  # a probe's gene is drawn by how little it varies among this many best children
REFIT_GROWTH = 1.2  # refit the model's hyperparameters each time the completed children grow by 20%
TOP_PARENTS = 5  # yolov5: parents come from the 5 fittest children


class GeneticSampler(BaseSampler):
    """The classic yolov5 evolution: mutate a parent drawn from the 5 fittest completed children.

    The whole child is computed in ``sample_relative`` from the completed trials. ``lineage`` maps a trial
    number to its parent information so that the runner can record it with the child.
    """

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        parent_selection: str = "single",
        floor_fraction: float = ZERO_FLOOR_FRACTION,
    ) -> None:
        if parent_selection not in PARENT_SELECTIONS:
            raise ValueError(f"parent_selection must be one of {PARENT_SELECTIONS}, got {parent_selection!r}")
        self.space = space
        self.floor_fraction = floor_fraction
        self.seed = seed
        self.parent_selection = parent_selection
        self.lineage: dict[int, dict[str, Any]] = {}
        self._fallback = RandomSampler(seed=seed)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.space.distributions()

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        genes = self.space.genes
        if is_base_child(study, trial.number):
            self.lineage[trial.number] = {"base": True, "parents": []}
            return cast_params(self.space.base_params(), genes)
        rng = child_rng(self.seed, trial.number)
        parent, parent_numbers = self.parent_vector(study, rng)
        child = mutate(parent, list(genes.values()), rng, self.floor_fraction)
        self.lineage[trial.number] = {"base": False, "parents": parent_numbers}
        return cast_params(dict(zip(genes, child)), genes)

    def parent_vector(self, study: Study, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
        """The parent for the next child; the base hyp while no child has completed yet."""
        completed = completed_trials(study)
        if not completed:
            return self.base_vector(), []
        fittest = sorted(completed, key=lambda trial: trial.value, reverse=True)[:TOP_PARENTS]
        population = np.array([[self.gene_value(trial, key) for key in self.space.genes] for trial in fittest])
        fitness = np.array([trial.value for trial in fittest], dtype=float)
        choice = np.array([spec.type == "choice" for spec in self.space.genes.values()])
        parent, chosen = select_parent(population, fitness, rng, self.parent_selection, choice)
        numbers = [fittest[chosen].number] if chosen is not None else [trial.number for trial in fittest]
        return parent, numbers

    def base_vector(self) -> np.ndarray:
        return np.array([encode(value, self.space.genes[key]) for key, value in self.space.base_params().items()])

    def gene_value(self, trial: FrozenTrial, key: str) -> float:
        """A key's value in a completed child, as a number: its param, else its recorded hyp, else the base value."""
        if key in trial.params:
            return encode(trial.params[key], self.space.genes[key])
        return encode(trial.user_attrs.get("hyp", {}).get(key, self.space.base_hyp[key]), self.space.genes[key])

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        # Only reached for parameters outside the search space, which the runner never suggests.
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)


class ScreenedGeneticSampler(GeneticSampler):
    """The default ``ga``: yolov5's mutation proposes, a model of the finished children picks what to train.

    Until the model knows ``STARTUP_CHILDREN`` children (completed ones, imported rows included; with pruning, see
    ``observations``, children read at an epoch), children are yolov5's mutation of the base hyp at 3x its step
    (``startup_child``). After that, every ``PROBE_EVERY``-th child (by number) is a
    probe (``probe``), and every other child is the most promising of about 750 proposals by the upper confidence
    bound (mean + ``UCB_BETA`` sd) under a Gaussian-process model (``utils.evolution.surrogate``). The proposals
    (``mutation.genetic_pool``: ``POOL_SHARES`` of ``POOL_SIZE``, drawn in arrays) are genetic moves from the 5
    children the model rates best (its posterior mean, which discounts a child that was only lucky): yolov5
    mutations at three step sizes, crossovers, moves of the 1-3 genes the model finds relevant, and uniform draws;
    plus ``PARZEN_PROPOSALS`` TPE-style draws from the density of the best children. The model's data: every
    completed child; with pruned children, every child at a few epochs as well (``observations``: a multi-fidelity
    model, under which a pruned child can be a parent); and children other workers are training at their predicted
    fitness, so concurrent workers do not propose the same point.

    Everything is a function of (seed, child number, those children): replays and resumes draw the same child.
    The model's hyperparameters are refitted from the same two starts (``surrogate.FIT_STARTS``), on at most
    ``FIT_MAX`` children spread evenly by child number (never chosen by their noisy fitness), each time the
    completed children pass a point of a x1.2 schedule: about 2 s per refit at 300 children.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, parent_selection: str = "single") -> None:
        super().__init__(space, seed=seed, parent_selection=parent_selection)
        self._fits: dict[tuple[bool | int | float | bytes, ...], GaussianProcess] = {}
        self.measured_noise = 0.0  # the study's seed noise (a variance), once the base's repeats measured it

    def rank_children(self, study: Study) -> list[int] | None:
        """The completed children, best first by the model's mean (which pools each child's neighbours, so one
        lucky run counts for less), or None before the model starts (``STARTUP_CHILDREN``)."""
        data = self.observations(study)
        if len(data.children) < STARTUP_CHILDREN:
            return None
        mean, _ = self.model(data, study).predict(data.inputs(self.trial_units(data.children)))
        order = sorted(range(len(data.children)), key=lambda index: (-mean[index], data.children[index].number))
        return [data.children[index].number for index in order if data.children[index].state == TrialState.COMPLETE]

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        data = self.observations(study)
        if not search_space or is_base_child(study, trial.number):
            return super().sample_relative(study, trial, search_space)
        if len(data.children) < STARTUP_CHILDREN:
            return self.startup_child(study, trial.number)
        genes = self.space.genes
        specs = list(genes.values())
        rng = child_rng(self.seed, trial.number)
        model = self.model(data, study)
        children_x = self.trial_units(data.children)
        fitted_mean, _ = model.predict(data.inputs(children_x))
        ranking = np.argsort(-fitted_mean, kind="stable")
        if trial.number % PROBE_EVERY == 0:
            probe = self.probe(study, trial.number, data.children, ranking[:PROBE_ELITE], rng)
            if probe is not None:
                return probe
        order = ranking[:TOP_PARENTS]
        parents = np.array([self.vector(data.children[index]) for index in order])
        pool, origins = genetic_pool(
            parents, fitted_mean[order], specs, rng, self.relevance(model), self.floor_fraction
        )
        # TPE-style draws from the best children: by fitness, or with several readings per child by the model's mean
        good = (data.x, data.y) if data.fidelity is None else (children_x, fitted_mean)
        pool.extend(self.from_unit_rows(ParzenScreen.fit(*good).sample(PARZEN_PROPOSALS, rng)))
        origins.extend([[]] * PARZEN_PROPOSALS)
        running = [
            other for other in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if other.number != trial.number and set(genes) <= set(other.params)
        ]  # fmt: skip
        model = model.with_fantasies(data.inputs(self.trial_units(running)))
        mean, sd = model.predict(data.inputs(self.units(pool)))
        best = int(np.argmax(upper_confidence_bound(mean, sd, UCB_BETA)))
        self.lineage[trial.number] = {
            "base": False,
            "parents": [data.children[order[index]].number for index in origins[best]],
            "screened": {"pool": len(pool), "predicted": round(float(mean[best]), 5), "sd": round(float(sd[best]), 5)},
        }
        return cast_params(dict(zip(genes, pool[best])), genes)

    def startup_child(self, study: Study, number: int) -> dict[str, Any]:
        """A child before the model: yolov5's mutation of the base hyp at ``STARTUP_SIGMA``, 3x yolov5's step (the
        pool's "large" move). yolov5's rule mutates the best children so far, which keeps the first children near
        the base; wider first moves give the model the spread it learns from (benchmarked in the README)."""
        genes = self.space.genes
        rng = child_rng(self.seed, number)
        child = mutate(self.base_vector(), list(genes.values()), rng, self.floor_fraction, sigma=STARTUP_SIGMA)
        base = [trial.number for trial in own_trials_before(study, number)[:1]]
        self.lineage[number] = {"base": False, "parents": base, "startup": True}
        return cast_params(dict(zip(genes, child)), genes)

    def observations(self, study: Study, only: set[int] | None = None) -> Observations:
        """What the model learns from (``fidelity.observations``): the finished children, or with ``only`` those
        of them (the model's fit)."""
        genes = self.space.genes
        completed = completed_trials(study)
        pruned = [child for child in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
                  if set(genes) <= set(child.params)]  # fmt: skip
        if only is not None:  # the model's fit: these children alone
            completed = [child for child in completed if child.number in only]
            pruned = [child for child in pruned if child.number in only]
        return observations(completed, pruned, self.trial_units)

    def probe(
        self, study: Study, number: int, completed: list[FrozenTrial], elite: np.ndarray, rng: np.random.Generator
    ) -> dict[str, Any] | None:
        """A probe: the child the model rates best with one gene moved to a uniform value, the gene drawn by how
        little the ``elite`` (the best children by the model, best first) vary it. A model fitted to children that
        changed many genes at once can be confidently wrong about a gene no good child has moved (traced on the noisy
        benchmark: mixup was 0 in the last 100 of 300 children, because the few children with mixup > 0 were bad for
        other reasons); a probe is the controlled experiment that corrects it.

        None (the child is screened instead) when no gene can move, or when the probe is a child that the study
        already has (finished, pruned, failed or still training): a choice gene with two choices probes the same
        child every time until the best child changes."""
        genes = self.space.genes
        specs = list(genes.values())
        rows = np.array([self.vector(completed[index]) for index in elite])
        weights = probe_weights(gene_spread(rows, specs), specs)
        if not weights.sum() > 0:
            return None
        child, gene = probe_move(rows[0], specs, rng, weights)
        params = cast_params(dict(zip(genes, child)), genes)
        if any(other.params == params for other in study.get_trials(deepcopy=False) if other.number != number):
            return None
        self.lineage[number] = {"base": False, "parents": [completed[elite[0]].number], "probe": list(genes)[gene]}
        return params

    def gene_lengths(self, model: GaussianProcess) -> np.ndarray:
        """The model's length scale of each gene (a choice gene: its shortest column)."""
        lengths, column = [], 0
        for spec in self.space.genes.values():
            width = len(spec.choices) if spec.type == "choice" else 1
            lengths.append(float(model.lengths[column : column + width].min()))
            column += width
        return np.array(lengths)

    def relevance(self, model: GaussianProcess) -> np.ndarray:
        """How much each gene matters to the model (1 / length scale squared), normalised to sum to 1."""
        inverse = 1.0 / self.gene_lengths(model) ** 2
        return inverse / inverse.sum()

    def model(self, data: Observations, study: Study | None = None) -> GaussianProcess:
        """The GP on every observation, with hyperparameters fitted on the first m children by number (m on the
        schedule): for a multi-fidelity model, on the rows ``observations`` makes from those children alone, so the
        fit is a function of those finished children (a fresh sampler, a resume or another worker fits the same),
        although the scaled readings of the full data move with every child. Its noise is at least
        ``measured_noise``, the study's own estimate (the base's repeats), rather than only what the fit finds."""
        numbers = sorted({number for number, _ in data.rows})
        size = STARTUP_CHILDREN
        while size * REFIT_GROWTH <= len(numbers):
            size = int(math.ceil(size * REFIT_GROWTH))
        first = numbers[:size]
        floor = self.measured_noise
        fit, x, key = data, data.x, (data.fidelity is not None, floor, *first)
        if data.fidelity is not None and study is not None and key not in self._fits:
            fit = self.observations(study, set(first))
            if fit.fidelity is not None:
                x = fit.x
            elif fit.rows:  # the first children have no readings to scale, later ones have
                x = fit.inputs_at_final()
            else:  # nothing to learn from in the first children alone: the current data, refitted every time
                fit, x, key = data, data.x, (floor, data.x.tobytes(), data.y.tobytes())
        if key not in self._fits:
            order = np.flatnonzero(np.isin([number for number, _ in fit.rows], first))
            # Never a subset chosen by fitness: the best children by a noisy score are the lucky ones, and a fit on
            # them alone sees mostly noise (the model went flat and the search worse after child 120).
            order = order[np.unique(np.linspace(0, len(order) - 1, FIT_MAX).round().astype(int))]
            self._fits = {key: GaussianProcess.fit(x[order], fit.y[order], noise_floor=floor)}
        fitted = self._fits[key]
        return GaussianProcess.condition(data.x, data.y, fitted.lengths, fitted.signal, max(fitted.noise, floor))

    def from_unit_rows(self, positions: np.ndarray) -> np.ndarray:
        """The inverse of ``units`` for rows of points on the unit cube (a choice gene takes its largest column)."""
        genes, column = [], 0
        for spec in self.space.genes.values():
            if spec.type == "choice":
                width = len(spec.choices)
                genes.append(np.argmax(positions[:, column : column + width], axis=1).astype(float))
                column += width
            else:
                genes.append(from_unit_array(positions[:, column], spec))
                column += 1
        return np.stack(genes, axis=1)

    def vector(self, trial: FrozenTrial) -> np.ndarray:
        return np.array([self.gene_value(trial, key) for key in self.space.genes])

    def trial_units(self, trials: list[FrozenTrial]) -> np.ndarray:
        """Children's genes on the model's unit cube."""
        return self.units([self.vector(trial) for trial in trials])

    def units(self, vectors: np.ndarray) -> np.ndarray:
        """Rows of genes on [0, 1] for the model: log scale for log genes, one column per choice for choice genes."""
        vectors = np.asarray(vectors, dtype=float).reshape(-1, len(self.space.genes))
        columns = []
        for index, spec in enumerate(self.space.genes.values()):
            if spec.type == "choice":
                chosen = np.round(vectors[:, index]).astype(int)
                columns.extend((chosen == choice).astype(float) for choice in range(len(spec.choices)))
            else:
                columns.append(to_unit(vectors[:, index], spec))
        return np.stack(columns, axis=1)


def completed_trials(study: Study) -> list[FrozenTrial]:
    """Completed trials with a finite value, in trial order."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [trial for trial in completed if trial.value is not None and np.isfinite(trial.value)]


def build_sampler(
    name: str, space: SearchSpace, seed: int = 0, parent_selection: str = "single"
) -> GeneticSampler | PerChildSeededSampler:
    """The sampler behind ``--sampler``: "ga" (default: screened yolov5 moves), "classic" (yolov5's rule), "tpe",
    "cmaes", "gp" (Optuna's Gaussian-process sampler: random children until 10 have completed, imported rows
    included, then its model's expected improvement, optimised over the whole space; it learns from completed
    children only) or "random"."""
    if name == "ga":
        return ScreenedGeneticSampler(space, seed=seed, parent_selection=parent_selection)
    if name == "classic":
        return GeneticSampler(space, seed=seed, parent_selection=parent_selection, floor_fraction=0.0)
    factories: dict[str, Callable[[int], BaseSampler]] = {
        "tpe": lambda child: TPESampler(seed=child),
        "cmaes": lambda child: CmaEsSampler(seed=child, warn_independent_sampling=False),
        "gp": lambda child: GPSampler(seed=child, warn_independent_sampling=False),
        "random": lambda child: RandomSampler(seed=child),
    }
    if name not in factories:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")
    if name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise UserError("--sampler cmaes needs the cmaes package: pip install cmaes")
    return PerChildSeededSampler(factories[name], space, seed=seed)


def quiet_optuna() -> None:
    """Optuna logs one INFO line per trial; evolution prints its own progress."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
