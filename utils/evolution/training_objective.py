"""``train.py --evolve``: the evolution objective that trains one child per hyp on data prepared once per worker."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from utils.device import distributed_env, select_device
from utils.errors import UserError
from utils.evolution.cli import evolve_options
from utils.evolution.runner import ChildContext, run
from utils.evolution.storage import check_storage
from utils.training.hyp import load_hyp

LOGGER = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TRAIN_PROJECT = ROOT / "runs" / "train"


def evolve_run_dir(args: argparse.Namespace) -> Path:
    """runs/evolve/<name> unless --project was given; evolve always reuses the folder so that workers share it."""
    project = Path(args.project)
    if project.resolve() == DEFAULT_TRAIN_PROJECT.resolve():
        project = ROOT / "runs" / "evolve"
    return project / args.name


def choose_cache(args: argparse.Namespace) -> str | None:
    """--cache as given; otherwise RAM when the resized images fit, so children never decode a file twice."""
    return args.cache if args.cache else "ram"


def evolve_training(args: argparse.Namespace) -> None:
    """Run this worker's share of the evolution described by the parsed train.py options."""
    from train import build_train_options
    from utils.data.prepared import prepare_data
    from utils.training.checkpoint import load_checkpoint
    from utils.training.trainer import check_run, train

    if distributed_env()[2] > 1:
        raise UserError("--evolve runs one process per device, not under torchrun: start one worker per --device")
    if args.resume:
        raise UserError("--evolve resumes by rerunning the same command; drop --resume")
    device = select_device(args.device)
    base_hyp = load_hyp(args.hyp)
    run_dir = evolve_run_dir(args)
    evolution = evolve_options(args)  # checks --meta and the flags before any data work
    check_storage(run_dir, args.storage)
    if args.weights:
        load_checkpoint(args.weights)  # a missing or corrupt file fails now, not after the dataset scan
    try:
        data = prepare_data(args.data, args.imgsz, choose_cache(args))
    except UserError as error:
        if args.cache or "memory" not in str(error):
            raise
        LOGGER.info(f"not caching images in RAM ({error}); children will read them from disk")
        data = prepare_data(args.data, args.imgsz, None)
    base_options = build_train_options(args, device, save_dir=None, rank=-1, world_size=1)
    base_options = dataclasses.replace(base_options, plots=False, show_progress=False)
    check_run(base_hyp, base_options, data)  # a bad flag fails here once, not as a failed child each time

    def objective(hyp: dict[str, float], child: ChildContext) -> dict[str, float]:
        # Every child trains with the same --seed (common random numbers: the same batches and augmentation draws),
        # so fitness differences come from the hyp rather than from luck; the mutation itself uses child.seed.
        save_dir = child.run_dir if evolution["save_children"] else None
        # Like yolov5, children validate only their final epoch, unless pruning needs a fitness every epoch.
        options = dataclasses.replace(base_options, save_dir=save_dir, validate_every_epoch=args.prune)
        report = (lambda epoch, metrics: child.report(epoch, metrics["fitness"])) if args.prune else None
        return train(hyp, options, data, on_epoch_end=report)

    run(
        objective, base_hyp, run_dir=run_dir, study_name=args.name, seed=args.seed,
        fitness_weights=base_options.fitness_weights, plots=not args.noplots, setup=evolution_setup(args), **evolution,
    )  # fmt: skip
    LOGGER.info(f"evolution views in {run_dir}: evolve.csv, hyp_evolve.yaml, evolve.png, fitness.png")


def evolution_setup(args: argparse.Namespace) -> dict[str, object]:
    """What every child of one study must share: a worker started with other values may not join it."""
    return {
        "data": str(args.data),
        "cfg": str(args.cfg),
        "img": args.imgsz,
        "epochs": args.epochs,
        "optimizer": str(args.optimizer),
        "nbs": args.nbs,
    }
