"""Statistics behind "can I trust the result?": the study's seed noise, the confirmed winner against the base, and
how well short children rank like long ones. Pure functions of fitness values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05  # two-sided, Bonferroni-corrected over the confirmed candidates


@dataclass(frozen=True)
class Noise:
    """The pooled within-hyp standard deviation of fitness: how much one hyp's fitness moves with the seed."""

    sd: float  # nan when no hyp has two evaluations
    dof: int  # sum over hyps of (evaluations - 1)
    hyps: int  # hyps evaluated at least twice
    runs: int  # evaluations of those hyps

    @property
    def known(self) -> bool:
        return self.dof > 0


def pooled_noise(groups: Sequence[Sequence[float]]) -> Noise:
    """Pool the spread of every hyp evaluated more than once: sqrt(sum of squared deviations / sum of (n - 1))."""
    replicated = [np.asarray(group, dtype=float) for group in groups if len(group) >= 2]
    dof = sum(len(group) - 1 for group in replicated)
    if dof == 0:
        return Noise(math.nan, 0, 0, 0)
    squares = sum(float(((group - group.mean()) ** 2).sum()) for group in replicated)
    scale = max(float(np.abs(np.concatenate(replicated)).max()), 1.0)
    sd = math.sqrt(squares / dof)
    sd = 0.0 if sd < 1e-12 * scale else sd  # a deterministic objective: rounding, not noise
    return Noise(sd, dof, len(replicated), sum(len(group) for group in replicated))


@dataclass(frozen=True)
class Comparison:
    """The winner's mean against the base's, with the test that decides whether the gap exceeds the noise."""

    winner_mean: float
    winner_runs: int
    base_mean: float
    base_runs: int
    difference: float
    standard_error: float  # of the difference, from the pooled noise
    p_value: float
    alpha: float  # the corrected level the p-value is held to
    beyond_noise: bool


def compare(winner: Sequence[float], base: Sequence[float], noise: Noise, candidates: int = 1) -> Comparison:
    """Two-sided t-test of mean(winner) - mean(base) with the study's pooled SD (``noise.dof`` degrees of freedom),
    held to ``ALPHA / candidates``: the winner was picked among ``candidates`` hyps, so one of them beating the base
    by luck must stay at 5% (Bonferroni). Beyond noise only when the winner is also higher."""
    winner_mean, base_mean = float(np.mean(winner)), float(np.mean(base))
    difference = winner_mean - base_mean
    alpha = ALPHA / max(candidates, 1)
    if not noise.known or noise.sd == 0:
        p_value = math.nan if not noise.known else (0.0 if difference else 1.0)
        se = math.nan if not noise.known else 0.0
    else:
        se = noise.sd * math.sqrt(1 / len(winner) + 1 / len(base))
        p_value = float(2 * stats.t.sf(abs(difference) / se, noise.dof))
    beyond = bool(difference > 0 and p_value < alpha)
    return Comparison(winner_mean, len(winner), base_mean, len(base), difference, se, p_value, alpha, beyond)


def seeds(count: int) -> str:
    return f"{count} seed" if count == 1 else f"{count} seeds"


def verdict_sentence(comparison: Comparison | None, noise: Noise, winner_is_base: bool = False) -> str:
    """One sentence a user can act on."""
    if winner_is_base:
        return "no confirmed hyp beats the base (the base has the best mean): keep the base hyp"
    if comparison is None or not noise.known:
        return "noise unknown (no hyp was trained with two seeds): the best child may be luck; use --confirm-seeds >= 1"
    runs = f"({seeds(comparison.winner_runs)} for the winner, {seeds(comparison.base_runs)} for the base)"
    gap = f"{comparison.difference:+.3g} ± {comparison.standard_error:.2g} fitness"
    if comparison.beyond_noise:
        return f"best hyp beats the base by {gap} {runs}: beyond noise (p = {comparison.p_value:.2g})"
    return (
        f"best hyp vs the base: {gap} {runs}: within noise (p = {comparison.p_value:.2g}, needs < "
        f"{comparison.alpha:.2g}): keep the base or evolve with longer children"
    )


@dataclass(frozen=True)
class Fidelity:
    """How well the short children's ranking predicts the long ranking."""

    spearman: float
    low: float  # 95% confidence interval (Fisher z), nan below 4 pairs
    high: float
    pairs: int
    same_winner: bool


def rank_fidelity(short: Sequence[float], long: Sequence[float]) -> Fidelity:
    """Spearman's rho between short and long fitness of the same children, its 95% interval by Fisher's z with the
    standard error ``sqrt(1.06 / (n - 3))`` (Fieller et al., for rank correlations), and whether the argmax agrees."""
    short, long = np.asarray(short, dtype=float), np.asarray(long, dtype=float)
    pairs = len(short)
    if pairs < 2:
        return Fidelity(math.nan, math.nan, math.nan, pairs, pairs == 1)
    if np.ptp(short) == 0 or np.ptp(long) == 0:  # a constant ranking correlates with nothing
        return Fidelity(math.nan, math.nan, math.nan, pairs, int(np.argmax(short)) == int(np.argmax(long)))
    rho = float(stats.spearmanr(short, long).statistic)
    low = high = math.nan
    if pairs > 3 and math.isfinite(rho):
        # Fisher's z is infinite at |rho| = 1: a perfect ranking is bounded as if one adjacent pair were half swapped.
        limit = 1 - 6 / (pairs * (pairs**2 - 1))
        z, spread = math.atanh(max(min(rho, limit), -limit)), 1.96 * math.sqrt(1.06 / (pairs - 3))
        low, high = min(math.tanh(z - spread), rho), max(math.tanh(z + spread), rho)
    return Fidelity(rho, low, high, pairs, int(np.argmax(short)) == int(np.argmax(long)))


def fidelity_sentence(fidelity: Fidelity, epochs: int) -> str:
    if not math.isfinite(fidelity.spearman):
        return f"fidelity: no rank correlation over {fidelity.pairs} children at {epochs} epochs (too few, or ties)"
    interval = f" [{fidelity.low:.2f}, {fidelity.high:.2f}]" if math.isfinite(fidelity.low) else " (too few to bound)"
    winner = "the short winner is also the long one" if fidelity.same_winner else "the short winner is not the long one"
    counted = f"over {fidelity.pairs} children at {epochs} epochs"
    return f"fidelity: Spearman {fidelity.spearman:.2f}{interval} {counted}; {winner}"
