"""Seconds a sampler spends on one child after N completed children (the case of an import of a large evolve.csv).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/sampler_cost.py
    python benchmarks/sampler_cost.py --samplers gp --children 200,400,800 --repeats 2

The study holds N children drawn at random over the default search space (24 keys) with random fitness; then a
fresh sampler draws child N. `gp` fits every completed child (no cap); `ga` fits at most 300 (spread by number).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.evolution import load_meta  # noqa: E402
from utils.evolution.child import suggest_hyp  # noqa: E402
from utils.evolution.sampler import build_sampler, quiet_optuna  # noqa: E402
from utils.evolution.search_space import validate_search_space  # noqa: E402
from utils.training.hyp import load_hyp  # noqa: E402


def seconds_for_next_child(sampler: str, children: int, seed: int) -> float:
    space = validate_search_space(load_hyp(), load_meta())
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    fitness = np.random.default_rng(seed)
    for _ in range(children):
        trial = study.ask(space.distributions())
        study.tell(trial, float(fitness.random()))
    study.sampler = build_sampler(sampler, space, seed=seed)
    start = time.perf_counter()
    suggest_hyp(study.ask(), space)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", default="gp,ga")
    parser.add_argument("--children", default="200,400,800")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    quiet_optuna()
    for sampler in args.samplers.split(","):
        for children in map(int, args.children.split(",")):
            times = [seconds_for_next_child(sampler, children, seed) for seed in range(args.repeats)]
            print(f"{sampler:<6} after {children:>4} children: " + ", ".join(f"{t:.2f} s" for t in times))


if __name__ == "__main__":
    main()
