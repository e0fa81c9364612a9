"""The evolution's flags (train.py --evolve and evolve.py) and the ``EvolveOptions`` they build."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from utils.cli.common_cli import LOGGER, RUNS, scheduler_params
from utils.device import select_device, trains_in_bf16
from utils.errors import UserError
from utils.evaluation.fitness import DEFAULT_FITNESS_WEIGHTS, parse_fitness_weights
from utils.evolution.evaluations import TrustPlan
from utils.evolution.launcher import WorkerSpec, cpu_threads
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
    per_device = "start K workers on each --device (several CUDA devices: one each by default), all in one study"
    group.add_argument("--children-per-device", type=int, default=1, metavar="K", help=per_device)
    # set by a command that starts several workers, on each of them: the pid of that command
    group.add_argument("--worker-of", type=int, default=None, help=argparse.SUPPRESS)
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
        parent_pid=args.worker_of,
    )


def evolution_devices(args: argparse.Namespace) -> list[str]:
    """The devices ``--device`` lists for evolution workers: "cpu", or CUDA indices ("0,1" -> ["0", "1"])."""
    spec = str(args.device).strip().lower().replace("cuda:", "").replace(" ", "")
    if spec == "cpu" or (spec in ("", "cuda") and not torch.cuda.is_available()):
        return ["cpu"]
    return spec.split(",") if spec not in ("", "cuda") else ["0"]


def evolution_workers(args: argparse.Namespace, argv: list[str], script: Path, run_dir: Path) -> list[WorkerSpec]:
    """The workers one command starts: ``--children-per-device`` on each device ``--device`` lists; empty when this
    process is the one worker (a single device and K = 1, as with the nohup loop, or a worker itself).

    Each runs ``script`` with the same command line, its own ``--device`` and ``--worker-of`` this process; CPU
    workers share the cores out (torch's intra-op threads = cores / workers, at least 1)."""
    if args.worker_of is not None:
        return []
    devices, per_device = evolution_devices(args), args.children_per_device
    if len(set(devices)) < len(devices):
        raise UserError(f"--device {args.device} names a device twice; for several workers on one device, use "
                        "--children-per-device K")  # fmt: skip
    if len(devices) == 1 and per_device == 1:
        return []
    select_device(",".join(devices))  # every listed CUDA device exists: one error now, not one per worker
    own = [*without_options(argv, ("--device", "--children-per-device")), "--evolve", str(args.evolve)]
    threads = cpu_threads(per_device) if devices == ["cpu"] else None
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}
    return [
        WorkerSpec(
            f"{device}_{k}",
            [sys.executable, str(script), *own, "--device", device, "--worker-of", str(os.getpid())],
            env,
            run_dir / f"worker_{device}_{k}.log",
        )  # fmt: skip
        for device in devices
        for k in range(per_device)
    ]


def without_options(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` less each of ``options`` and its one value (``--device 0,1`` or ``--device=0,1``)."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in options:
            skip = True
        elif not token.startswith(tuple(f"{option}=" for option in options)):
            kept.append(token)
    return kept


# train.py options that may differ between the workers of one study: where and how fast a worker runs, where the
# study and its views live, how many children it makes and how it picks the next one, and options that change
# nothing in a child (children save no checkpoints, validate as the evolution says, and never resume or run DDP).
# Every other option changes what a child trains or how it is scored, so it is recorded on the study and must match.
MAY_DIFFER = frozenset({
    "device", "workers", "cache",
    "name", "project", "exist_ok", "storage", "noplots", "save_children",
    "evolve", "evolve_from", "sampler", "parent_selection",
    "nosave", "noval", "save_period", "resume", "sync_bn", "local_rank", "children_per_device", "worker_of",
})  # fmt: skip
# Recorded in another form: the hyp's values, the search space (--meta, --freeze-hyp), the seed, the pruner and the
# seeds per confirmation by the evolution itself (utils.evolution.runner); the schedule flags as the schedule they
# resolve to, --fitness as its weights, --cpu-fast as whether children train in bf16. Not options: how a value was
# given (``*_given``).
RECORDED_AS = {
    "hyp": "hyp", "meta": "search_space", "freeze_hyp": "search_space", "seed": "seed", "prune": "pruner",
    "confirm_seeds": "confirm_seeds", "scheduler": "scheduler", "cos_lr": "scheduler", "lr_step_size": "scheduler",
    "lr_milestones": "scheduler", "lr_gamma": "scheduler", "lr_patience": "scheduler", "min_lr_epochs": "scheduler",
    "fitness": "fitness", "cpu_fast": "cpu_fast", "imgsz": "img",
}  # fmt: skip
NOT_OPTIONS = ("cfg_given", "optimizer_given", "typed_flags")


def evolution_setup(args: argparse.Namespace, device: torch.device | None = None) -> dict[str, object]:
    """What every child of one study must share: a worker started with other values may not join it. Every option
    outside ``MAY_DIFFER``, as json-safe values under its name (``imgsz`` as ``img``, as recorded from the start).

    ``cpu_fast`` is recorded as what takes effect, bf16 training (a CPU that runs it natively): on CUDA, or on a CPU
    without native bf16, the flag changes no figure, so such workers share a study with --no-cpu-fast ones."""
    device = device if device is not None else select_device(args.device)
    setup = {
        key: json_safe(value)
        for key, value in vars(args).items()
        if key not in MAY_DIFFER and key not in RECORDED_AS and key not in NOT_OPTIONS
    }
    fitness = parse_fitness_weights(args.fitness) if args.fitness else DEFAULT_FITNESS_WEIGHTS
    resolved = {"img": args.imgsz, "scheduler": scheduler_params(args), "fitness": dict(fitness),
                "cpu_fast": trains_in_bf16(args.cpu_fast, device)}  # fmt: skip
    return {**setup, **resolved, "optimizer": str(args.optimizer)}


def json_safe(value: object) -> object:
    """``value`` as the study's json keeps it: tuples as lists, paths and other objects as strings."""
    if isinstance(value, tuple | list):
        return [json_safe(item) for item in value]
    return value if isinstance(value, bool | int | float | str | type(None)) else str(value)
