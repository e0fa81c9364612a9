"""The command line, and only here: every entry point's flags, their checks, and the ``build_*`` factories that turn
parsed flags into the library's explicit option objects. No library module sees an ``argparse.Namespace``.

``common_cli`` holds the parser class and the checks every script shares; ``train_cli`` train.py's flags;
``evolve_cli`` the evolution's; ``infer_cli`` val.py's and detect.py's. Entry scripts use ``from utils import cli``.
"""

from utils.cli.common_cli import (
    FLAG_MINIMUMS,
    ROOT,
    RUNS,
    CliParser,
    StoreGiven,
    add_run_folder_arguments,
    check_flags,
    check_img_size,
)
from utils.cli.evolve_cli import (
    DEFAULT_CHILDREN,
    TRUST_FLAGS,
    add_evolve_arguments,
    add_trust_arguments,
    build_evolve_options,
    evolution_setup,
    evolution_workers,
    parse_freeze,
)
from utils.cli.infer_cli import build_annotate_options, detect_parser, val_parser
from utils.cli.train_cli import (
    add_schedule_arguments,
    build_train_options,
    build_training_job,
    load_train_hyp,
    parse_train_args,
    recorded_options,
    resumed_args,
    scheduler_params,
    train_parser,
)

__all__ = [
    "DEFAULT_CHILDREN", "FLAG_MINIMUMS", "ROOT", "RUNS", "TRUST_FLAGS", "CliParser", "StoreGiven",
    "add_evolve_arguments", "add_run_folder_arguments", "add_schedule_arguments", "add_trust_arguments",
    "build_annotate_options", "build_evolve_options", "build_train_options", "build_training_job", "check_flags",
    "check_img_size", "detect_parser", "evolution_setup", "evolution_workers", "load_train_hyp", "parse_freeze",
    "parse_train_args", "recorded_options", "resumed_args", "scheduler_params", "train_parser", "val_parser",
]  # fmt: skip
