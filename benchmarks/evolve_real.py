"""Does the evolution find better hyps on real training? Samplers x evolution seeds, each a real ``train.py --evolve``.

Every evolution starts from yolov5's stock setting (``hyp.scratch-low.yaml``, SGD, nominal batch 64) on the built-in
shapes data and searches ``meta.recipe.yaml`` (yolov5's table plus the optimizer as a choice gene), with the
confirmation on (the base trained with 2 more seeds, the top 3 children with 2 fresh seeds each). The hand-tuned
recipe (``hyp.shapes.yaml``, AdamW, nominal batch 16: what ``shapes.yaml`` recommends) is trained through the same
path (``--evolve 1``: its base child and its two repeats) at every evolution seed, so that it is compared on the
same fresh seeds. For each sampler and seed it prints the confirmed winner's mean over its fresh seeds, its gain
over the base (the stock setting) +- standard error, the verdict, the children and the minutes of training spent,
and the share of the recipe recovered, (winner - stock) / (recipe - stock), on the fresh seeds. Then per sampler
the means, and each sampler against ``--versus`` seed by seed with a one-sided paired t-test. A plot of the best
confirmed fitness against children goes to ``evolve_real.png``.

Resumable: each evolution is a study in ``--out/<sampler>-seed<seed>`` (the journal), so rerunning the same command
goes on where it stopped (a child killed mid-run is trained again) and skips what is confirmed.

    python benchmarks/evolve_real.py --samplers ga,classic --seeds 0,1,2            # ~18 min per evolution, 2 cores
    python benchmarks/evolve_real.py --samplers ga,classic,tpe,gp --report-only     # the table from what is done
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from utils.evolution.evaluations import TrustPlan, evaluation_study, finished_evaluations  # noqa: E402
from utils.evolution.runner import all_children_done, base_child, own_children  # noqa: E402
from utils.evolution.sampler import quiet_optuna  # noqa: E402
from utils.evolution.storage import open_storage  # noqa: E402
from utils.evolution.trust import TrustReport, build_report  # noqa: E402

STOCK = ["--hyp", "data/hyps/hyp.scratch-low.yaml", "--optimizer", "SGD", "--nbs", "64",
         "--meta", "data/hyps/meta.recipe.yaml"]  # fmt: skip
RECIPE = ["--hyp", "data/hyps/hyp.shapes.yaml", "--optimizer", "AdamW", "--nbs", "16", "--evolve", "1"]
TRUST = TrustPlan(confirm=3, confirm_seeds=2)
RECIPE_NAME = "recipe"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "evolve_real"
Launch = Callable[[list[str]], int]  # train.py's arguments -> exit code


@dataclass(frozen=True)
class Setting:
    """What every child trains: the built-in data at this size and length, on this device."""

    img: int = 160
    epochs: int = 10
    device: str = "cpu"

    def arguments(self) -> list[str]:
        return ["--img", str(self.img), "--epochs", str(self.epochs), "--device", self.device, "--noplots",
                "--confirm", str(TRUST.confirm), "--confirm-seeds", str(TRUST.confirm_seeds)]  # fmt: skip


@dataclass
class Outcome:
    """One evolution (or the recipe's runs) read back from its study."""

    name: str
    children: int  # finished children
    minutes: float  # training time of every finished child and evaluation
    report: TrustReport
    curve: list[float] = field(default_factory=list)  # best confirmed fresh mean among the first k children

    @property
    def confirmed(self) -> bool:
        return self.report.confirmed

    def fresh_mean(self, number: int | None) -> float:
        """A child's mean over its fresh seeds (the repeats, never the run it was selected on)."""
        values = self.report.fresh.get(number, []) if number is not None else []
        return float(np.mean(values)) if values else math.nan

    @property
    def winner_fresh(self) -> float:
        return self.fresh_mean(self.report.winner)

    @property
    def base_fresh(self) -> float:
        return self.fresh_mean(self.report.base)

    @property
    def verdict(self) -> str:
        return self.report.sentence()


def run_name(sampler: str, seed: int) -> str:
    return f"{sampler}-seed{seed}"


def planned(samplers: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int]]:
    """Seed by seed, every sampler in turn (so that a partial run still pairs samplers on the same seeds)."""
    return [(sampler, seed) for seed in seeds for sampler in samplers]


def evolve_arguments(sampler: str, seed: int, children: int, setting: Setting, out: Path) -> list[str]:
    name = run_name(sampler, seed)
    return [*STOCK, *setting.arguments(), "--evolve", str(children), "--sampler", sampler, "--seed", str(seed),
            "--project", str(out), "--name", name]  # fmt: skip


