"""What an evolution worker prints while children train: a header per child (which one, and the hyps that moved
most from the base), a line per epoch, and an ETA for the whole evolution."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from utils.evolution.evaluations import TrustPlan
from utils.evolution.search_space import GeneSpec

MOVES_SHOWN = 3


def relative_change(spec: GeneSpec, base: float | str, value: float | str) -> float:
    """How far ``value`` moved from ``base`` as a fraction of the gene's range, on its search scale (log genes in
    log space, so lr0 0.001 -> 0.002 moves as far as 0.01 -> 0.02); a choice gene that switched moved 1."""
    if spec.type == "choice":
        return float(value != base)
    low, high = float(spec.low), float(spec.high)
    base, value = (min(max(float(number), low), high) for number in (base, value))
    if spec.scale == "log":
        low, high, base, value = (math.log(number) for number in (low, high, base, value))
    return abs(value - base) / (high - low) if high > low else 0.0


def moved_most(
    hyp: Mapping[str, float | str],
    base_hyp: Mapping[str, float | str],
    genes: Mapping[str, GeneSpec],
    count: int = MOVES_SHOWN,
) -> list[str]:
    """The ``count`` evolved keys that moved most from ``base_hyp`` (``relative_change``), largest first; keys that
    did not move are left out, ties keep the genes' order."""
    changes = [(relative_change(spec, base_hyp[key], hyp[key]), key) for key, spec in genes.items() if key in hyp]
    moved = sorted((change for change in changes if change[0] > 0), key=lambda change: -change[0])
    return [key for _, key in moved[:count]]


def format_value(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.3g}"


def child_header(
    index: int,
    n: int,
    hyp: Mapping[str, float | str],
    base_hyp: Mapping[str, float | str],
    genes: Mapping[str, GeneSpec],
    worker: str | None = None,
) -> str:
    """``evolve: child 7/30 (worker 4242): lr0 0.01→0.0132, mosaic 1→0.71, hsv_h 0.015→0.031``.

    ``index`` is the child's trial number in the shared study (numbered from 0, as every ``evolve: child`` line);
    ``worker`` is named only when several workers share the study."""
    where = f" (worker {worker})" if worker else ""
    keys = moved_most(hyp, base_hyp, genes)
    moves = ", ".join(f"{key} {format_value(base_hyp[key])}→{format_value(hyp[key])}" for key in keys)
    return f"evolve: child {index}/{n}{where}: {moves or 'the base hyp'}"


def epoch_line(index: int, epoch: int, epochs: int, figures: Mapping[str, float]) -> str:
    """``evolve: child 7  epoch 3/10  loss 0.123  mAP50 0.41``: ``epoch`` counts from 1, ``figures`` in order."""
    values = "".join(f"  {label} {value:.3g}" for label, value in figures.items())
    return f"evolve: child {index}  epoch {epoch}/{epochs}{values}"


def plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def format_duration(seconds: float) -> str:
    """42s, 3m 05s, 2h 07m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def planned_evaluation_runs(plan: TrustPlan, n: int, epochs: int | None) -> float:
    """The extra evaluations an evolution of ``n`` children will train, in children's lengths: the base's repeats,
    the top children's repeats (one fewer set when the base is among them: an upper estimate) and the longer
    fidelity runs."""
    fidelity_length = plan.fidelity_epochs / epochs if plan.fidelity_epochs and epochs else 1.0
    return plan.confirm_seeds * (1 + min(plan.confirm, n)) + plan.fidelity * fidelity_length


def eta_line(
    seconds_per_child: Sequence[float],
    children_left: int,
    evaluations_left: float,
    workers: int,
    explain: bool,
    whose: str = "this worker's",
) -> str:
    """``evolve: ETA 12m 30s (5 children and 3 evaluations left, 2m 30s per child, median of this worker's 4)``.

    With several workers the runs left are shared out evenly among them; ``explain`` (say it once) adds that
    this is an estimate. ``whose`` children the median is of ("all": every worker's, as the command that started
    them sees it)."""
    median = statistics.median(seconds_per_child)
    runs = children_left + evaluations_left
    left = plural(children_left, "child", "children")
    if evaluations_left:
        left += f" and {plural(math.ceil(evaluations_left), 'evaluation', 'evaluations')}"
    shared = f", {workers} workers" if workers > 1 else ""
    if workers > 1 and explain:
        shared += ": an estimate, as if every worker kept this one's pace"
    return (
        f"evolve: ETA {format_duration(median * runs / max(workers, 1))} ({left} left, {format_duration(median)} "
        f"per child, median of {whose} {len(seconds_per_child)}{shared})"
    )
