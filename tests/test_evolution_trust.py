"""Tests for the evolution's trust: pooled noise, the confirmed winner against the base, rank fidelity, the extra
evaluations' plan and claims, and the views that report them (utils/evolution/{verdict,trust,evaluations}.py)."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import optuna
import pytest
import yaml
from scipy import stats

from tests.evolve_worker import noisy_metrics
from utils.evolution import load_meta, run
from utils.evolution.evaluations import (
    FIDELITY,
    REPEAT,
    SURPLUS_ATTR,
    TASK_ATTR,
    Task,
    TrustPlan,
    claim_task,
    evaluation_study,
    spread_pick,
)
from utils.evolution.storage import Worker, open_storage
from utils.evolution.verdict import compare, pooled_noise, rank_fidelity
from utils.training.hyp import load_hyp


def noisy(noise: float):
    def objective(hyp, child):
        return noisy_metrics(hyp, child.train_seed, noise, child.epochs)

    return objective


def flat(noise: float):
    """Every hyp is equally good; only the seed moves the fitness."""

    def objective(hyp, child):
        value = 0.5 + noise * float(np.random.default_rng([child.train_seed, round(hyp["lr0"] * 1e9)]).normal())
        return {"metrics/mAP_0.5": value, "metrics/mAP_0.5:0.95": value}

    return objective


# --- the statistics ----------------------------------------------------------------------------------------------


def test_pooled_noise_recovers_the_true_sd_over_many_seeds():
    """20 simulated studies of 50 hyps x 3 seeds (100 degrees of freedom: one standard error of the sd is 7%): each
    within 25% of the true sd, and their mean within 4%."""
    estimates = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        groups = [rng.normal(rng.uniform(0.1, 0.6), 0.05, size=3) for _ in range(50)]
        noise = pooled_noise(groups)
        assert noise.dof == 100 and noise.hyps == 50 and noise.runs == 150
        assert noise.sd == pytest.approx(0.05, rel=0.25)
        estimates.append(noise.sd)
    assert np.mean(estimates) == pytest.approx(0.05, rel=0.04)


def test_pooled_noise_ignores_single_runs_and_is_unknown_without_repeats():
    assert not pooled_noise([[0.3], [0.4]]).known
    noise = pooled_noise([[0.3], [0.1, 0.3], [0.5, 0.5, 0.8]])
    assert noise.dof == 3 and noise.sd == pytest.approx(math.sqrt((0.02 + 0.06) / 3))


def test_compare_is_the_t_test_with_the_pooled_sd():
    noise = pooled_noise([[0.0, 0.1], [0.2, 0.4, 0.3]])  # sd^2 = (0.005 + 0.02) / 3
    comparison = compare([0.5, 0.6], [0.3, 0.35, 0.4], noise, candidates=2)
    se = noise.sd * math.sqrt(1 / 2 + 1 / 3)
    assert comparison.standard_error == pytest.approx(se)
    assert comparison.p_value == pytest.approx(2 * stats.t.sf(0.2 / se, 3))
    assert comparison.alpha == 0.025 and comparison.difference == pytest.approx(0.2)


def test_compare_never_calls_a_worse_winner_beyond_noise():
    noise = pooled_noise([[0.0, 0.001], [0.0, 0.001]])
    assert not compare([0.1, 0.1], [0.5, 0.5], noise).beyond_noise


@pytest.mark.parametrize(
    ("short", "long", "rho", "same"),
    [
        ([1, 2, 3, 4, 5], [10, 20, 30, 40, 50], 1.0, True),
        ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], -1.0, False),
        ([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], 0.8, True),
    ],  # fmt: skip
)
def test_rank_fidelity_on_known_rankings(short, long, rho, same):
    fidelity = rank_fidelity(short, long)
    assert fidelity.spearman == pytest.approx(rho) and fidelity.same_winner is same and fidelity.pairs == 5
    assert fidelity.low <= fidelity.spearman <= fidelity.high


def test_rank_fidelity_matches_scipy_and_its_interval_narrows_with_pairs():
    rng = np.random.default_rng(0)
    short = rng.normal(size=30)
    long = short + rng.normal(size=30)
    fidelity = rank_fidelity(short, long)
    assert fidelity.spearman == pytest.approx(stats.spearmanr(short, long).statistic)
    few = rank_fidelity(short[:8], long[:8])
    assert fidelity.high - fidelity.low < few.high - few.low
    assert math.isnan(rank_fidelity([1, 2, 3], [3, 2, 1]).low)  # three pairs: no interval
    assert math.isnan(rank_fidelity([1, 1, 1, 1], [1, 2, 3, 4]).spearman)  # ties everywhere: undefined


def test_spread_pick_spans_the_range():
    ranked = list(range(10))
    assert spread_pick(ranked, 4) == [0, 1, 2, 9]
    assert spread_pick(ranked, 5) == [0, 1, 2, 3, 9]
    assert spread_pick(ranked, 20) == ranked


# --- the evolution, end to end with synthetic objectives of known noise --------------------------------------------


def evolve(tmp_path, objective, n=6, seed=0, **trust):
    plan = TrustPlan(**trust)
    return run(objective, load_hyp(), load_meta(), n, run_dir=tmp_path, seed=seed, plots=False, trust=plan)


def test_equal_hyps_plus_noise_are_within_noise(tmp_path, capsys):
    evolve(tmp_path, flat(0.05), n=8, confirm=3, confirm_seeds=2)
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert verdict.startswith("evolve: verdict:") and ("within noise" in verdict or "keep the base" in verdict)
    header = (tmp_path / "hyp_evolve.yaml").read_text()
    assert "# noise: pooled sd" in header and "# verdict:" in header


def test_equal_hyps_are_rarely_called_beyond_noise(tmp_path, capsys):
    """The Bonferroni-held test keeps luck from passing as a gain: at most 2 of 20 flat evolutions (5% expected)."""
    beyond = 0
    for seed in range(20):
        evolve(tmp_path / str(seed), flat(0.05), n=6, seed=seed, confirm=3, confirm_seeds=2)
        beyond += "beyond noise" in capsys.readouterr().out
    assert beyond <= 2


def test_a_truly_better_hyp_with_enough_seeds_is_beyond_noise(tmp_path, capsys):
    """synthetic_metrics peaks away from the base (lr0 3e-3, mixup 0.3, momentum 0.9); the noise is small."""
    evolve(tmp_path, noisy(0.002), n=12, confirm=3, confirm_seeds=3)
    out = capsys.readouterr().out
    assert "beyond noise" in out.splitlines()[-1], out[-2000:]
    winner = yaml.safe_load((tmp_path / "hyp_evolve.yaml").read_text())
    assert winner != pytest.approx(load_hyp()), "hyp_evolve.yaml holds the confirmed winner, not the base"


def test_pooled_sd_of_a_study_is_close_to_the_true_noise(tmp_path, capsys):
    evolve(tmp_path, flat(0.04), n=12, confirm=12, confirm_seeds=3)
    noise_line = next(line for line in capsys.readouterr().out.splitlines() if "noise: pooled sd" in line)
    estimate = float(noise_line.split("pooled sd ")[1].split()[0])
    assert estimate == pytest.approx(0.04, rel=0.25)  # 36 degrees of freedom: about 12% is one standard error


def test_confirm_csv_and_the_base_repeats(tmp_path):
    evolve(tmp_path, noisy(0.01), n=5, confirm=2, confirm_seeds=2, fidelity=3, fidelity_epochs=30)
    confirm = [
        [cell.strip() for cell in line.split(",")] for line in (tmp_path / "confirm.csv").read_text().splitlines()
    ]
    evolve_header = [cell.strip() for cell in (tmp_path / "evolve.csv").read_text().splitlines()[0].split(",")]
    assert confirm[0] == [*evolve_header, "child", "seed"]
    children_seeds = sorted((int(float(row[-2])), int(float(row[-1]))) for row in confirm[1:])
    assert (0, 1) in children_seeds and (0, 2) in children_seeds, "the base has two more seeds"
    assert len(children_seeds) == len(set(children_seeds)) and len(children_seeds) in (4, 6)
    fidelity = (tmp_path / "fidelity.csv").read_text().splitlines()
    assert fidelity[0].split(",")[-1].strip() == "epochs" and len(fidelity) == 1 + 3
    assert len((tmp_path / "evolve.csv").read_text().splitlines()) == 1 + 5, "evolve.csv keeps one row per child"


def test_rerunning_with_fidelity_adds_only_the_fidelity_runs(tmp_path, capsys):
    calls = []

    def counting(hyp, child):
        calls.append((child.index, child.train_seed, child.epochs))
        return noisy_metrics(hyp, child.train_seed, 0.01, child.epochs)

    evolve(tmp_path, counting, n=4, confirm=2, confirm_seeds=1)
    first = len(calls)
    evolve(tmp_path, counting, n=4, confirm=2, confirm_seeds=1, fidelity=3, fidelity_epochs=30)
    assert len(calls) == first + 3 and all(epochs == 30 for _, _, epochs in calls[first:])
    assert "fidelity: Spearman" in capsys.readouterr().out


def test_confirm_zero_says_the_result_is_unconfirmed(tmp_path, capsys):
    evolve(tmp_path, noisy(0.01), n=4, confirm=0, confirm_seeds=1)
    assert "not confirmed (--confirm 0)" in capsys.readouterr().out.splitlines()[-1]


def test_a_later_claim_yields_to_an_earlier_claim_that_names_the_same_task_late(tmp_path):
    """The race the settle wait exists for: an earlier claim has not yet written its task when a later claim looks."""
    children = optuna.create_study(storage=open_storage(tmp_path, None), study_name="evo")
    evaluations = evaluation_study(children)
    task = Task(REPEAT, 0, 1)
    earlier = evaluations.ask()

    def name_it_late():
        time.sleep(0.3)
        earlier.set_user_attr(TASK_ATTR, task.as_attr())

    writer = threading.Thread(target=name_it_late)
    writer.start()
    assert claim_task(evaluations, [task], Worker.current()) is None
    writer.join()
    later = evaluations.get_trials(deepcopy=False)[1]
    assert later.state == optuna.trial.TrialState.FAIL and later.user_attrs[SURPLUS_ATTR]


def test_claims_take_the_tasks_in_order_and_skip_taken_ones(tmp_path):
    storage = open_storage(tmp_path, None)
    children = optuna.create_study(storage=storage, study_name="evo")
    evaluations = evaluation_study(children)
    worker = Worker.current()
    tasks = [Task(REPEAT, 0, 1), Task(REPEAT, 0, 2), Task(FIDELITY, 1, 0, 30)]
    first = claim_task(evaluations, tasks, worker)
    second = claim_task(evaluations, tasks, worker)
    assert first[0] == tasks[0] and second[0] == tasks[1]
    evaluations.tell(first[1], 0.5)
    third = claim_task(evaluations, tasks, worker)
    assert third[0] == tasks[2] and claim_task(evaluations, tasks, worker) is None
