"""The evolution's flags (train.py --evolve and evolve.py) and the ``EvolveOptions`` they build."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from utils.cli.common_cli import LOGGER, RUNS
from utils.device import select_device, trains_in_bf16
from utils.evolution.evaluations import TrustPlan
from utils.evolution.options import EvolveOptions
from utils.evolution.pruning import DEFAULT_PRUNER, PRUNERS
from utils.evolution.sampler import PARENT_SELECTIONS, SAMPLERS
from utils.evolution.search_space import DEFAULT_META, load_meta

DEFAULT_CHILDREN = 300  # a bare --evolve, as in yolov5


def add_evolve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add --evolve [N], --meta, --freeze-hyp, --sampler, --storage, --evolve-from, --prune, --save-children,
    --parent-selection, then the trust flags."""
    group = parser.add_argument_group("hyperparameter evolution")
    group.add_argument(
        "--evolve",
        type=int,
        nargs="?",
        const=DEFAULT_CHILDREN,
        default=None,
        metavar="N",
        help=f"evolve hyperparameters for N children in total across all workers (bare flag: {DEFAULT_CHILDREN})",
    )
    group.add_argument("--meta", type=Path, default=DEFAULT_META, help="evolution search space (gain, low, high)")
    group.add_argument("--freeze-hyp", default="", metavar="K1,K2", help="hyp keys to keep fixed while evolving")
    search = "ga (yolov5 moves screened by a model of the finished children), classic (yolov5's exact rule), gp, ..."
    group.add_argument("--sampler", choices=SAMPLERS, default="ga", help=search)
    group.add_argument("--storage", default=None, help="study database URL (postgresql://...); default: journal file")
    group.add_argument("--evolve-from", type=Path, default=None, help="import a yolov5 evolve.csv as finished children")
    group.add_argument(
        "--prune",
        nargs="?",
        const=DEFAULT_PRUNER,
        default="none",
        choices=PRUNERS,
        metavar="NAME",
        help=f"stop lagging children early: {', '.join(PRUNERS)} (bare flag: {DEFAULT_PRUNER})",
    )
    group.add_argument("--save-children", action="store_true", help="keep every child's files under children/")
    parents = "classic only (ga mutates the base first): one fitness-weighted parent (yolov5) or the top 5's mean"
    group.add_argument("--parent-selection", choices=PARENT_SELECTIONS, default="single", help=parents)
    add_trust_arguments(parser)
    return parser


# (flag, default, metavar, help): the integer flags that plan the extra evaluations (noise, confirmation, fidelity).
TRUST_FLAGS = (
    ("--confirm", 3, "K", "retrain the top K children with fresh seeds once all children are done (0: skip)"),
    ("--confirm-seeds", 2, "S", "fresh training seeds per confirmed child; the base hyp gets as many (noise)"),
    ("--fidelity", 0, "K", "retrain K children, spanning the fitness range, at full length: does short predict long?"),
    ("--fidelity-epochs", None, "E", "full length for --fidelity (default: 3x --epochs)"),
)


def add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --confirm, --confirm-seeds, --fidelity, --fidelity-epochs."""
    group = parser.add_argument_group("can I trust the result?")
    for flag, default, metavar, text in TRUST_FLAGS:
        group.add_argument(flag, type=int, default=default, metavar=metavar, help=text)


def parse_freeze(text: str) -> tuple[str, ...]:
    """``"lr0, mosaic"`` -> ``("lr0", "mosaic")``."""
    return tuple(key.strip() for key in text.split(",") if key.strip())


def build_evolve_options(args: argparse.Namespace) -> EvolveOptions:
    """The evolution's options from train.py's flags; --meta is loaded (and checked) here."""
    if args.sampler == "gp" and args.prune != "none":
        # Optuna's GPSampler ignores pruned trials and draws at random until 10 children have completed: with
        # halving that was all of a benchmark run (223 children, 8 completed: benchmarks/evolve_pruning.py)
        LOGGER.warning(
            f"--sampler gp learns from completed children only: with --prune {args.prune} it draws at random until "
            "10 children have completed (the default --sampler ga learns from pruned children too)"
        )
    project = Path(args.project)
    if project.resolve() == (RUNS / "train").resolve():
        project = RUNS / "evolve"  # evolve reuses runs/evolve/<name>, so that workers share it
    return EvolveOptions(
        n=args.evolve,
        run_dir=project / args.name,
        study_name=args.name,
        meta=load_meta(args.meta),
        storage=args.storage,
        sampler=args.sampler,
        seed=args.seed,
        freeze=parse_freeze(args.freeze_hyp),
        prune=args.prune,
        evolve_from=args.evolve_from,
        parent_selection=args.parent_selection,
        save_children=args.save_children,
        plots=not args.noplots,
        trust=TrustPlan(args.confirm, args.confirm_seeds, args.fidelity, args.fidelity_epochs or 3 * args.epochs),
    )


def evolution_setup(args: argparse.Namespace, device: torch.device | None = None) -> dict[str, object]:
    """What every child of one study must share: a worker started with other values may not join it.

    ``cpu_fast`` is recorded as what takes effect, bf16 training (a CPU that runs it natively): on CUDA, or on a CPU
    without native bf16, the flag changes no figure, so such workers share a study with --no-cpu-fast ones."""
    device = device if device is not None else select_device(args.device)
    bf16 = trains_in_bf16(args.cpu_fast, device)
    keys = {"data": str(args.data), "cfg": str(args.cfg), "img": args.imgsz, "epochs": args.epochs}
    start = {"weights": str(args.weights), "freeze": list(args.freeze)}  # children fine-tuned alike
    # The training modes change what a child trains on or is scored on (one class), so fitness values from
    # different modes are not comparable (nor are bf16 and float32 children: --cpu-fast); --save-period is not
    # here, children save no epoch files.
    modes = {"single_cls": args.single_cls, "rect": args.rect, "multi_scale": args.multi_scale,
             "image_weights": args.image_weights, "cpu_fast": bf16}  # fmt: skip
    return {**keys, "optimizer": str(args.optimizer), "nbs": args.nbs, **start, **modes}
