"""The pruners behind ``--prune``: which children stop early, judged on the fitness they report after each epoch.

A child reports ``child.report(step, fitness)`` with ``step`` = epochs trained so far (1, 2, ... ``steps``).
``median`` stops a child whose fitness lags the median of earlier children at the same step; ``halving``
(successive halving) and ``hyperband`` let only the best 1/``reduction_factor`` of the children that reached a rung
(``first_rung`` epochs, ``first_rung`` x factor, ...) train on. ``benchmarks/evolve_pruning.py`` measured the
defaults.
"""

from __future__ import annotations

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner, SuccessiveHalvingPruner
from optuna.study import Study
from optuna.trial import FrozenTrial

PRUNERS = ("none", "median", "halving", "hyperband")
DEFAULT_PRUNER = "median"  # bare --prune, as before the names existed
MEDIAN_STARTUP_CHILDREN = 5  # children that always finish before the median judges anyone
MEDIAN_WARMUP_EPOCHS = 2  # the first epoch is never judged: its fitness says little
FIRST_RUNG_EPOCHS = 1  # halving and hyperband: the first rung; the next ones are x REDUCTION_FACTOR
REDUCTION_FACTOR = 3  # the best 1/3 at a rung train on


class ChildPruner(BasePruner):
    """An Optuna pruner as the evolution uses it: it never stops a child at its last step, and it hides its type.

    A child that reported its last step has trained in full: pruning it then would throw its result away (with
    halving, a rung can fall on the last epoch). Hiding the type matters for Hyperband: Optuna hands a sampler only
    the trials of the current trial's bracket when the study's pruner *is* a ``HyperbandPruner``. Our samplers take
    the first child of the study as the base hyp, so each bracket would train the base again, and ``ga`` parents would
    come from one bracket's children. Wrapped, Hyperband still decides within its brackets (brackets by trial number,
    rungs per bracket), and the samplers see every child.
    """

    def __init__(self, pruner: BasePruner, steps: int | None) -> None:
        self.pruner = pruner
        self.steps = steps

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        if self.steps is not None and trial.last_step is not None and trial.last_step >= self.steps:
            return False
        return self.pruner.prune(study, trial)


def build_pruner(
    name: str,
    steps: int | None = None,
    *,
    first_rung: int = FIRST_RUNG_EPOCHS,
    reduction_factor: int = REDUCTION_FACTOR,
) -> BasePruner:
    """The pruner called ``name`` (one of ``PRUNERS``) for children that report steps 1 to ``steps`` (epochs).

    No child is pruned at step ``steps``. ``hyperband`` takes ``steps`` as its largest resource; without it, Optuna
    learns it from the first finished child.
    """
    if name == "none":
        return NopPruner()
    if name == "median":
        # n_min_trials: imported rows (--evolve-from) count as completed trials but carry no per-epoch values; a
        # child is judged only once 5 children have reported at its epoch.
        pruner = MedianPruner(n_startup_trials=MEDIAN_STARTUP_CHILDREN, n_warmup_steps=MEDIAN_WARMUP_EPOCHS,
                              n_min_trials=MEDIAN_STARTUP_CHILDREN)  # fmt: skip
    elif name == "halving":
        pruner = SuccessiveHalvingPruner(min_resource=first_rung, reduction_factor=reduction_factor)
    elif name == "hyperband":
        pruner = HyperbandPruner(first_rung, steps if steps is not None else "auto", reduction_factor)
    else:
        raise ValueError(f"pruner must be one of {PRUNERS}, got {name!r}")
    return ChildPruner(pruner, steps)


def pruner_name(pruner: str | optuna.pruners.BasePruner) -> str:
    """What the study's setup records: the name, or the class of a pruner passed in as an object."""
    return pruner if isinstance(pruner, str) else type(pruner).__name__
