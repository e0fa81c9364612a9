"""Hyperparameter evolution: ``python evolve.py --data coco128.yaml --evolve N`` (300 children without N).

It takes train.py's flags and does what ``python train.py --evolve`` does. The library behind it evolves any
objective: ``from utils.evolution import run`` (see utils/evolution/README.md).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from utils import cli
from utils.errors import run_cli

TRAIN_PY = Path(__file__).resolve().parent / "train.py"  # what each worker of a --children-per-device command runs


def main(argv: list[str] | None = None) -> None:
    """Parse train.py's options, evolve (300 children unless --evolve N)."""
    from utils.evolution.training_objective import evolve_training

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = cli.parse_train_args(argv, description=__doc__)
    if args.evolve is None:
        args.evolve = cli.DEFAULT_CHILDREN
    cli.check_flags(args)
    evolution, job = cli.build_evolve_options(args), cli.build_training_job(args)
    workers = cli.evolution_workers(args, sys.argv[1:] if argv is None else argv, TRAIN_PY, evolution.run_dir)
    evolve_training(evolution, job, workers)


if __name__ == "__main__":
    sys.exit(run_cli(main))