def recipe_arguments(seed: int, setting: Setting, out: Path) -> list[str]:
    return [*RECIPE, *setting.arguments(), "--seed", str(seed), "--project", str(out), "--name",
            run_name(RECIPE_NAME, seed)]  # fmt: skip


def read_outcome(run_dir: Path, n: int) -> Outcome | None:
    """The study in ``run_dir`` as an ``Outcome``; None when there is none yet."""
    if not (run_dir / "study.journal").is_file():
        return None
    quiet_optuna()
    study = optuna.load_study(study_name=run_dir.name, storage=open_storage(run_dir, None))
    evaluations = evaluation_study(study)
    children = own_children(study)
    finished = finished_evaluations(evaluations)
    report = build_report(children, base_child(children), finished, all_children_done(study, n), TRUST)
    runs = [*children, *evaluations.get_trials(deepcopy=False)]
    seconds = sum(
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        for trial in runs
        if trial.datetime_complete is not None and trial.datetime_start is not None
    )
    done = sum(child.state.is_finished() and child.state.name != "FAIL" for child in children)
    outcome = Outcome(run_dir.name, done, seconds / 60, report)
    outcome.curve = best_confirmed_curve(outcome, [child.number for child in children if child.state.name != "FAIL"])
    return outcome


def best_confirmed_curve(outcome: Outcome, numbers: Sequence[int]) -> list[float]:
    """For k = 1..len(numbers): the best fresh-seed mean among the confirmed children within the first k (the base
    by all its runs); what a user who stopped after k children and confirmed would have reached, at best."""
    report, curve, best = outcome.report, [], -math.inf
    for number in numbers:
        if number == report.base and report.runs.get(number):
            best = max(best, float(np.mean(report.runs[number])))
        elif number in report.candidates and report.fresh.get(number):
            best = max(best, outcome.fresh_mean(number))
        curve.append(best if math.isfinite(best) else math.nan)
    return curve


def share_of_recipe(winner: float, stock: float, recipe: float) -> float:
    """(winner - stock) / (recipe - stock): 1 means the search recovered all of the hand recipe's gain."""
    return (winner - stock) / (recipe - stock) if recipe != stock else math.nan


def run_all(plan: Sequence[tuple[str, int]], children: int, setting: Setting, out: Path, launch: Launch) -> None:
    """Train (or resume) every planned evolution, the recipe at a seed before the seed's first evolution; skip what is
    already confirmed."""
    for sampler, seed in plan:
        recipe = read_outcome(out / run_name(RECIPE_NAME, seed), 1)
        if (recipe is None or not recipe.confirmed) and (code := launch(recipe_arguments(seed, setting, out))) != 0:
            print(f"{run_name(RECIPE_NAME, seed)}: train.py exited {code}; rerun to resume it", flush=True)
        outcome = read_outcome(out / run_name(sampler, seed), children)
        if outcome is not None and outcome.confirmed:
            continue
        code = launch(evolve_arguments(sampler, seed, children, setting, out))
        if code != 0:
            print(f"{run_name(sampler, seed)}: train.py exited {code}; rerun to resume it", flush=True)


def train_py(arguments: list[str]) -> int:
    """Run train.py as a user would, its output passed through."""
    print("$ python train.py " + " ".join(arguments), flush=True)
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *arguments], cwd=ROOT).returncode


def one_sided_paired_p(ahead: Sequence[float], behind: Sequence[float]) -> float:
    """p of a one-sided paired t-test that ``ahead`` beats ``behind`` (nan with fewer than 2 pairs)."""
    from scipy import stats

    differences = np.asarray(ahead, dtype=float) - np.asarray(behind, dtype=float)
    if len(differences) < 2:
        return math.nan
    if np.allclose(differences, differences[0]):
        return 0.0 if differences[0] > 0 else 1.0
    return float(stats.ttest_1samp(differences, 0.0, alternative="greater").pvalue)


def outcome_row(outcome: Outcome, recipe: Outcome | None) -> str:
    comparison = outcome.report.comparison
    gain = f"{comparison.difference:+.4f} ± {comparison.standard_error:.4f}" if comparison is not None else "-"
    recipe_fresh = recipe.fresh_mean(recipe.report.base) if recipe is not None and recipe.confirmed else math.nan
    share = share_of_recipe(outcome.winner_fresh, outcome.base_fresh, recipe_fresh)
    winner = outcome.report.winner
    verdict = outcome.verdict.split(":")[-1].strip() if comparison is None else (
        "beyond noise" if comparison.beyond_noise else "within noise"
    )  # fmt: skip
    return (f"| {outcome.name} | {outcome.children} | {winner if winner is not None else '-'} | "
            f"{outcome.winner_fresh:.4f} | {outcome.base_fresh:.4f} | {recipe_fresh:.4f} | {gain} | "
            f"{share:.0%} | {verdict} | {outcome.minutes:.1f} |")  # fmt: skip


