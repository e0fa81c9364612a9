"""The trust report of an evolution: its measured noise, the confirmed winner against the base, and fidelity.

Built from the children's study and the evaluations study (``evaluations.py``); shown on the console, in the header
of ``hyp_evolve.yaml`` and on ``fitness.png``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from utils.evolution.evaluations import FIDELITY, REPEAT, Task, TrustPlan
from utils.evolution.verdict import (
    Comparison,
    Fidelity,
    Noise,
    compare,
    fidelity_sentence,
    pooled_noise,
    rank_fidelity,
    seeds,
    verdict_sentence,
)


@dataclass(frozen=True)
class TrustReport:
    noise: Noise
    runs: dict[int, list[float]]  # child number -> fitness at the children's length: its own run, then repeats
    fresh: dict[int, list[float]]  # child number -> fitness of its repeats only (seeds it was not selected on)
    long: dict[int, float]  # child number -> fitness of its full-length (fidelity) run
    base: int | None
    candidates: list[int]  # the confirmed children, best single run first
    winner: int | None  # None until confirmation is complete (or with --confirm 0)
    compared: int | None  # the child tested against the base: the winner, or the best other one when the base wins
    comparison: Comparison | None
    fidelity: Fidelity | None
    fidelity_epochs: int | None
    plan: TrustPlan

    @property
    def confirmed(self) -> bool:
        return self.winner is not None

    def sentence(self) -> str:
        if self.base is None:
            return "no base result yet: the base hyp has not finished a run"
        if not self.plan.confirm or not self.plan.confirm_seeds:
            return self.unconfirmed_sentence()
        if not self.confirmed:
            return (
                "not confirmed yet: the top children are retrained once all children are done (if this worker "
                "stopped before that, rerun the same command)"
            )
        return verdict_sentence(self.comparison, self.noise, winner_is_base=self.winner == self.base)

    def unconfirmed_sentence(self) -> str:
        if self.base is None or not self.runs.get(self.base):
            return "no base result yet"
        best = max(self.runs, key=lambda number: self.runs[number][0])
        base_mean = sum(self.runs[self.base]) / len(self.runs[self.base])
        noise = f"the noise sd is {self.noise.sd:.2g}" if self.noise.known else "the noise is unknown"
        flag = "--confirm 0" if not self.plan.confirm else "--confirm-seeds 0"
        return (
            f"not confirmed ({flag}): child {best}'s single run is {self.runs[best][0] - base_mean:+.3g} from "
            f"the base's mean and {noise}; a single run cannot tell a better hyp from a lucky seed"
        )

    def lines(self) -> list[str]:
        """The report as lines (console and yaml header), most important last."""
        lines = []
        if self.noise.known:
            lines.append(
                f"noise: pooled sd {self.noise.sd:.3g} fitness ({self.noise.hyps} hyps, {self.noise.runs} runs)"
            )
        else:
            lines.append("noise: unknown (no hyp has been trained with two seeds yet)")
        if self.base is not None and self.runs.get(self.base):
            lines.append(f"base (child {self.base}): {self.mean_text(self.runs[self.base])}")
        if self.compared is not None:
            role = "winner" if self.compared == self.winner else "best other candidate"
            lines.append(
                f"{role} (child {self.compared}): {self.mean_text(self.fresh[self.compared])} over fresh seeds "
                f"(its selection run scored {self.runs[self.compared][0]:.4g}, not counted)"
            )
        if self.comparison is not None:
            lines.append(
                f"difference {self.comparison.difference:+.4g} ± {self.comparison.standard_error:.2g}, p = "
                f"{self.comparison.p_value:.2g} (two-sided t-test with the pooled sd, {self.noise.dof} dof; "
                f"Bonferroni over {len(self.candidates) - (self.base in self.candidates)} candidates: "
                f"alpha {self.comparison.alpha:.2g})"
            )
        if self.fidelity is not None and self.fidelity_epochs:
            lines.append(fidelity_sentence(self.fidelity, self.fidelity_epochs))
        lines.append(f"verdict: {self.sentence()}")
        return lines

    def mean_text(self, values: Sequence[float]) -> str:
        mean = sum(values) / len(values)
        if not self.noise.known:
            return f"{mean:.4g} ({seeds(len(values))})"
        return f"{mean:.4g} ± {self.noise.sd / math.sqrt(len(values)):.2g} ({seeds(len(values))})"


def build_report(
    children: Sequence[FrozenTrial],
    base: FrozenTrial | None,
    evaluations: Sequence[tuple[Task, FrozenTrial]],
    all_done: bool,
    plan: TrustPlan,
    given_up: set[int] = frozenset(),
    ranking: Sequence[int] | None = None,
) -> TrustReport:
    """Pool the noise, pick the confirmed winner by its fresh seeds (the base by all its runs), and test it against
    the base.

    The noise pools the base's runs and every other child's repeats, never a child's own run: that run was
    selected for being high, so its spread from the repeats would inflate the noise. Candidates whose repeats were
    given up (``given_up``, child numbers) are left out of the confirmation. The candidates are the first of
    ``ranking`` (child numbers, best first), else the best by their one run."""
    complete = [child for child in children if child.state == TrialState.COMPLETE and child.value is not None]
    runs = {child.number: [float(child.value)] for child in complete}
    fresh: dict[int, list[float]] = {}
    long: dict[int, float] = {}
    for task, trial in evaluations:
        if task.kind == REPEAT and task.child in runs:
            runs[task.child].append(float(trial.value))
            fresh.setdefault(task.child, []).append(float(trial.value))
        elif task.kind == FIDELITY and task.child in runs and task.epochs == plan.fidelity_epochs:
            long[task.child] = float(trial.value)
    base_number = base.number if base is not None and base.number in runs else None
    noise = pooled_noise([runs[number] if number == base_number else fresh[number] for number in fresh])
    ranked = sorted(runs, key=lambda number: (-runs[number][0], number))
    if ranking is not None:  # the sampler model's mean, best first (planned_tasks confirmed the same children)
        ranked = [number for number in ranking if number in runs]
    candidates = [number for number in ranked[: plan.confirm] if number not in given_up] if all_done else []
    if base_number is not None and candidates and base_number not in candidates:
        candidates = [*candidates, base_number]
    winner = comparison = compared = None
    needed = {number: plan.confirm_seeds for number in candidates}
    if candidates and plan.confirm_seeds and all(len(fresh.get(number, [])) >= needed[number] for number in candidates):

        def fresh_mean(number: int) -> tuple[float, int]:
            """The unbiased mean the winner is picked by: fresh seeds only, except the base, whose every run counts
            (it was never selected); the same numbers the test then compares."""
            values = runs[number] if number == base_number else fresh[number]
            return sum(values) / len(values), -number

        winner = max(candidates, key=fresh_mean)
        others = [number for number in candidates if number != base_number]
        if base_number is not None and others:  # the base wins: still show how far the best other one is
            compared = winner if winner != base_number else max(others, key=fresh_mean)
            comparison = compare(fresh[compared], runs[base_number], noise, candidates=len(others))
    fidelity = None
    if len(long) >= 2:
        numbers = sorted(long)
        fidelity = rank_fidelity([runs[number][0] for number in numbers], [long[number] for number in numbers])
    return TrustReport(noise, runs, fresh, long, base_number, candidates, winner, compared, comparison, fidelity,
                       plan.fidelity_epochs, plan)  # fmt: skip
