"""Evolution command-line options: the flags train.py and evolve.py share, and their translation into run() kwargs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from utils.evolution.sampler import PARENT_SELECTIONS, SAMPLERS
from utils.evolution.search_space import DEFAULT_META

DEFAULT_CHILDREN = 300  # a bare --evolve, as in yolov5


def add_evolve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add --evolve [N], --meta, --freeze-hyp, --sampler, --storage, --evolve-from, --prune, --save-children,
    --parent-selection."""
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
    group.add_argument(
        "--freeze-hyp", type=str, default="", metavar="K1,K2", help="hyp keys to keep fixed while evolving"
    )
    group.add_argument("--sampler", choices=SAMPLERS, default="ga", help="search algorithm (ga = yolov5 mutation)")
    group.add_argument(
        "--storage", type=str, default=None, help="study database URL (postgresql://...); default: journal file"
    )
    group.add_argument("--evolve-from", type=Path, default=None, help="import a yolov5 evolve.csv as finished children")
    group.add_argument("--prune", action="store_true", help="stop children that lag the median early")
    group.add_argument("--save-children", action="store_true", help="keep every child's files under children/")
    group.add_argument(
        "--parent-selection",
        choices=PARENT_SELECTIONS,
        default="single",
        help="ga: one fitness-weighted parent (yolov5 default) or the fitness-weighted mean of the top 5",
    )
    return parser


def parse_freeze(text: str) -> tuple[str, ...]:
    """``"lr0, mosaic"`` -> ``("lr0", "mosaic")``."""
    return tuple(key.strip() for key in text.split(",") if key.strip())


def evolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``utils.evolution.run`` that the evolution flags set (meta loaded from --meta)."""
    from utils.evolution.search_space import load_meta

    return {
        "meta": load_meta(args.meta),
        "n": args.evolve,
        "storage": args.storage,
        "sampler": args.sampler,
        "freeze": parse_freeze(args.freeze_hyp),
        "prune": args.prune,
        "evolve_from": args.evolve_from,
        "parent_selection": args.parent_selection,
        "save_children": args.save_children,
    }
