"""The real-training benchmark's bookkeeping on an instant objective: resumption, the share of the recipe, the table."""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import pytest

from tests.evolve_worker import noisy_metrics
from utils.evolution import load_meta, run
from utils.evolution.evaluations import TrustPlan
from utils.training.hyp import load_hyp

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "evolve_real.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("evolve_real", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["evolve_real"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def fake_train_py(calls: list[list[str]], kill_at: int | None = None):
    """A stand-in for train.py that evolves an instant objective in the folder the arguments name; the recipe
    (lr0 0.003, the objective's best) scores above the stock hyp. ``kill_at``: the first evolution stops (as if
    killed) when that child starts."""

    def launch(arguments: list[str]) -> int:
        parser = argparse.ArgumentParser()
        for flag in ("--evolve", "--seed", "--confirm", "--confirm-seeds"):
            parser.add_argument(flag, type=int)
        for flag in ("--project", "--name", "--sampler", "--hyp"):
            parser.add_argument(flag)
        args, _ = parser.parse_known_args(arguments)
        calls.append(arguments)
        recipe = args.hyp.endswith("hyp.shapes.yaml")
        base = {**load_hyp(), "lr0": 0.003} if recipe else load_hyp()

        def objective(hyp, child):
            if kill_at is not None and child.index == kill_at and len(calls) == 2:
                raise KeyboardInterrupt
            return noisy_metrics(hyp, child.train_seed, noise=0.01)

        try:
            run(objective, base, load_meta(), args.evolve, run_dir=Path(args.project) / args.name, seed=args.seed,
                sampler=args.sampler or "ga", trust=TrustPlan(args.confirm, args.confirm_seeds), plots=False,
                poll_seconds=0.01)  # fmt: skip
        except KeyboardInterrupt:
            return 130
        return 0

    return launch


def test_a_killed_evolution_resumes_and_a_confirmed_one_is_not_run_again(bench, tmp_path):
    calls: list[list[str]] = []
    plan = bench.planned(["ga"], [0])
    setting = bench.Setting()
    bench.run_all(plan, 6, setting, tmp_path, fake_train_py(calls, kill_at=3))
    assert len(calls) == 2 and "--name" in calls[1] and "ga-seed0" in calls[1]  # the recipe, then the evolution
    killed = bench.read_outcome(tmp_path / "ga-seed0", 6)
    assert killed.children == 3 and not killed.confirmed
    bench.run_all(plan, 6, setting, tmp_path, fake_train_py(calls))
    assert len(calls) == 3, "the recipe is confirmed: only the evolution resumes"
    resumed = bench.read_outcome(tmp_path / "ga-seed0", 6)
    assert resumed.children == 6 and resumed.confirmed and resumed.minutes >= 0
    assert len(resumed.curve) == 6 and resumed.curve[0] == pytest.approx(sum(resumed.report.runs[0]) / 3)
    assert all(later >= earlier for earlier, later in zip(resumed.curve, resumed.curve[1:]))
    bench.run_all(plan, 6, setting, tmp_path, fake_train_py(calls))
    assert len(calls) == 3, "everything is confirmed: nothing runs"


def test_the_arguments_start_from_the_stock_setting_with_the_confirmation_on(bench, tmp_path):
    arguments = bench.evolve_arguments("classic", 2, 16, bench.Setting(), tmp_path)
    joined = " ".join(arguments)
    for part in ("--hyp data/hyps/hyp.scratch-low.yaml", "--optimizer SGD", "--nbs 64", "--sampler classic",
                 "--meta data/hyps/meta.recipe.yaml", "--seed 2", "--evolve 16", "--img 160", "--epochs 10",
                 "--confirm 3", "--confirm-seeds 2", "--name classic-seed2"):  # fmt: skip
        assert part in joined
    recipe = " ".join(bench.recipe_arguments(2, bench.Setting(), tmp_path))
    assert "--hyp data/hyps/hyp.shapes.yaml --optimizer AdamW --nbs 16 --evolve 1" in recipe and "--seed 2" in recipe


@pytest.mark.parametrize(
    ("winner", "stock", "recipe", "share"),
    [(0.10, 0.00, 0.08, 1.25), (0.04, 0.00, 0.08, 0.5), (0.00, 0.00, 0.08, 0.0), (0.05, 0.05, 0.05, math.nan)],
)
def test_the_share_of_the_recipe_recovered(bench, winner, stock, recipe, share):
    assert bench.share_of_recipe(winner, stock, recipe) == pytest.approx(share, nan_ok=True)


def test_the_table_pairs_samplers_by_seed(bench, tmp_path, capsys):
    calls: list[list[str]] = []
    plan = bench.planned(["ga", "classic"], [0, 1])
    assert plan == [("ga", 0), ("classic", 0), ("ga", 1), ("classic", 1)]
    bench.run_all(plan, 5, bench.Setting(), tmp_path, fake_train_py(calls))
    by_sampler = bench.report(plan, 5, tmp_path, "classic")
    out = capsys.readouterr().out
    assert [len(by_sampler[name]) for name in ("ga", "classic")] == [2, 2]
    assert out.count("| ga-seed") == 2 and "ga: 2 seeds" in out and "of classic in" in out
    recipe = bench.read_outcome(tmp_path / "recipe-seed0", 1)
    assert recipe.confirmed and len(recipe.report.fresh[recipe.report.base]) == 2
    bench.plot(by_sampler, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_the_paired_test_is_one_sided(bench):
    assert bench.one_sided_paired_p([0.3, 0.4, 0.5], [0.1, 0.1, 0.3]) < 0.05
    assert bench.one_sided_paired_p([0.1, 0.1, 0.3], [0.3, 0.4, 0.5]) > 0.95
    assert math.isnan(bench.one_sided_paired_p([0.3], [0.1]))
