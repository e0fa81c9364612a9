"""The genetic moves, as pure functions of a parent vector, the gene specs and a random generator.

A child is a vector with one number per evolved gene in hyp order; a choice gene is carried as its index. yolov5's
mutation (``mutate``, and ``mutate_rows`` for many parents at once), crossover, parent selection, the moves of a few
genes (``subspace_move``), uniform draws, the default sampler's pool of such moves (``genetic_pool``) and its probes
(``probe_move``: one gene of the best child to a uniform value), plus the per-child random generator that makes
every child a function of (evolution seed, child index).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from utils.evolution.search_space import GeneSpec

PARENT_SELECTIONS = ("single", "weighted")
MUTATION_PROBABILITY = 0.8
MUTATION_SIGMA = 0.2
FACTOR_RANGE = (0.3, 3.0)
# For keys whose range starts at 0, a value below 10% of (high - low) mutates on that scale instead of its own.
ZERO_FLOOR_FRACTION = 0.1
SIGNIFICANT_DIGITS = 5
CHOICE_SWITCH_PROBABILITY = 0.1  # per child, times the gene's gain
SUBSPACE_MAX_GENES = 3
SUBSPACE_STEP = 0.1
POOL_SIZE = 500  # proposals screened per child
PROBE_SPREAD_FLOOR = 0.05  # a probe draws gene i with weight 1 / (its spread among the best children + this)
# (kind, share of the pool): yolov5's mutation, a 4x smaller and a 3x larger step, crossover then mutation, a
# change of the few genes the model finds relevant, uniform draws.
POOL_SHARES = (
    ("mutation", 0.3),
    ("small", 0.1),
    ("large", 0.1),
    ("crossover", 0.15),
    ("subspace", 0.3),
    ("uniform", 0.05),
)


def child_rng(seed: int, child_index: int) -> np.random.Generator:
    """The random generator of one child: a pure function of the evolution seed and the child index."""
    return np.random.default_rng([seed, child_index])


def child_seed(seed: int, child_index: int) -> int:
    """A 31-bit integer seed for one child (for Optuna samplers and for the child's own training)."""
    return int(np.random.SeedSequence([seed, child_index]).generate_state(1)[0] >> 1)


def mutation_factors(gains: np.ndarray, rng: np.random.Generator, sigma: float = MUTATION_SIGMA) -> np.ndarray:
    """yolov5's factors ``v = 1 + gain * N(0,1) * r * 0.2``: each gene w.p. 0.8, r ~ U(0,1) once per draw.

    Redrawn until at least one factor differs from 1, clipped to [0.3, 3.0]. ``sigma`` replaces yolov5's 0.2.
    """
    factors = np.ones_like(gains)
    while np.all(factors == 1) and np.any(gains > 0):
        mutates = rng.random(len(gains)) < MUTATION_PROBABILITY
        step = gains * mutates * rng.standard_normal(len(gains)) * rng.random() * sigma
        factors = (1 + step).clip(*FACTOR_RANGE)
    return factors


def other_choice(value: float, spec: GeneSpec, rng: np.random.Generator) -> float:
    """A choice gene's index moved to one of its other choices, uniformly."""
    others = [choice for choice in range(len(spec.choices)) if choice != int(round(value))]
    return float(others[int(rng.integers(len(others)))])


def switch_choices(parent: np.ndarray, specs: Sequence[GeneSpec], rng: np.random.Generator, force: bool) -> np.ndarray:
    """Choice genes (carried as an index) switch to another choice with probability ``0.1 * gain`` each; with
    ``force`` (nothing else changed) one of them switches for sure."""
    child = parent.copy()
    indices = [index for index, spec in enumerate(specs) if spec.type == "choice" and spec.gain > 0]
    switches = [index for index in indices if rng.random() < CHOICE_SWITCH_PROBABILITY * specs[index].gain]
    if force and not switches and indices:
        switches = [indices[int(rng.integers(len(indices)))]]
    for index in switches:
        child[index] = other_choice(parent[index], specs[index], rng)
    return child


def gene_arrays(specs: Sequence[GeneSpec]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per gene: whether it is a choice, its mutation gain (0 for choices), its low and high bounds."""
    choice = np.array([spec.type == "choice" for spec in specs])
    gains = np.array([0.0 if spec.type == "choice" else spec.gain for spec in specs], dtype=float)
    low = np.array([spec.low for spec in specs], dtype=float)
    high = np.array([spec.high for spec in specs], dtype=float)
    return choice, gains, low, high


def mutate(
    parent: np.ndarray,
    specs: Sequence[GeneSpec],
    rng: np.random.Generator,
    floor_fraction: float = ZERO_FLOOR_FRACTION,
    sigma: float = MUTATION_SIGMA,
) -> np.ndarray:
    """One child of ``parent``: ``child = parent + (v - 1) * max(|parent|, floor)``, clipped to [low, high].

    ``floor`` is ``floor_fraction`` (10%) of (high - low) for keys whose range starts at 0 (low <= 0) and 0
    otherwise. Above the floor this is exactly yolov5's ``parent * v``. Below it the step is taken on the floor's
    scale, so a key at 0 (mixup, degrees, ...) can move, which a purely multiplicative step never does; keys with
    low > 0 (lr0, box, ...) cannot reach 0 and keep the multiplicative step everywhere. ``floor_fraction=0`` is
    yolov5's rule exactly (the ``classic`` sampler).
    Values are rounded to 5 significant digits (whole numbers for ``type: int``) and clipped again. Choice genes
    (an index) switch to another choice with probability 0.1 * gain (see ``switch_choices``).
    """
    choice, gains, low, high = gene_arrays(specs)
    factors = mutation_factors(gains, rng, sigma)
    floor = np.where(low <= 0, floor_fraction * (high - low), 0.0)
    scale = np.maximum(np.abs(parent), floor)
    child = (parent + (factors - 1) * scale).clip(low, high)
    rounded = np.array([float(f"{value:.{SIGNIFICANT_DIGITS}g}") for value in child])
    rounded = np.where([spec.type == "int" for spec in specs], np.round(child), rounded)
    rounded = np.where(choice, parent, rounded.clip(low, high))
    return switch_choices(rounded, specs, rng, force=bool(np.array_equal(rounded, parent)))


def mutate_rows(
    parents: np.ndarray,
    specs: Sequence[GeneSpec],
    rng: np.random.Generator,
    floor_fraction: float = ZERO_FLOOR_FRACTION,
    sigma: float = MUTATION_SIGMA,
) -> np.ndarray:
    """``mutate`` for many parents (rows) at once: the same rule, drawn in arrays (so not the same draws)."""
    count = len(parents)
    choice, gains, low, high = gene_arrays(specs)
    factors = np.ones((count, len(specs)))
    redraw = np.arange(count) if np.any(gains > 0) else np.arange(0)
    while len(redraw):
        mutates = rng.random((len(redraw), len(specs))) < MUTATION_PROBABILITY
        ratio = rng.random((len(redraw), 1))
        step = gains * mutates * rng.standard_normal((len(redraw), len(specs))) * ratio * sigma
        factors[redraw] = (1 + step).clip(*FACTOR_RANGE)
        redraw = redraw[np.all(factors[redraw] == 1, axis=1)]
    floor = np.where(low <= 0, floor_fraction * (high - low), 0.0)
    child = (parents + (factors - 1) * np.maximum(np.abs(parents), floor)).clip(low, high)
    integer = np.array([spec.type == "int" for spec in specs])
    child = np.where(integer, np.round(child), round_significant(child)).clip(low, high)
    child = np.where(choice, parents, child)
    switchable = [index for index, spec in enumerate(specs) if spec.type == "choice" and spec.gain > 0]
    switch = np.zeros((count, len(specs)), dtype=bool)
    for index in switchable:
        switch[:, index] = rng.random(count) < CHOICE_SWITCH_PROBABILITY * specs[index].gain
    if switchable:  # a row that nothing changed switches one choice gene for sure, as in ``mutate``
        forced = np.flatnonzero(np.all(child == parents, axis=1) & ~switch.any(axis=1))
        switch[forced, rng.choice(switchable, size=len(forced))] = True
    for index in switchable:
        choices = len(specs[index].choices)
        other = (np.round(parents[:, index]) + rng.integers(1, choices, count)) % choices
        child[:, index] = np.where(switch[:, index], other, child[:, index])
    return child


def round_significant(values: np.ndarray) -> np.ndarray:
    """Values rounded to ``SIGNIFICANT_DIGITS`` significant digits, by arithmetic (rows of a pool at once)."""
    exponent = np.floor(np.log10(np.maximum(np.abs(values), 1e-300)))
    scale = 10.0 ** (SIGNIFICANT_DIGITS - 1 - exponent)
    return np.where(values == 0, 0.0, np.round(values * scale) / scale)


def crossover(first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform crossover: each gene from either parent with equal probability (rows of parents pair up)."""
    return np.where(rng.random(np.shape(first)) < 0.5, first, second)


def select_parent(
    population: np.ndarray,
    fitness: np.ndarray,
    rng: np.random.Generator,
    selection: str,
    choice: np.ndarray | None = None,
) -> tuple[np.ndarray, int | None]:
    """Pick a parent among the fittest rows: one at random weighted by fitness, or their weighted mean.

    In the weighted mean, genes marked in ``choice`` (choice genes: an index has no mean) take the fittest row's.
    Returns the parent vector and, for "single", the chosen row's position (None for "weighted").
    """
    weights = fitness - fitness.min() + 1e-6
    if selection == "weighted":
        mean = (population * weights[:, None]).sum(0) / weights.sum()
        if choice is not None:
            mean = np.where(choice, population[int(np.argmax(fitness))], mean)
        return mean, None
    chosen = int(rng.choice(len(weights), p=weights / weights.sum()))
    return population[chosen], chosen


def encode(value: Any, spec: GeneSpec) -> float:
    """A gene's value as a number: a choice gene's name becomes its index."""
    if spec.type == "choice":
        return float(spec.choices.index(value)) if isinstance(value, str) else float(value)
    return float(value)


def decode(value: float, spec: GeneSpec) -> Any:
    """The value Optuna's distribution expects: an int for int genes, the name for choice genes, else a float."""
    if spec.type == "choice":
        return spec.choices[int(round(value))]
    if spec.type == "int":
        return int(round(value))
    return float(value)


def subspace_move(
    parent: np.ndarray, specs: Sequence[GeneSpec], rng: np.random.Generator, relevance: np.ndarray
) -> np.ndarray:
    """Change 1 to 3 genes, drawn by relevance: each to a uniform value or by a step of 0.1 of its range (on its
    search scale), a choice gene to another choice; the rest stay. Where the model has learnt which keys matter,
    this searches them directly."""
    child = parent.copy()
    count = min(int(rng.integers(1, SUBSPACE_MAX_GENES + 1)), int((relevance > 0).sum()))
    for index in rng.choice(len(specs), size=count, replace=False, p=relevance):
        spec = specs[index]
        if spec.type == "choice":
            child[index] = other_choice(parent[index], spec, rng)
            continue
        if rng.random() < 0.5:
            position = rng.random()
        else:
            position = float(np.clip(to_unit(parent[index], spec) + rng.normal(0.0, SUBSPACE_STEP), 0.0, 1.0))
        child[index] = from_unit(position, spec)
    return child


def to_unit(value: Any, spec: GeneSpec) -> Any:
    """A gene's value (a number or an array) on [0, 1] of its bounds, on its search scale (log for log genes)."""
    if spec.high <= spec.low:
        return value * 0.0
    if spec.scale == "log":
        return np.log(value / spec.low) / math.log(spec.high / spec.low)
    return (value - spec.low) / (spec.high - spec.low)


def from_unit(position: float, spec: GeneSpec) -> float:
    """The inverse of ``to_unit``, snapped like a mutation (5 significant digits, whole numbers for int/choice)."""
    if spec.scale == "log":
        value = spec.low * (spec.high / spec.low) ** position
    else:
        value = spec.low + position * (spec.high - spec.low)
    return min(max(decode_number(value, spec), spec.low), spec.high)


def from_unit_array(positions: np.ndarray, spec: GeneSpec) -> np.ndarray:
    """``from_unit`` for an array of positions of one gene, with 5 significant digits by arithmetic."""
    if spec.scale == "log":
        values = spec.low * (spec.high / spec.low) ** positions
    else:
        values = spec.low + positions * (spec.high - spec.low)
    if spec.type in ("int", "choice"):
        return np.clip(np.round(values), spec.low, spec.high)
    return np.clip(round_significant(values), spec.low, spec.high)


def decode_number(value: float, spec: GeneSpec) -> float:
    """A uniform draw snapped to the gene's kind (whole numbers for int and choice genes), still a number."""
    if spec.type in ("int", "choice"):
        return float(min(max(round(value), spec.low), spec.high))
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def uniform_draw(specs: Sequence[GeneSpec], rng: np.random.Generator) -> np.ndarray:
    """A child drawn uniformly on each gene's search scale (log for log genes); a choice gene by a uniform index."""
    return np.array(
        [
            float(rng.integers(len(spec.choices))) if spec.type == "choice" else from_unit(rng.random(), spec)
            for spec in specs
        ]
    )


def genetic_pool(
    parents: np.ndarray,
    fitness: np.ndarray,
    specs: Sequence[GeneSpec],
    rng: np.random.Generator,
    relevance: np.ndarray,
    floor_fraction: float = ZERO_FLOOR_FRACTION,
) -> tuple[list[np.ndarray], list[list[int]]]:
    """``POOL_SIZE`` genetic moves from ``parents`` (drawn weighted by ``fitness``) in ``POOL_SHARES``, and for each
    the positions of its parents among ``parents`` (none for a uniform draw)."""
    weights = fitness - fitness.min() + 1e-6
    weights = weights / weights.sum()
    pool, origins = [], []
    for kind, share in POOL_SHARES:
        count = int(POOL_SIZE * share)
        first = rng.choice(len(parents), size=count, p=weights)
        if kind == "uniform":
            pool.extend(uniform_draw(specs, rng) for _ in range(count))
            origins.extend([[]] * count)
            continue
        if kind == "subspace":
            pool.extend(subspace_move(parents[index], specs, rng, relevance) for index in first)
            origins.extend([int(index)] for index in first)
            continue
        rows = parents[first]
        if kind == "crossover":
            second = rng.choice(len(parents), size=count, p=weights)
            rows = crossover(rows, parents[second], rng)
            origins.extend(sorted({int(a), int(b)}) for a, b in zip(first, second))
        else:
            origins.extend([int(index)] for index in first)
        sigma = {"small": MUTATION_SIGMA / 4, "large": MUTATION_SIGMA * 3}.get(kind, MUTATION_SIGMA)
        pool.extend(mutate_rows(rows, specs, rng, floor_fraction, sigma))
    return pool, origins


def gene_spread(rows: np.ndarray, specs: Sequence[GeneSpec]) -> np.ndarray:
    """How much each gene varies among ``rows``: its standard deviation on [0, 1] of its search scale; for a choice
    gene, the share of rows that differ from the commonest choice."""
    spreads = []
    for index, spec in enumerate(specs):
        column = rows[:, index]
        if spec.type == "choice":
            _, counts = np.unique(np.round(column), return_counts=True)
            spreads.append(1.0 - counts.max() / len(column))
        else:
            spreads.append(float(np.std(to_unit(column, spec))))
    return np.array(spreads)


def probe_weights(spread: np.ndarray, specs: Sequence[GeneSpec]) -> np.ndarray:
    """How often a probe moves each gene: 1 / (its ``spread`` + 0.05), so the genes the best children never vary come
    first; 0 for a gene that cannot move (its bounds are equal, or it has one choice)."""
    movable = np.array([spec.high > spec.low for spec in specs])
    return np.where(movable, 1.0 / (np.asarray(spread, dtype=float) + PROBE_SPREAD_FLOOR), 0.0)


def probe_move(
    parent: np.ndarray, specs: Sequence[GeneSpec], rng: np.random.Generator, weights: np.ndarray
) -> tuple[np.ndarray, int]:
    """``parent`` with one gene moved to a uniform value on its search scale (a choice gene to another choice), the
    gene drawn with ``weights`` (``probe_weights``: at least one must be positive). Returns the child and the gene's
    position."""
    index = int(rng.choice(len(specs), p=weights / weights.sum()))
    child = parent.copy()
    spec = specs[index]
    if spec.type == "choice":
        child[index] = other_choice(parent[index], spec, rng)
    else:
        child[index] = from_unit(rng.random(), spec)
    return child, index
