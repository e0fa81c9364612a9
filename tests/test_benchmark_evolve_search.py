"""The sampler benchmark's picks: the noisily-best child, and the confirmed winner the evolution hands over."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "evolve_search.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("evolve_search", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_confirmed_winner_is_the_best_fresh_mean_among_the_top_by_one_run(bench):
    true = [0.30, 0.50, 0.40, 0.45, 0.20]
    noisy = [0.30, 0.50, 0.90, 0.45, 0.95]  # child 2 was lucky; child 4 luckier still
    curve = bench.confirmed_curve(true, noisy, "separable", seed=0)
    assert curve[:2] == [0.30, 0.50]
    assert curve[2] == 0.50  # the top 3 by one run are 2, 1, 0: their fresh runs show child 1 is the best
    assert curve[3] == 0.50  # top 3: 2, 1, 3
    assert curve[4] == 0.50  # top 3: 4, 2, 1; child 4's one run was luck


def test_the_base_is_always_a_candidate_and_can_win(bench):
    true = [0.50, 0.30, 0.20, 0.25, 0.10]
    noisy = [0.40, 0.90, 0.95, 0.80, 0.70]  # the base's one run is below the top 3, but it is better than all of them
    assert bench.confirmed_curve(true, noisy, "separable", seed=0)[-1] == 0.50


def test_a_search_records_both_picks_and_the_best_child_found_after_every_child(bench):
    sampler, shape, seed, curve, seconds, confirmed, found = bench.run_job(("classic", "noisy", 0, 12))
    assert (sampler, shape, seed) == ("classic", "noisy", 0)
    assert len(curve) == len(confirmed) == len(found) == 12 and seconds >= 0
    assert curve[0] == confirmed[0] == found[0] == pytest.approx(bench.true_fitness("noisy", bench.space().base_hyp))
    assert found == sorted(found) and all(best >= pick for best, pick in zip(found, curve))
    assert found[-1] > curve[-1]  # with noise sd 0.03 the noisily-best of 12 children is not the truly best here


def test_the_tables_say_how_many_runs_still_improved_between_the_last_two_budgets(bench, capsys):
    rising, flat = [0.4] * 200 + [0.5] * 100, [0.45] * 300
    bench.print_tables({("ga", "noisy"): [rising, flat, flat]}, ["noisy"], ["ga"], [100, 200, 300])
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("ga") and row.endswith("+0.000 up 1 down 0 p=5e-01")  # one run rose between 200 and 300
    falling = [0.5] * 200 + [0.45] * 100
    bench.print_tables({("ga", "noisy"): [falling] * 4 + [rising]}, ["noisy"], ["ga"], [100, 200, 300])
    assert capsys.readouterr().out.splitlines()[-1].endswith("-0.050 up 1 down 4 p=8e-01")
    bench.print_tables({("ga", "noisy"): [rising] * 6}, ["noisy"], ["ga"], [100, 200, 300])
    assert capsys.readouterr().out.splitlines()[-1].endswith("+0.100 up 6 down 0 p=2e-02")  # 1 / 2^6


def test_versus_gives_the_chance_that_a_run_beats_a_run_of_the_other_sampler(bench, capsys):
    better, worse = [[0.5 + i / 100] * 50 for i in range(5)], [[0.4 + i / 100] * 50 for i in range(5)]
    mixed = [[0.4 + i / 50] * 50 for i in range(5)]  # 0.40 .. 0.48: beats "worse" in 16 of 25 pairs, ties 3
    results = {("ga", "noisy"): better, ("classic", "noisy"): worse, ("tpe", "noisy"): mixed}
    bench.print_versus(results, ["noisy"], ["ga", "classic", "tpe"], [50], "classic")
    rows = capsys.readouterr().out.splitlines()
    assert rows[-2].split() == ["ga", "1.00", "p=4e-03"]
    assert rows[-1].split()[:2] == ["tpe", "0.70"]  # (16 + 3 / 2) / 25
