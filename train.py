"""Train a YOLOv5-style detector: ``python train.py --data coco128.yaml``; add ``--evolve [N]`` to evolve its hyp.

With no arguments it trains the nano model on the built-in shapes dataset (generated on first use) at 256 px,
a run sized to finish on a 2-core CPU in under 15 minutes. A data yaml may recommend its own values for some
options under ``defaults:`` (shapes.yaml does); they replace the built-in defaults, never what the command gives.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from utils import cli
from utils.device import distributed_env, select_device
from utils.errors import run_cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return cli.parse_train_args(argv, description=__doc__)


def main(args: argparse.Namespace, argv: list[str] | None = None) -> None:
    """Train, or evolve with ``--evolve``; ``argv`` (default: this process's) is what evolution workers are given."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cli.check_flags(args)
    if args.evolve is not None:
        evolve(args, sys.argv[1:] if argv is None else argv)
        return
    from utils.training.launch import TrainJob, claim_run_to_resume, resume_checkpoint_path, resume_state, run_training

    rank, local_rank, world_size = distributed_env()
    hyp, lock, run_dir = None, None, Path(args.project) / args.name
    if args.resume:
        checkpoint_path = resume_checkpoint_path(args.resume, cli.RUNS / "train")
        if rank in (-1, 0):
            lock = claim_run_to_resume(checkpoint_path)
        recorded, hyp = resume_state(checkpoint_path)
        args, run_dir = cli.resumed_args(args, checkpoint_path, recorded), checkpoint_path.parent.parent
    device = select_device(args.device, local_rank)
    hyp = hyp or cli.load_train_hyp(args)  # a hyp file may name the optimizer: before the options are built
    options = cli.build_train_options(args, device, rank, world_size)  # checks the flags before any data work
    run_training(TrainJob(hyp, options, args.data, args.imgsz, args.cache, run_dir, args.exist_ok), lock)


def evolve(args: argparse.Namespace, argv: list[str]) -> None:
    """This process evolves, or (several devices, --children-per-device) starts the workers that do."""
    from utils.evolution.training_objective import evolve_training

    evolution, job = cli.build_evolve_options(args), cli.build_training_job(args)
    evolve_training(evolution, job, cli.evolution_workers(args, argv, Path(__file__).resolve(), evolution.run_dir))


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(parse_args())))
