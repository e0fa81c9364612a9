"""What the default sampler's model learns from (``observations``): the completed children at their fitness, or with
``--prune`` every child read at a few epochs and at its final fitness, one model row per reading, the epoch as one
more input (a multi-fidelity model)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial, TrialState

FIDELITY_LEVELS = 3  # with pruned children the model also reads every child at up to 3 of the steps children stop at
RATIO_PAIRS = 3  # children that reached two adjacent levels, to put the lower level on the upper level's scale


@dataclass
class Observations:
    """The model's data: ``children`` it knows (in child order), its inputs ``x`` and fitness ``y``, one row per
    (child number, step read) in ``rows``, and ``fidelity``: None for a model of the final fitness alone (step
    None), else the fidelity input at which it predicts (its highest level; the final fitness is read as the step
    after the last one any child reported)."""

    children: list[FrozenTrial]
    x: np.ndarray
    y: np.ndarray
    rows: list[tuple[int, int | None]]
    fidelity: float | None

    def inputs(self, units: np.ndarray) -> np.ndarray:
        """Model inputs for points on the unit cube: predictions are at the highest fidelity."""
        if self.fidelity is None:
            return units
        return np.hstack([units, np.full((len(units), 1), self.fidelity)])

    def inputs_at_final(self) -> np.ndarray:
        """Rows of a model of the final fitness alone as multi-fidelity inputs (the first children of a study can
        have no readings to scale, while the later ones have)."""
        return np.hstack([self.x, np.ones((len(self.x), 1))])


def observations(
    completed: list[FrozenTrial], pruned: list[FrozenTrial], trial_units: Callable[[list[FrozenTrial]], np.ndarray]
) -> Observations:
    """What the model learns from. Without pruned children: every completed child at its fitness.

    With pruned children (``--prune``), a multi-fidelity model: each child is read at up to
    ``FIDELITY_LEVELS`` steps (the lowest step any child was pruned at, and the steps most children were pruned
    at) and at its final fitness, one row per reading, with the step as one more input (log(1 + step) scale, the
    final fitness at 1). Readings at a lower level are put on the next level's scale by the median ratio between
    the two among the children with positive readings at both, chained down from an anchor level (see
    ``level_scales``); the model predicts at the anchor. So a child pruned at epoch 3 says how good its region
    looks after 3 epochs, and the model learns from the children that went on how far that predicts the final
    fitness, curves that cross included (a fast starter is not a good finisher everywhere). With ``halving``
    about one child in 4 trains in full; a model that saw pruned children only at the lowest completed fitness
    did not reach no pruning's quality within the same epochs, this one does with 60% of them
    (``benchmarks/evolve_pruning.py``, 40 seeds). A pruned child with no reading on the chain is read at the
    lowest level at the lowest fitness (the old rule); a completed child whose final fitness is not on the chain
    (an imported row) keeps it as it is. No level with ``RATIO_PAIRS`` positive readings: the old rule."""
    stepped = [child for child in pruned if child.last_step is not None]
    if stepped:
        multi = fidelity_observations(completed, pruned, stepped, trial_units)
        if multi is not None:
            return multi
    x = trial_units(completed)
    y = np.array([child.value for child in completed], dtype=float)
    rows = [(child.number, None) for child in completed]
    if pruned and completed:  # no readings to learn from: a pruned child lagged its peers, the lowest fitness
        x = np.concatenate([x, trial_units(pruned)])
        y = np.concatenate([y, np.full(len(pruned), y.min())])
        rows += [(child.number, None) for child in pruned]
    return Observations(completed, x, y, rows, None)


def fidelity_observations(
    completed: list[FrozenTrial],
    pruned: list[FrozenTrial],
    stepped: list[FrozenTrial],
    trial_units: Callable[[list[FrozenTrial]], np.ndarray],
) -> Observations | None:
    """The multi-fidelity rows of ``observations``; None when no level has ``RATIO_PAIRS`` positive readings."""
    children = sorted(completed + stepped, key=lambda child: child.number)
    counts = Counter(child.last_step for child in stepped)
    lowest = min(counts)
    common = sorted((step for step in counts if step != lowest), key=lambda step: (-counts[step], -step))
    levels = sorted([lowest, *common[: FIDELITY_LEVELS - 1]])
    steps = [child.last_step for child in completed if child.last_step is not None]
    final = max(levels + steps) + 1  # the final fitness, above every step a child reports

    def reading(child: FrozenTrial, level: int) -> float:
        value = child.value if level == final else child.intermediate_values.get(level)
        if level == final and child.state != TrialState.COMPLETE or value is None or not math.isfinite(value):
            return math.nan
        return float(value)

    table = {level: np.array([reading(child, level) for child in children]) for level in [*levels, final]}
    scales = level_scales(table, [*levels, final])
    if not scales:
        return None
    rows, inputs, values, kept = [], [], [], []
    everyone = children + [child for child in pruned if child.last_step is None]  # + pruned before any report
    units = trial_units(everyone)

    def add(index: int, level: int, value: float) -> None:
        rows.append((everyone[index].number, level))
        inputs.append(np.append(units[index], math.log1p(level) / math.log1p(final)))
        values.append(value)

    for index, child in enumerate(children):
        readings = [(level, table[level][index]) for level in sorted(scales) if np.isfinite(table[level][index])]
        if child.state == TrialState.COMPLETE and final not in scales:
            # Too few completed children to put the final fitness on the chain's scale (or only imported rows,
            # which have no per-epoch fitness): the final fitness as it is; the fidelity input lets the model
            # learn the offset.
            readings.append((final, table[final][index]))
        if readings:
            kept.append(child)
        for level, value in readings:
            add(index, level, scales.get(level, 1.0) * value)
    # A pruned child with no reading the chain can scale (pruned below the lowest level that could be chained,
    # or with no positive fitness there) still lagged its peers: it is read at the lowest level, at the lowest
    # fitness, so that the model stops proposing where children get pruned. It is never a parent.
    bottom, floor, read = min(scales), min(values), {child.number for child in kept}
    for index, child in enumerate(everyone):
        if child.number not in read:
            add(index, bottom, floor)
    top = math.log1p(max(scales)) / math.log1p(final)
    x = np.array(inputs).reshape(len(inputs), units.shape[1] + 1)
    return Observations(kept, x, np.array(values, dtype=float), rows, top)


def level_scales(table: dict[int, np.ndarray], levels: list[int]) -> dict[int, float]:
    """The factor that puts each level's readings on the anchor level's scale: chained median ratios between
    adjacent levels over the children with positive readings at both. The anchor is the highest level with
    ``RATIO_PAIRS`` positive readings whose chain reaches furthest down (a final fitness that only imported rows
    have cannot scale anything below it)."""
    best: dict[int, float] = {}
    for top in reversed(range(len(levels))):
        if np.sum(table[levels[top]] > 0) < RATIO_PAIRS:
            continue
        scales = {levels[top]: 1.0}
        for upper, lower in zip(reversed(levels[1 : top + 1]), reversed(levels[:top])):
            both = (table[upper] > 0) & (table[lower] > 0)
            if both.sum() < RATIO_PAIRS:
                break
            scales[lower] = float(np.median(table[upper][both] / table[lower][both])) * scales[upper]
        if len(scales) > len(best):
            best = scales
        if min(scales) == levels[0]:
            break
    return best
