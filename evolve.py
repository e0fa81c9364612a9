"""Hyperparameter evolution entry point: ``python evolve.py ... --evolve N`` is ``python train.py ... --evolve N``.

Library use: ``evolve.run(objective, base_hyp, meta, n, run_dir=...)`` (see utils/evolution/runner.py).
"""

from __future__ import annotations

import sys

from utils.errors import run_cli
from utils.evolution import ChildContext, add_evolve_arguments, evolve_options, load_meta, run, validate_search_space

__all__ = [
    "ChildContext",
    "add_evolve_arguments",
    "evolve_options",
    "load_meta",
    "main",
    "run",
    "validate_search_space",
]


def main(argv: list[str] | None = None) -> None:
    """Parse train.py's options, force evolution (300 children unless --evolve N), and hand over to train.main."""
    import train  # lazily: training pulls in torch and the data pipeline

    args = train.parse_args(argv)
    if args.evolve is None:
        args.evolve = 300
    train.main(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
