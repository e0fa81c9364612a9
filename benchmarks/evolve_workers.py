"""Children per hour with one worker against several on one device: ``--children-per-device K`` side by side.

Each K runs the same evolution (same seed, so the same first children: the startup children are seeded mutations of
the base hyp, whatever the order in which workers finish) as a fresh ``train.py --evolve N --device cpu
--children-per-device K`` with no confirmation, one K after the other and alternating over ``--repeats``, and the
wall time of the whole command is taken. It prints children per hour for each K, the speed-up over K = 1, and each
child's fitness under each K (the same child, trained by a worker with fewer threads): the same within noise is
the check that sharing the cores costs no fitness. Keep N within the startup children (10 for ``ga``) so that every
child is the same under each K. Pause other jobs while it runs: it measures the machine.

    python benchmarks/evolve_workers.py                                  # N=6, 10 epochs at 256 px: about 25 min
    python benchmarks/evolve_workers.py --children 4 --epochs 3 --img 160 --workers-per-device 1,2,4
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from utils.evolution.sampler import quiet_optuna  # noqa: E402
from utils.evolution.storage import open_storage  # noqa: E402


def evolve_once(per_device: int, children: int, epochs: int, img: int, project: Path) -> tuple[float, dict[int, float]]:
    """Wall seconds of one ``--children-per-device per_device`` evolution, and each child's fitness by number."""
    name = f"workers{per_device}"
    command = [sys.executable, str(ROOT / "train.py"), "--evolve", str(children), "--epochs", str(epochs), "--img",
               str(img), "--device", "cpu", "--children-per-device", str(per_device), "--confirm", "0",
               "--confirm-seeds", "0", "--noplots", "--project", str(project), "--name", name]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"K={per_device} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    quiet_optuna()
    study = optuna.load_study(study_name=name, storage=open_storage(project / name, None))
    return seconds, {trial.number: trial.value for trial in study.trials if trial.value is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--img", type=int, default=256)
    parser.add_argument("--workers-per-device", default="1,2", help="the K values, side by side")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    ks = [int(k) for k in args.workers_per_device.split(",")]
    seconds: dict[int, list[float]] = {k: [] for k in ks}
    fitness: dict[int, dict[int, float]] = {}
    for repeat in range(args.repeats):
        for k in ks if repeat % 2 == 0 else ks[::-1]:  # alternate the order, so that drift hits both alike
            with tempfile.TemporaryDirectory() as project:
                elapsed, values = evolve_once(k, args.children, args.epochs, args.img, Path(project))
            seconds[k].append(elapsed)
            fitness.setdefault(k, values)
            print(f"K={k} run {repeat + 1}: {elapsed:.0f} s, {args.children / elapsed * 3600:.1f} children/hour",
                  flush=True)  # fmt: skip
    base = min(seconds[ks[0]])
    print(f"\n{args.children} children, {args.epochs} epochs at {args.img} px, best of {args.repeats}:")
    print("| K | wall s | children/hour | vs K=" + str(ks[0]) + " |\n|---|---|---|---|")
    for k in ks:
        best = min(seconds[k])
        print(f"| {k} | {best:.0f} | {args.children / best * 3600:.1f} | {base / best:.2f}x |")
    print("\nfitness per child (same child, same seed):\n| child | " + " | ".join(f"K={k}" for k in ks) + " |")
    print("|---|" + "---|" * len(ks))
    for number in sorted(fitness[ks[0]]):
        print(f"| {number} | " + " | ".join(f"{fitness[k].get(number, float('nan')):.4f}" for k in ks) + " |")


if __name__ == "__main__":
    main()
