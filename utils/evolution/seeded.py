"""What every sampler shares (the base child, a child's params in Optuna's types, imported rows), and
``PerChildSeededSampler``: Optuna's own samplers (TPE, CMA-ES, GP, random) with a fresh instance per child, seeded by
the evolution seed and the child's index."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from utils.evolution.evaluations import SURPLUS_ATTR
from utils.evolution.mutation import child_seed, decode, encode
from utils.evolution.search_space import GeneSpec, SearchSpace
from utils.evolution.storage import FAILURE_ATTR, Failure

IMPORTED_ATTR = "imported"
BASE_ATTEMPTS = 2  # a base hyp whose own run failed this often is given up: the search goes on without it


def own_trials_before(study: Study, number: int) -> list[FrozenTrial]:
    """Trials created by evolution workers (not imported rows) with a smaller number."""
    trials = study.get_trials(deepcopy=False)
    return [trial for trial in trials if trial.number < number and not trial.user_attrs.get(IMPORTED_ATTR)]


def is_base_child(study: Study, number: int) -> bool:
    """True for a child that trains the base hyp unchanged: the first child, and again a later one whenever no base
    run has completed or is running (the base was killed, interrupted or its worker died; a base that failed by its
    own error is tried ``BASE_ATTEMPTS`` times). A running child whose trial does not say yet whether it is the base
    (another worker just claimed it) counts as the base, so that two workers never both train it."""
    earlier = [trial for trial in own_trials_before(study, number) if SURPLUS_ATTR not in trial.user_attrs]
    maybe_base = (trial.user_attrs.get("lineage", {}).get("base", True) for trial in earlier)
    if any(trial.state != TrialState.FAIL and base for trial, base in zip(earlier, maybe_base)):
        return False
    base_failures = [
        trial for trial in earlier
        if trial.user_attrs.get(FAILURE_ATTR) == Failure.OBJECTIVE and trial.user_attrs.get("lineage", {}).get("base")
    ]  # fmt: skip
    return len(base_failures) < BASE_ATTEMPTS


def cast_params(params: dict[str, Any], genes: dict[str, GeneSpec]) -> dict[str, Any]:
    """Give int genes Python ints and choice genes their names, as Optuna's distributions expect."""
    return {key: decode(encode(value, genes[key]), genes[key]) for key, value in params.items()}


class PerChildSeededSampler(BaseSampler):
    """Wraps an Optuna sampler: a fresh delegate per child, seeded from (seed, child index); child 0 = base hyp.

    One seeded sampler per worker would make every worker draw the same sequence; a time seed would make
    runs irreproducible. TPE, random and CMA-ES keep no state between trials outside the study, so a fresh
    instance per trial loses nothing; GP keeps only a warm start for its kernel fit, which a fresh one refits.
    """

    def __init__(self, make_delegate: Callable[[int], BaseSampler], space: SearchSpace, seed: int = 0) -> None:
        self.make_delegate = make_delegate
        self.space = space
        self.seed = seed
        self.lineage: dict[int, dict[str, Any]] = {}
        self._delegates: dict[int, BaseSampler] = {}

    def delegate(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._delegates:
            self._delegates[trial.number] = self.make_delegate(child_seed(self.seed, trial.number))
        return self._delegates[trial.number]

    def is_base(self, study: Study, trial: FrozenTrial) -> bool:
        if trial.number not in self.lineage:
            self.lineage[trial.number] = {"base": is_base_child(study, trial.number), "parents": []}
        return self.lineage[trial.number]["base"]

    def base_value(self, study: Study, trial: FrozenTrial, name: str) -> Any | None:
        if not self.is_base(study, trial):
            return None
        return cast_params({name: self.space.base_hyp[name]}, self.space.genes)[name]

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.delegate(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if search_space and self.is_base(study, trial):
            return {name: self.base_value(study, trial, name) for name in search_space if name in self.space.genes}
        return self.delegate(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        value = self.base_value(study, trial, param_name) if param_name in self.space.genes else None
        if value is not None:
            return value
        return self.delegate(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.delegate(trial).before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        delegate = self._delegates.pop(trial.number, None)
        if delegate is not None:
            delegate.after_trial(study, trial, state, values)
