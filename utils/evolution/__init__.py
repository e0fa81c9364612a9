"""Hyperparameter evolution: a shared Optuna study searched by the yolov5 genetic mutation or Optuna's samplers.

``run(objective, base_hyp, meta, n, run_dir=...)`` evolves any ``hyp -> metrics`` objective; it knows nothing about
training. ``utils.evolution.training_objective`` is the one adapter that evolves a training run.
"""

from utils.evolution.child import ChildContext
from utils.evolution.options import EvolveOptions
from utils.evolution.runner import run
from utils.evolution.search_space import GeneSpec, SearchSpace, load_meta, validate_search_space

__all__ = [
    "ChildContext",
    "EvolveOptions",
    "GeneSpec",
    "SearchSpace",
    "load_meta",
    "run",
    "validate_search_space",
]