def report(plan: Sequence[tuple[str, int]], children: int, out: Path, versus: str | None) -> dict[str, list[Outcome]]:
    """Print the table of every confirmed evolution in ``plan`` and the per-sampler summary; returns the outcomes."""
    recipes = {seed: read_outcome(out / run_name(RECIPE_NAME, seed), 1) for seed in {seed for _, seed in plan}}
    print("| run | children | winner | winner (fresh seeds) | stock (fresh) | recipe (fresh) | gain over base ± se "
          "| share of recipe | verdict | training minutes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    by_sampler: dict[str, list[Outcome]] = {}
    seeds_of: dict[str, list[int]] = {}
    for sampler, seed in plan:
        outcome = read_outcome(out / run_name(sampler, seed), children)
        if outcome is None or not outcome.confirmed:
            print(f"| {run_name(sampler, seed)} | {outcome.children if outcome else 0} | not confirmed yet |")
            continue
        print(outcome_row(outcome, recipes.get(seed)))
        by_sampler.setdefault(sampler, []).append(outcome)
        seeds_of.setdefault(sampler, []).append(seed)
    print()
    for sampler, outcomes in by_sampler.items():
        winners = [outcome.winner_fresh for outcome in outcomes]
        beyond = sum(bool(o.report.comparison and o.report.comparison.beyond_noise and o.report.winner != o.report.base)
                     for o in outcomes)  # fmt: skip
        line = f"{sampler}: {len(outcomes)} seeds, winner {np.mean(winners):.4f} mean, beyond noise in {beyond}"
        if versus and sampler != versus and versus in by_sampler:
            pairs = [(o.winner_fresh, v.winner_fresh) for o, s in zip(outcomes, seeds_of[sampler])
                     for v, t in zip(by_sampler[versus], seeds_of[versus]) if s == t]  # fmt: skip
            if pairs:
                ahead = sum(a > b for a, b in pairs)
                p = one_sided_paired_p(*zip(*pairs))
                line += f"; ahead of {versus} in {ahead} of {len(pairs)} seeds (one-sided paired p = {p:.3g})"
        print(line)
    return by_sampler


def plot(by_sampler: dict[str, list[Outcome]], path: Path) -> None:
    """Best confirmed fitness against children, the mean over seeds per sampler (thin lines: each seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, (sampler, outcomes) in enumerate(by_sampler.items()):
        color = f"C{index}"
        length = min(len(outcome.curve) for outcome in outcomes)
        for outcome in outcomes:
            axes.plot(range(1, len(outcome.curve) + 1), outcome.curve, color=color, alpha=0.3, linewidth=1)
        mean = np.nanmean([outcome.curve[:length] for outcome in outcomes], axis=0)
        axes.plot(range(1, length + 1), mean, color=color, linewidth=2, label=f"{sampler} ({len(outcomes)} seeds)")
    axes.set_xlabel("children")
    axes.set_ylabel("best confirmed fitness (fresh seeds)")
    axes.set_title("From yolov5's stock hyp on the built-in data (160 px, 10 epochs)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samplers", default="ga,classic", help="comma-separated --sampler names")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated evolution seeds")
    parser.add_argument("--children", type=int, default=16)
    parser.add_argument("--img", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the studies live (resumable)")
    parser.add_argument("--versus", default="classic", help="pair every sampler with this one, seed by seed")
    parser.add_argument("--report-only", action="store_true", help="print the table from what is done; train nothing")
    args = parser.parse_args()
    plan = planned(args.samplers.split(","), [int(seed) for seed in args.seeds.split(",")])
    setting = Setting(args.img, args.epochs, args.device)
    started = time.monotonic()
    if not args.report_only:
        run_all(plan, args.children, setting, args.out, train_py)
        print(f"wall time: {(time.monotonic() - started) / 60:.1f} min", flush=True)
    by_sampler = report(plan, args.children, args.out, args.versus)
    if by_sampler:
        plot(by_sampler, args.out / "evolve_real.png")
        print(f"plot: {args.out / 'evolve_real.png'}")


if __name__ == "__main__":
    main()
