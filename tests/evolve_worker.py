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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("n", type=int)
    parser.add_argument("--storage", default=None)
    parser.add_argument("--study-name", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-child", type=int, default=None, help="this child sleeps until killed")
    parser.add_argument("--started-file", type=Path, default=None, help="touched when the hanging child starts")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from utils.evolution import load_meta, run
    from utils.training.hyp import load_hyp

    def objective(hyp: dict[str, float], child: object) -> dict[str, float]:
        if child.index == args.hang_child:
            args.started_file.touch()
            time.sleep(600)
        return synthetic_metrics(hyp)

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
    )


if __name__ == "__main__":
    main()
