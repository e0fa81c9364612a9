"""Tests for utils/evolution/launcher.py and its flags: one command starts several workers in one study, shows their
progress once, and stops them together; no worker outlives the command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.evolve_worker import synthetic_metrics
from utils import cli
from utils.errors import UserError
from utils.evolution import load_meta, run
from utils.evolution.evaluations import TrustPlan
from utils.evolution.launcher import Progress, cpu_threads, final_block
from utils.evolution.storage import open_storage
from utils.training.hyp import load_hyp

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--img", "64", "--batch", "4", "--epochs", "2", "--workers", "0", "--noplots", "--confirm", "1",
        "--confirm-seeds", "1"]  # fmt: skip


@pytest.mark.parametrize(("workers", "cores", "threads"), [(1, 2, 2), (2, 2, 1), (3, 2, 1), (4, 64, 16)])
def test_cpu_workers_share_the_cores_out(workers, cores, threads):
    assert cpu_threads(workers, cores) == threads


def test_one_worker_per_listed_device_times_k_each_with_its_own_device_and_log(tmp_path):
    argv = ["--device=cpu", "--evolve", "8", "--children-per-device", "2", "--name", "evo"]
    args = cli.parse_train_args(argv)
    specs = cli.evolution_workers(args, argv, ROOT / "train.py", tmp_path)
    assert [spec.label for spec in specs] == ["cpu_0", "cpu_1"]
    assert [spec.log.name for spec in specs] == ["worker_cpu_0.log", "worker_cpu_1.log"]
    command = specs[0].command
    assert command[:2] == [sys.executable, str(ROOT / "train.py")]
    assert "--device=cpu" not in command and "--children-per-device" not in command
    assert command[-6:] == ["--evolve", "8", "--device", "cpu", "--worker-of", str(os.getpid())]
    assert specs[0].env["OMP_NUM_THREADS"] == str(cpu_threads(2))


@pytest.mark.parametrize("flags", [["--device", "cpu"], ["--device", "cpu", "--children-per-device", "1"],
                                   ["--children-per-device", "3", "--worker-of", "1"]])  # fmt: skip
def test_a_single_worker_or_a_worker_itself_starts_no_workers(tmp_path, flags):
    argv = ["--evolve", "4", *flags]
    assert cli.evolution_workers(cli.parse_train_args(argv), argv, ROOT / "train.py", tmp_path) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--evolve", "4", "--device", "0,0"],
            "names a device twice; for several workers on one device, use --children-per-device K",
        ),  # fmt: skip
        (["--children-per-device", "2"], "--children-per-device starts evolution workers: it needs --evolve"),
    ],
)
def test_a_device_named_twice_or_workers_without_evolve_are_refused(tmp_path, argv, message):
    args = cli.parse_train_args(argv)
    with pytest.raises(UserError, match=re.escape(message)):
        cli.check_flags(args)
        cli.evolution_workers(args, argv, ROOT / "train.py", tmp_path)


def test_the_progress_names_each_finished_child_once_with_its_worker(tmp_path):
    run(lambda hyp, child: synthetic_metrics(hyp), load_hyp(), load_meta(), 3, run_dir=tmp_path, plots=False,
        trust=TrustPlan(1, 1))  # fmt: skip
    study = optuna.load_study(study_name=tmp_path.name, storage=open_storage(tmp_path, None))
    pid = study.trials[0].user_attrs["worker"]["pid"]
    progress = Progress(tmp_path, None, tmp_path.name, 3, {pid: "cpu_0"}, TrustPlan(1, 1))
    lines = progress.poll(live_workers=2)
    children = [line for line in lines if line.startswith("evolve: child ")]
    assert len(children) == 3 and children[0].startswith("evolve: child 0 fitness ")
    assert children[0].endswith("(worker cpu_0; 1/3 finished, best 0.74421)")
    assert any(line.startswith("evolve: repeat of child 0 (seed 1) fitness") for line in lines)
    assert lines[-1].startswith("evolve: ETA ") and "2 workers" in lines[-1]
    assert progress.poll(live_workers=2) == [], "nothing new: nothing printed again"


def test_the_final_block_is_a_workers_last_report(tmp_path):
    log = tmp_path / "worker_cpu_0.log"
    log.write_text("evolve: views in a: x\nold\nevolve: child 3 fitness 1\nevolve: views in b: y\nevolve: verdict: v\n")
    assert final_block(log) == ["evolve: views in b: y", "evolve: verdict: v"]
    assert final_block(tmp_path / "missing.log") == []


def evolve_command(data: Path, project: Path, n: int) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--data", str(data), *TINY, "--device", "cpu", "--project",
            str(project), "--name", "evo", "--evolve", str(n), "--children-per-device", "2"]  # fmt: skip


def workers_of(pid: int) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"worker-of {pid}$"], capture_output=True, text=True).stdout
    return found.split()


def wait_for_a_child(run_dir: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Until a worker's log says a child trains (the study exists)."""
    deadline = time.monotonic() + timeout
    while not any("epoch 1/" in log.read_text() for log in run_dir.glob("worker_*.log")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.3)


def check_study(run_dir: Path, n: int) -> optuna.Study:
    study = optuna.load_study(study_name="evo", storage=open_storage(run_dir, None))
    complete = [trial for trial in study.trials if trial.state == TrialState.COMPLETE]
    assert len(complete) == n and not [trial for trial in study.trials if trial.state == TrialState.RUNNING]
    rows = (run_dir / "evolve.csv").read_text().splitlines()[1:]
    assert len(rows) == n and len(set(rows)) == n, "a child was trained twice"
    return study


@pytest.mark.slow
def test_two_workers_from_one_command_share_the_study_and_print_the_verdict_once(tiny_dataset, tmp_path):
    result = subprocess.run(evolve_command(tiny_dataset, tmp_path, 4), capture_output=True, text=True, cwd=ROOT,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    run_dir = tmp_path / "evo"
    study = check_study(run_dir, 4)
    assert len({trial.user_attrs["worker"]["pid"] for trial in study.trials}) == 2, "both workers trained children"
    lines = result.stdout.splitlines()
    assert lines[0].startswith("evolve: 2 workers share the study; their logs: ") and "worker_cpu_1.log" in lines[0]
    assert sum(line.startswith("evolve: child ") for line in lines) == 4
    assert sum(line.startswith("evolve: verdict: ") for line in lines) == 1 and lines[-1].startswith("evolve: verdict")
    assert all("verdict" in (run_dir / f"worker_cpu_{k}.log").read_text() for k in (0, 1))


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_the_rerun_completes(tiny_dataset, tmp_path):
    run_dir = tmp_path / "evo"
    command = evolve_command(tiny_dataset, tmp_path, 6)
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    wait_for_a_child(run_dir, parent)
    assert len(workers_of(parent.pid)) == 2
    parent.send_signal(signal.SIGINT)
    output = parent.communicate(timeout=120)[0]
    assert parent.returncode == 130 and "rerun the same command to continue" in output, output[-2000:]
    assert workers_of(parent.pid) == []
    rerun = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    study = check_study(run_dir, 6)
    assert any(trial.user_attrs.get("failure") == "interrupted" for trial in study.trials)


@pytest.mark.slow
def test_a_sigkilled_command_leaves_no_worker_behind(tiny_dataset, tmp_path):
    parent = subprocess.Popen(evolve_command(tiny_dataset, tmp_path, 50), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, cwd=ROOT)  # fmt: skip
    wait_for_a_child(tmp_path / "evo", parent)
    assert len(workers_of(parent.pid)) == 2
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 60
    while workers_of(parent.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert workers_of(parent.pid) == [], "a worker outlived its command"
