"""One evolution worker process for the multi-process tests: an instant synthetic objective on the real hyp."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def synthetic_metrics(hyp: dict[str, float]) -> dict[str, float]:
    """Metrics whose fitness peaks at lr0=3e-3, mixup=0.3, momentum=0.9 (a pure function of the hyp)."""
    score = 0.9 - 0.1 * abs(math.log10(hyp["lr0"] / 3e-3)) - 0.3 * abs(hyp["mixup"] - 0.3)
    score -= 0.5 * abs(hyp["momentum"] - 0.9)
    return {
        "metrics/precision": 0.5,
        "metrics/recall": 0.4,
        "metrics/mAP_0.5": score + 0.05,
        "metrics/mAP_0.5:0.95": score,
        "val/box_loss": 0.05,
        "val/obj_loss": 0.02,
        "val/cls_loss": 0.01,
    }


def noisy_metrics(hyp: dict[str, float], train_seed: int, noise: float, epochs: int | None = None) -> dict[str, float]:
    """``synthetic_metrics`` plus seed noise of sd ``noise`` (a pure function of the hyp and the training seed);
    longer runs (``epochs``) score a little higher, keeping the order."""
    import numpy as np

    metrics = synthetic_metrics(hyp)
    key = [train_seed, *(round(value * 1e6) for value in hyp.values())]
    shift = noise * float(np.random.default_rng([abs(part) for part in key]).standard_normal()) + 0.01 * bool(epochs)
    return {**metrics, "metrics/mAP_0.5": metrics["metrics/mAP_0.5"] + shift,
            "metrics/mAP_0.5:0.95": metrics["metrics/mAP_0.5:0.95"] + shift}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("n", type=int)
    parser.add_argument("--storage", default=None)
    parser.add_argument("--study-name", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-child", type=int, default=None, help="this child sleeps until killed")
    parser.add_argument("--started-file", type=Path, default=None, help="touched when the hanging child starts")
    parser.add_argument("--hang-evaluation", type=int, default=None, help="a repeat of this child sleeps until killed")
    parser.add_argument("--confirm", type=int, default=0)
    parser.add_argument("--confirm-seeds", type=int, default=0)
    parser.add_argument("--fidelity", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.0, help="sd of seed noise added to the fitness")
    parser.add_argument("--seconds", type=float, default=0.0, help="each run takes this long")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from utils.evolution import load_meta, run
    from utils.evolution.evaluations import TrustPlan
    from utils.training.hyp import load_hyp

    def objective(hyp: dict[str, float], child: object) -> dict[str, float]:
        repeat = child.train_seed != args.seed
        if (child.index == args.hang_child and not repeat) or (child.index == args.hang_evaluation and repeat):
            args.started_file.touch()
            time.sleep(600)
        time.sleep(args.seconds)
        return noisy_metrics(hyp, child.train_seed, args.noise, child.epochs)

    run(
        objective,
        load_hyp(),
        load_meta(),
        args.n,
        run_dir=args.run_dir,
        storage=args.storage,
        study_name=args.study_name,
        seed=args.seed,
        plots=False,
        trust=TrustPlan(args.confirm, args.confirm_seeds, args.fidelity, 9),
        poll_seconds=0.2,
    )


if __name__ == "__main__":
    main()
