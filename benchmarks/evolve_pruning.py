"""The judge of ``--prune``: surrogate learning curves, the real evolution loop, fixed budgets of training epochs.

Each hyp has a true final quality q(hyp): the ``separable`` shape of ``benchmarks/evolve_search.py`` (six keys
matter, optimum 0.6, the base hyp about 0.3). A child of E epochs reports, after epoch e (progress p = e / E),

    fitness(e) = q * (1 - exp(-p / tau_h)) / (1 - exp(-1 / tau_h)) + noise * N(0, 1)

so it rises, saturating, to q at the last epoch. ``tau_h = --tau * exp(--crossing * c(hyp))``: ``--tau`` sets how
early good and bad hyps separate (small: early; large: curves nearly straight, so early fitness is mostly noise),
and c(hyp) in [-1, 1] makes a high lr0 and a short warmup learn fast, so a fast starter can finish below a slow
one (``--crossing 0``: curves never cross). The noise is drawn anew at every epoch (``--noise``).

Every run drives the real ``utils.evolution.run`` (journal storage, views without plots, no trust evaluations)
with an objective that reports every epoch and counts the epochs it trains (a pruned child counts the epochs it
ran). For each sampler, pruner and seed, the evolution goes on until ``--children`` x ``--epochs`` epochs are spent;
at a budget B we take the children finished within B epochs and record the true q of the one a user would pick,
the best COMPLETE child by its reported final fitness. Then: how many epochs each pruner needs for the median of
that q over seeds to reach no pruning's after ``--children`` full children.

    python benchmarks/evolve_pruning.py                  # about 10 minutes on 2 cores, most of it the ga sampler
    python benchmarks/evolve_pruning.py --samplers tpe --pruners none,halving:1:3,halving:2:3,halving:1:2 --epochs 40
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import multiprocessing
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.evolution import load_meta, run  # noqa: E402
from utils.evolution.evaluations import TrustPlan  # noqa: E402
from utils.evolution.pruning import build_pruner  # noqa: E402
from utils.training.hyp import load_hyp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evolve_search import OPTIMUM, true_fitness, unit  # noqa: E402  (final quality: evolve_search's separable)

METRIC = "metrics/mAP_0.5:0.95"
BUDGET_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None  # the journal fsyncs every write: tmpfs makes it free


@dataclass(frozen=True)
class Curves:
    """The surrogate learning curves (see the module docstring)."""

    epochs: int
    tau: float
    crossing: float
    noise: float


def true_quality(hyp: dict[str, float]) -> float:
    """The fitness a child of this hyp reaches at its last epoch, without noise."""
    return true_fitness("separable", hyp)


def time_constant(hyp: dict[str, float], curves: Curves) -> float:
    """tau_h as a fraction of the run: a high lr0 and a short warmup learn fast."""
    u = unit(hyp)
    speed = 0.5 * (2 * u["lr0"] - 1) + 0.5 * (1 - 2 * u["warmup_epochs"])  # in [-1, 1]
    return curves.tau * math.exp(-curves.crossing * speed)


def fitness_at(quality: float, tau: float, progress: float) -> float:
    """The noise-free fitness after ``progress`` (0..1] of the run."""
    return quality * (1 - math.exp(-progress / tau)) / (1 - math.exp(-1 / tau))


def evolve(pruner_spec: str, seed: int, curves: Curves, budget: int, children: int, sampler: str) -> list[dict]:
    """One evolution until ``budget`` epochs are spent; per child in order: epochs trained, true q, state, value."""
    trained: dict[int, tuple[int, float]] = {}

    def objective(hyp: dict[str, float], child) -> dict[str, float]:
        quality, tau = true_quality(hyp), time_constant(hyp, curves)
        noise = np.random.default_rng([seed, child.index, 7])
        value = math.nan
        for epoch in range(1, curves.epochs + 1):
            trained[child.index] = (epoch, quality)  # this epoch is spent even if the child is pruned after it
            value = fitness_at(quality, tau, epoch / curves.epochs) + curves.noise * float(noise.standard_normal())
            child.report(epoch, value)
        return {METRIC: value}

    name, *numbers = pruner_spec.split(":")
    settings = {"first_rung": int(numbers[0]), "reduction_factor": int(numbers[1])} if numbers else {}
    with tempfile.TemporaryDirectory(dir=SCRATCH) as folder, contextlib.redirect_stdout(io.StringIO()):
        n = children
        while True:
            pruner = build_pruner(name, curves.epochs, **settings)
            study = run(objective, load_hyp(), load_meta(), n, run_dir=Path(folder) / "exp", sampler=sampler,
                        seed=seed, prune=pruner, steps=curves.epochs, plots=False, trust=TrustPlan(0, 0),
                        fitness_weights={METRIC: 1.0}, poll_seconds=0.0)  # fmt: skip
            spent = sum(epochs for epochs, _ in trained.values())
            if spent >= budget:
                break
            n += math.ceil((budget - spent) / (spent / len(trained))) + 1  # resume toward more children
        trials = study.get_trials(deepcopy=False)
    rows = []
    for trial in trials:
        if trial.number in trained:
            epochs, quality = trained[trial.number]
            rows.append({"epochs": epochs, "quality": quality, "state": trial.state.name, "value": trial.value})
    return rows


def pick_at(rows: list[dict], budget: float) -> tuple[float, int, int]:
    """The true q of the best COMPLETE child finished within ``budget`` epochs; children tried and completed."""
    spent, best_value, best_quality, tried, completed = 0, -math.inf, math.nan, 0, 0
    for row in rows:
        spent += row["epochs"]
        if spent > budget:
            break
        tried += 1
        if row["state"] == "COMPLETE":
            completed += 1
            if row["value"] > best_value:
                best_value, best_quality = row["value"], row["quality"]
    return best_quality, tried, completed


def run_job(job: tuple) -> tuple[str, str, list[dict], float]:
    sampler, pruner_spec, seed, curves, budget, children = job
    start = time.perf_counter()
    rows = evolve(pruner_spec, seed, curves, budget, children, sampler)
    return sampler, pruner_spec, rows, time.perf_counter() - start


def cell(values: list[float]) -> str:
    low, median, high = np.percentile(values, [25, 50, 75])
    return f"{median:.3f} [{low:.3f},{high:.3f}]"


def epochs_to_reach(runs: list[list[dict]], target: float, grid: np.ndarray) -> float:
    """The smallest budget on ``grid`` at which the median (over seeds) picked quality reaches ``target``."""
    for budget in grid:
        if np.median([pick_at(rows, budget)[0] for rows in runs]) >= target:
            return float(budget)
    return math.inf


def print_tables(sampler: str, results: dict[str, list[list[dict]]], children: int, epochs: int) -> None:
    """Quality at each budget, then the epochs each pruner needs to reach no pruning's quality at N children."""
    budget = children * epochs
    budgets = [round(fraction * budget) for fraction in BUDGET_FRACTIONS]
    print(f"\nsampler {sampler}")
    print(f"{'pruner':<14}" + "".join(f"{f'B={b}':>22}" for b in budgets) + f"{'tried/completed':>17}{'tried q':>9}")
    for spec, runs in results.items():
        cells = [cell([pick_at(rows, b)[0] for rows in runs]) for b in budgets]
        tried, completed = np.median([pick_at(rows, budget)[1:] for rows in runs], axis=0)
        tried_quality = np.median([np.mean([row["quality"] for row in rows]) for rows in runs])
        print(f"{spec:<14}" + "".join(f"{text:>22}" for text in cells) + f"{tried:>11.0f}/{completed:<5.0f}"
              f"{tried_quality:>9.3f}")  # fmt: skip
    if "none" not in results:
        return
    target = float(np.median([pick_at(rows, budget)[0] for rows in results["none"]]))
    grid = np.arange(2, 2 * children + 1) * epochs / 2  # from one full child on, in steps of half a child
    print(f"epochs to reach no pruning's median q at N={children} ({target:.3f} after {budget} epochs):")
    for spec, runs in results.items():
        reached = epochs_to_reach(runs, target, grid)
        share = f"{reached / budget:.2f} x N x E" if math.isfinite(reached) else f"not within {budget}"
        print(f"  {spec:<14}{reached:>6.0f}  ({share})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruners", default="none,median,halving,hyperband",
                        help="names, or name:first_rung_epochs:reduction_factor for halving and hyperband")  # fmt: skip
    parser.add_argument("--samplers", default="ga,classic,tpe")
    parser.add_argument("--children", type=int, default=30, help="N: the budget is N x --epochs epochs")
    parser.add_argument("--epochs", type=int, default=20, help="E: epochs of a child that is not pruned")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds --first-seed .. --first-seed + --seeds - 1")
    parser.add_argument("--tau", type=float, default=0.3, help="curve time constant, as a fraction of the run")
    parser.add_argument("--crossing", type=float, default=0.5, help="spread of log tau across hyps (0: no crossing)")
    parser.add_argument("--noise", type=float, default=0.01, help="sd of the fitness noise at every epoch")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    samplers, pruners = args.samplers.split(","), args.pruners.split(",")
    curves = Curves(args.epochs, args.tau, args.crossing, args.noise)
    budget = args.children * args.epochs
    jobs = [(sampler, spec, seed, curves, budget, args.children)
            for sampler in samplers for spec in pruners
            for seed in range(args.first_seed, args.first_seed + args.seeds)]  # fmt: skip
    results = {sampler: {spec: [] for spec in pruners} for sampler in samplers}
    seconds = {sampler: {spec: [] for spec in pruners} for sampler in samplers}
    with multiprocessing.Pool(args.processes) as pool:
        for sampler, spec, rows, spent in pool.imap_unordered(run_job, jobs):
            results[sampler][spec].append(rows)
            seconds[sampler][spec].append(spent)
    base = true_quality(load_hyp())
    last_seed = args.first_seed + args.seeds - 1
    print(f"surrogate: {args.epochs} epochs per child, tau {args.tau}, crossing {args.crossing}, noise sd "
          f"{args.noise}; base hyp q {base:.3f}, optimum {OPTIMUM}; seeds {args.first_seed}-{last_seed}")  # fmt: skip
    print("cells: median [25th, 75th percentile] over seeds of the true q of the best COMPLETE child (by reported")
    print(f"final fitness) among the children finished within B epochs; N x E = {args.children} x {args.epochs}.")
    print("tried/completed: children at N x E epochs (medians); tried q: mean true q of the children tried")
    for sampler in samplers:
        print_tables(sampler, results[sampler], args.children, args.epochs)
    print("\nseconds per evolution (median): " + "; ".join(
        f"{sampler} {spec} {np.median(seconds[sampler][spec]):.0f}" for sampler in samplers for spec in pruners
    ))  # fmt: skip


if __name__ == "__main__":
    main()
