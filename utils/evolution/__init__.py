"""Hyperparameter evolution: a shared Optuna study searched by the yolov5 genetic mutation or Optuna's samplers."""

from utils.evolution.cli import add_evolve_arguments, evolve_options
from utils.evolution.runner import ChildContext, run
from utils.evolution.search_space import GeneSpec, SearchSpace, load_meta, validate_search_space

__all__ = [
    "ChildContext",
    "GeneSpec",
    "SearchSpace",
    "add_evolve_arguments",
    "evolve_options",
    "load_meta",
    "run",
    "validate_search_space",
]
