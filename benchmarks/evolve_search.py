"""Compare evolution samplers (ga, tpe, cmaes, random) on synthetic objectives shaped like the meta table.

Every hyp key is searched, but only a few matter (one of them starts at 0, where yolov5's multiplicative step is
stuck); each child's score carries measurement noise, as real children do. For each sampler and seed we record,
after k children, the true (noise-free) fitness of the child that the noisy scores rank best, which is what a user
would pick. ``ga-classic`` is the ga without the zero-value floor (yolov5's exact rule), for reference;
``ga@0.1`` runs the ga with another floor fraction.

    python benchmarks/evolve_search.py --children 100 --seeds 5
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.evolution import load_meta, run  # noqa: E402
from utils.evolution import sampler as sampler_module  # noqa: E402
from utils.training.hyp import load_hyp  # noqa: E402

# The keys that matter: optimum and weight. mixup's base value is 0.
OPTIMA = {"lr0": (0.004, 0.25), "momentum": (0.9, 0.15), "mixup": (0.25, 0.2), "scale": (0.7, 0.15), "box": (0.08, 0.1)}
NOISE_SD = 0.005  # about half a mAP point, below the run-to-run noise of real training
DEFAULT_FLOOR = sampler_module.ZERO_FLOOR_FRACTION


@functools.cache
def ranges() -> dict[str, float]:
    return {key: spec.high - spec.low for key, spec in load_meta().items()}


def true_fitness(hyp: dict[str, float]) -> float:
    """1 at the optimum; each key costs its weight times its distance (log distance for lr0, relative for others)."""
    cost = 0.0
    for key, (optimum, weight) in OPTIMA.items():
        if key == "lr0":
            distance = abs(math.log10(hyp[key] / optimum)) / 4  # the lr0 range spans 4 decades
        else:
            distance = abs(hyp[key] - optimum) / ranges()[key]
        cost += weight * distance
    return 1.0 - cost


def make_objective(seed: int):
    def objective(hyp: dict[str, float], child) -> dict[str, float]:
        noise = np.random.default_rng([seed, child.index, 99]).normal(0.0, NOISE_SD)
        score = true_fitness(hyp) + noise
        return {"metrics/mAP_0.5": score, "metrics/mAP_0.5:0.95": score}

    return objective


def best_curve(study, checkpoints: list[int]) -> list[float]:
    """True fitness of the noisily-best child among the first k children, for each k; then its mixup (optimum 0.25)."""
    trials = sorted((t for t in study.trials if t.value is not None), key=lambda t: t.number)
    curve = []
    for k in checkpoints:
        chosen = max(trials[:k], key=lambda t: t.value)
        curve.append(true_fitness(chosen.user_attrs["hyp"]))
    return [*curve, chosen.user_attrs["hyp"]["mixup"]]


def search(sampler: str, seed: int, children: int, checkpoints: list[int]) -> list[float]:
    """One evolution; ``ga@F`` is the ga with a zero-value floor of F * (high - low) instead of the default."""
    name, _, floor = sampler.partition("@")
    sampler_module.ZERO_FLOOR_FRACTION = 0.0 if sampler == "ga-classic" else float(floor or DEFAULT_FLOOR)
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        study = run(
            make_objective(seed),
            load_hyp(),
            load_meta(),
            children,
            run_dir=Path(folder) / f"{sampler}-{seed}",
            sampler="ga" if name == "ga-classic" else name,
            seed=seed,
            plots=False,
        )
        return best_curve(study, checkpoints)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--samplers", default="ga,ga-classic,tpe,cmaes,random")
    args = parser.parse_args()
    checkpoints = sorted({k for k in (10, 25, 50, 100, 200, 300, args.children) if k <= args.children})
    print(f"base hyp true fitness {true_fitness(load_hyp()):.4f}; noise sd {NOISE_SD}; {args.seeds} seeds")
    print(f"{'sampler':<12}" + "".join(f"{f'k={k}':>18}" for k in checkpoints) + f"{'mixup at end':>18}")
    for sampler in args.samplers.split(","):
        curves = np.array([search(sampler, seed, args.children, checkpoints) for seed in range(args.seeds)])
        cells = [f"{mean:.4f} ± {spread:.4f}" for mean, spread in zip(curves.mean(0), curves.std(0))]
        print(f"{sampler:<12}" + "".join(f"{cell:>18}" for cell in cells), flush=True)


if __name__ == "__main__":
    main()
