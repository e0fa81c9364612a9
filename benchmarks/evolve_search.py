"""The judge of the evolution samplers: surrogate objectives shaped like the meta table, many seeds, fixed budgets.

Every evolved hyp key is searched (25 keys with the default hyp), but only a few matter; each child's score carries
measurement noise, as real children do. For each sampler, shape and seed we record, after k children, the true
(noise-free) fitness of the child the noisy scores rank best, which is what a yolov5 user would pick. The optimum is
0.6 and the base hyp scores about 0.3 to 0.35, so that figures read like mAP. A second set of tables gives the child
our evolution hands over by default, its confirmed winner (``--confirm 3 --confirm-seeds 2``): the 3 children with
the best noisy scores and the base, each scored again with 2 fresh noise draws, the best mean of those fresh scores
(the base: of all its runs); 8 runs more than k children. A third gives the best true fitness among the first k
children, whatever the pick: whether a low figure is the search's fault or the pick's (runs saved before it have
none; with a mix, that table covers only the newer runs).

Shapes (coordinates u in [0, 1] per key, log10 for log-scale keys; distance is L1 weighted per key):
  separable    each key that matters costs weight * |u - optimum|
  interacting  the keys that matter come in pairs whose optimum is a narrow rotated valley (lr0 with momentum,
               mosaic with mixup, scale with translate, box with obj): moving one key alone gets worse
  multimodal   three basins; the base hyp lies in the lowest one, the global optimum lies far from it
  noisy        separable with the noise of real short children (sd 0.03 instead of 0.005)

Samplers: ours (``ga`` the default, ``classic`` yolov5's exact rule, ``tpe``, ``cmaes``, ``gp``, ``random``;
each starts from the base hyp as child 0, the last four with a fresh Optuna sampler per child seeded by its index)
and Optuna's own samplers as references (``optuna-tpe``, ``optuna-cmaes``, ``optuna-gp``: one sampler per run, the
base hyp enqueued as their first trial). Studies live in memory and are driven with
ask/tell, exactly as the runner drives them, without training.

    python benchmarks/evolve_search.py --seeds 10 --children 300
    python benchmarks/evolve_search.py --seeds 3 --children 100 --shapes interacting --samplers ga,classic
    python benchmarks/evolve_search.py --samplers optuna-gp --save gp.jsonl   # then --load gp.jsonl other.jsonl
    python benchmarks/evolve_search.py --load a.jsonl b.jsonl --versus classic

The last column of each table is how each run's pick changed between the last two budgets: the median change, how
many runs rose and fell, and the one-sided Wilcoxon p that they rose. ``--versus NAME`` adds, for every sampler at
every budget, the chance that one of its runs picks better than one of NAME's, with a one-sided Mann-Whitney p.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import optuna
from scipy.stats import mannwhitneyu, wilcoxon

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.evolution import load_meta, validate_search_space  # noqa: E402
from utils.evolution.child import suggest_hyp  # noqa: E402
from utils.evolution.mutation import child_seed  # noqa: E402
from utils.evolution.sampler import build_sampler, quiet_optuna  # noqa: E402
from utils.training.hyp import load_hyp  # noqa: E402

SHAPES = ("separable", "interacting", "multimodal", "noisy")
OURS = ("ga", "classic", "tpe", "cmaes", "gp", "random")
REFERENCES = ("optuna-tpe", "optuna-cmaes", "optuna-gp")
BUDGETS = (50, 100, 200, 300)
OPTIMUM = 0.6
CONFIRM, CONFIRM_SEEDS = 3, 2  # the evolution's defaults (--confirm, --confirm-seeds)
NOISE_SD = {"separable": 0.005, "interacting": 0.005, "multimodal": 0.005, "noisy": 0.03}
# The keys that matter: optimum (in u) and weight. mixup's base value is 0, where yolov5's step cannot move.
SEPARABLE = {
    "lr0": (0.62, 1.2),
    "momentum": (0.75, 0.8),
    "mixup": (0.25, 0.8),
    "scale": (0.78, 0.6),
    "box": (0.33, 0.6),
    "hsv_v": (0.2, 0.4),
}
# Pairs (a, b): optimum on the line through (centre_a, centre_b) along direction (1, slope); the valley is narrow
# across it (weight across) and shallow along it (weight along).
PAIRS = {
    ("lr0", "momentum"): ((0.55, 0.7), -1.0),
    ("mosaic", "mixup"): ((0.7, 0.35), 1.0),
    ("scale", "translate"): ((0.7, 0.3), -1.0),
    ("box", "obj"): ((0.35, 0.2), 1.0),
}
ACROSS, ALONG = 2.5, 0.25
INTERACTING_SCALE = 5.6  # the base hyp's cost is 2.8: it scores half the optimum, as on the other shapes
# Basins: (height, centre by key); unnamed keys don't matter. The base hyp sits on the slope of the first, lowest one.
BASINS = (
    (0.85, {"lr0": 0.6, "momentum": 0.75, "mixup": 0.2, "scale": 0.7, "box": 0.3}),
    (0.9, {"lr0": 0.4, "momentum": 0.3, "mixup": 0.7, "scale": 0.2, "box": 0.7}),
    (1.0, {"lr0": 0.3, "momentum": 0.6, "mixup": 0.9, "scale": 0.9, "box": 0.9}),
)
BASIN_WEIGHT = 1.0


@functools.cache
def space():
    return validate_search_space(load_hyp(), load_meta())


def unit(hyp: dict[str, float]) -> dict[str, float]:
    """Each evolved key on [0, 1] of its meta bounds (log10 scale for log keys)."""
    coordinates = {}
    for key, spec in space().genes.items():
        if spec.scale == "log":
            coordinates[key] = math.log10(hyp[key] / spec.low) / math.log10(spec.high / spec.low)
        else:
            coordinates[key] = (hyp[key] - spec.low) / (spec.high - spec.low)
    return coordinates


def true_fitness(shape: str, hyp: dict[str, float]) -> float:
    """The noise-free fitness of a hyp: OPTIMUM at the best point of the shape."""
    u = unit(hyp)
    if shape in ("separable", "noisy"):
        quality = 1.0 - sum(weight * abs(u[key] - optimum) for key, (optimum, weight) in SEPARABLE.items()) / 2
    elif shape == "interacting":
        cost = 0.0
        for (a, b), ((centre_a, centre_b), slope) in PAIRS.items():
            da, db = u[a] - centre_a, u[b] - centre_b
            norm = math.sqrt(1 + slope**2)
            along, across = (da + slope * db) / norm, (slope * da - db) / norm
            cost += ACROSS * abs(across) + ALONG * abs(along)
        quality = 1.0 - cost / INTERACTING_SCALE
    elif shape == "multimodal":
        quality = max(
            height - BASIN_WEIGHT * sum(abs(u[key] - centre) for key, centre in centres.items()) / 2
            for height, centres in BASINS
        )
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return OPTIMUM * quality


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name.startswith("optuna-"):
        kind = name.removeprefix("optuna-")
        if kind == "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        if kind == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        return optuna.samplers.GPSampler(seed=seed)
    return build_sampler(name, space(), seed=seed)


def confirmed_curve(true: list[float], noisy: list[float], shape: str, seed: int) -> list[float]:
    """After each k, the true fitness of the confirmed winner, by ``utils.evolution.trust``'s rule: the candidates are
    the ``CONFIRM`` children with the best noisy scores plus the base (child 0); each is scored by the mean of its
    ``CONFIRM_SEEDS`` fresh scores (drawn once per child), the base by the mean of all its runs (it was never
    selected)."""
    draws = [
        value + np.random.default_rng([seed, 98, number]).normal(0.0, NOISE_SD[shape], CONFIRM_SEEDS)
        for number, value in enumerate(true)
    ]
    score = [float(np.mean(runs)) for runs in draws]
    score[0] = float(np.mean([noisy[0], *draws[0]]))
    curve = []
    for k in range(1, len(true) + 1):
        candidates = {*np.argsort(-np.asarray(noisy[:k]), kind="stable")[:CONFIRM].tolist(), 0}
        curve.append(true[max(sorted(candidates), key=lambda number: score[number])])
    return curve


def search(
    sampler_name: str, shape: str, seed: int, children: int
) -> tuple[list[float], float, list[float], list[float]]:
    """One evolution of ``children`` children; returns the true fitness of the noisily-best child after each k
    (k = 1..children), the seconds the sampler spent per child, the true fitness of the confirmed winner after each
    k, and the best true fitness among the first k children (what the search found, whatever the pick)."""
    quiet_optuna()
    sampler = make_sampler(sampler_name, seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    if sampler_name.startswith("optuna-"):
        study.enqueue_trial(space().base_params())
    noise = np.random.default_rng([seed, 99])
    best_noisy, best_true, curve, spent = -math.inf, math.nan, [], 0.0
    trues, noisies = [], []
    for _ in range(children):
        start = time.perf_counter()
        trial = study.ask()
        hyp = suggest_hyp(trial, space())
        spent += time.perf_counter() - start
        trial.set_user_attr("hyp", hyp)
        getattr(sampler, "lineage", {}).pop(trial.number, None)
        true = true_fitness(shape, hyp)
        noisy = true + noise.normal(0.0, NOISE_SD[shape])
        start = time.perf_counter()
        study.tell(trial, noisy)
        spent += time.perf_counter() - start
        trues.append(true)
        noisies.append(noisy)
        if noisy > best_noisy:
            best_noisy, best_true = noisy, true
        curve.append(best_true)
    return curve, spent / children, confirmed_curve(trues, noisies, shape, seed), np.maximum.accumulate(trues).tolist()


def run_job(job: tuple[str, str, int, int]) -> tuple[str, str, int, list[float], float, list[float], list[float]]:
    sampler, shape, seed, children = job
    curve, seconds, confirmed, found = search(sampler, shape, child_seed(seed, 0), children)
    return sampler, shape, seed, curve, seconds, confirmed, found


def cell(values: np.ndarray) -> str:
    low, median, high = np.percentile(values, [25, 50, 75])
    return f"{median:.3f} [{low:.3f},{high:.3f}]"


def rising(change: np.ndarray) -> str:
    """How runs changed between two budgets: the median change, how many rose and fell, and the one-sided p of the
    Wilcoxon signed-rank test that they rose (runs that did not change carry no sign; p 1 when none changed)."""
    moved = change[change != 0]
    p = float(wilcoxon(moved, alternative="greater").pvalue) if len(moved) else 1.0
    return f"{np.median(change):+.3f} up {int((change > 0).sum())} down {int((change < 0).sum())} p={p:.0e}"


def print_tables(
    results: dict[tuple[str, str], list[list[float]]], shapes: list[str], samplers: list[str], budgets: list[int]
) -> None:
    """Per shape, a row per sampler: the cells at each budget, then how each run's pick changed between the last two
    budgets (``rising``: is the search still improving?)."""
    last = f"{budgets[-2]}->{budgets[-1]}" if len(budgets) > 1 else ""
    for shape in shapes:
        print(f"\n{shape}")
        print(f"{'sampler':<14}" + "".join(f"{f'k={k}':>22}" for k in budgets) + f"{last:>32}")
        for sampler in samplers:
            curves = results.get((sampler, shape))
            if not curves:
                continue
            cells = [
                cell(np.array([curve[k - 1] for curve in curves])) if len(curves[0]) >= k else "-" for k in budgets
            ]
            if last and len(curves[0]) >= budgets[-1]:
                cells.append(rising(np.array([curve[budgets[-1] - 1] - curve[budgets[-2] - 1] for curve in curves])))
            print(f"{sampler:<14}" + "".join(f"{text:>22}" for text in cells[: len(budgets)]) + "".join(
                f"{text:>32}" for text in cells[len(budgets) :]
            ))  # fmt: skip


def print_versus(
    results: dict[tuple[str, str], list[list[float]]], shapes: list[str], samplers: list[str], budgets: list[int],
    other: str,
) -> None:  # fmt: skip
    """Per shape, each sampler against ``other`` at each budget: the chance that one of its runs picks a better child
    than one of ``other``'s (Mann-Whitney U / (n m); 0.5 is a tie, 1 always better) and the one-sided p that it is
    better. Runs of two samplers share nothing but their seed, so they are compared as independent samples."""
    print(f"\nagainst {other}: P(a run beats a run of {other}), one-sided Mann-Whitney p")
    for shape in shapes:
        theirs = results.get((other, shape))
        if not theirs:
            continue
        print(f"\n{shape}")
        print(f"{'sampler':<14}" + "".join(f"{f'k={k}':>22}" for k in budgets))
        for sampler in samplers:
            ours = results.get((sampler, shape))
            if sampler == other or not ours:
                continue
            cells = []
            for k in budgets:
                if len(ours[0]) < k or len(theirs[0]) < k:
                    cells.append("-")
                    continue
                a, b = np.array([curve[k - 1] for curve in ours]), np.array([curve[k - 1] for curve in theirs])
                test = mannwhitneyu(a, b, alternative="greater")
                cells.append(f"{test.statistic / (len(a) * len(b)):.2f} p={test.pvalue:.0e}")
            print(f"{sampler:<14}" + "".join(f"{text:>22}" for text in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first..first+seeds-1 (e.g. a holdout set)")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--samplers", default=",".join((*OURS, *REFERENCES)))
    parser.add_argument("--gp-children", type=int, default=200, help="gp and optuna-gp are slow: their longest run")
    parser.add_argument("--gp-seeds", type=int, default=5, help="gp and optuna-gp are slow: their number of seeds")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--save", type=Path, default=None, help="append every finished run to this JSON-lines file")
    parser.add_argument("--load", type=Path, nargs="*", default=[], help="print tables from saved runs, run nothing")
    parser.add_argument("--versus", default=None, help="also compare every sampler with this one (e.g. classic)")
    args = parser.parse_args()
    shapes, samplers = args.shapes.split(","), args.samplers.split(",")
    budgets = [k for k in BUDGETS if k <= args.children] or [args.children]
    base = space().base_hyp
    print("base hyp true fitness: " + ", ".join(f"{shape} {true_fitness(shape, base):.3f}" for shape in shapes))
    seeds = "seeds as saved" if args.load else f"{args.seeds} seeds"
    print(f"optimum {OPTIMUM}; noise sd {NOISE_SD}; {len(space().genes)} evolved keys; {seeds}")
    print("cells: median [25th, 75th percentile] of the true fitness of the noisily-best child after k children")
    jobs = []
    for sampler in samplers:
        gp = sampler in ("gp", "optuna-gp")
        for shape in shapes:
            for seed in range(args.first_seed, args.first_seed + (args.gp_seeds if gp else args.seeds)):
                jobs.append((sampler, shape, seed, min(args.children, args.gp_children) if gp else args.children))
    results: dict[tuple[str, str], list[list[float]]] = {}
    confirmed: dict[tuple[str, str], list[list[float]]] = {}
    found: dict[tuple[str, str], list[list[float]]] = {}
    seconds: dict[str, list[float]] = {}
    if args.load:
        finished = [json.loads(line) for path in args.load for line in path.read_text().splitlines() if line.strip()]
        samplers = list(dict.fromkeys(run[0] for run in finished if run[0] in samplers))
    else:
        finished = []
        with multiprocessing.Pool(args.processes) as pool:
            for run in pool.imap_unordered(run_job, jobs):
                finished.append(run)
                if args.save:
                    with args.save.open("a") as file:
                        file.write(json.dumps(run) + "\n")
    # Older saved runs have 5 fields (before the confirmed curve) or 6 (before the best true fitness found).
    for sampler, shape, _seed, curve, spent, *rest in finished:
        if shape in shapes:
            results.setdefault((sampler, shape), []).append(curve)
            seconds.setdefault(sampler, []).append(spent)
            for table, extra in zip((confirmed, found), rest):
                table.setdefault((sampler, shape), []).append(extra)
    print_tables(results, shapes, samplers, budgets)
    if args.versus:
        print_versus(results, shapes, samplers, budgets, args.versus)
    if confirmed:
        print(
            f"\nconfirmed winner (what the evolution hands over by default: the best mean of {CONFIRM_SEEDS} fresh "
            f"runs among the top {CONFIRM} by one run and the base; {(CONFIRM + 1) * CONFIRM_SEEDS} runs more than k "
            "children)"
        )
        print_tables(confirmed, shapes, samplers, budgets)
    if found:
        print(
            "\nbest child found (the best true fitness among the first k children, whatever the pick: a low cell "
            "here is the search's fault, a cell far above the first table's is the pick's)"
        )
        print_tables(found, shapes, samplers, budgets)
    print("\nsampler seconds per child (median over runs): " + ", ".join(
        f"{sampler} {np.median(seconds[sampler]):.3f}" for sampler in samplers
    ))  # fmt: skip


if __name__ == "__main__":
    main()
