"""What an evolution is told: how many children, where the study lives, and how to search."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from utils.evolution.evaluations import TrustPlan
from utils.evolution.search_space import GeneSpec


@dataclass(frozen=True)
class EvolveOptions:
    """The evolution flags as explicit values (built from the CLI by ``utils.cli.build_evolve_options``)."""

    n: int  # children in total across all workers
    run_dir: Path  # views, and the journal unless ``storage`` is given
    meta: Mapping[str, GeneSpec]
    study_name: str
    storage: str | None = None  # an RDB URL (postgresql://...) shared by machines
    sampler: str = "ga"
    seed: int = 0
    freeze: tuple[str, ...] = ()
    prune: str = "none"  # a name of utils.evolution.pruning.PRUNERS
    evolve_from: Path | None = None  # a yolov5 evolve.csv to import as finished children
    parent_selection: str = "single"
    save_children: bool = False
    plots: bool = True
    trust: TrustPlan = field(default_factory=TrustPlan)  # noise, confirmation and fidelity evaluations
    parent_pid: int | None = None  # a worker of one command (--children-per-device): stop when that process is gone

    def run_arguments(self) -> dict[str, object]:
        """The keyword arguments of ``utils.evolution.run`` besides the objective and the base hyp."""
        return {
            "meta": self.meta,
            "n": self.n,
            "run_dir": self.run_dir,
            "study_name": self.study_name,
            "storage": self.storage,
            "sampler": self.sampler,
            "seed": self.seed,
            "freeze": self.freeze,
            "prune": self.prune,
            "evolve_from": self.evolve_from,
            "parent_selection": self.parent_selection,
            "save_children": self.save_children,
            "plots": self.plots,
            "trust": self.trust,
        }
