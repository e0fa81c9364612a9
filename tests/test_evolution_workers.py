"""Tests for sharing one study between worker processes: journal file, PostgreSQL, and a SIGKILLed worker."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from utils.errors import UserError
from utils.evolution.child import compute_fitness
from utils.evolution.storage import open_storage
from utils.evolution.views import CSV_METRICS
from utils.training.hyp import load_hyp

pytestmark = pytest.mark.slow  # starts worker processes (each imports torch through utils.evaluation.fitness)

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "evolve_worker.py"
WORKERS = 4
POSTGRES_PASSWORD = "evolve-secret"
CHILDREN = 12
TIMEOUT_S = 240


def start_worker(run_dir: Path, n: int, *extra: str) -> subprocess.Popen:
    command = [sys.executable, str(WORKER), str(run_dir), str(n), *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until_started(worker: subprocess.Popen, started: Path) -> None:
    """Until the worker's hanging run has started (it touches ``started``); fails if the worker ends first."""
    deadline = time.monotonic() + TIMEOUT_S
    while not started.exists():
        assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()[0]
        time.sleep(0.2)


def finish(workers: list[subprocess.Popen]) -> list[str]:
    outputs = [worker.communicate(timeout=TIMEOUT_S)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output
    return outputs


def read_csv(run_dir: Path) -> tuple[list[str], list[dict[str, float]]]:
    lines = (run_dir / "evolve.csv").read_text().splitlines()
    header = [cell.strip() for cell in lines[0].split(",")]
    rows = [dict(zip(header, map(float, line.split(",")))) for line in lines[1:]]
    return lines, rows


def check_shared_study(run_dir: Path, study: optuna.Study, n: int, confirmed: bool = False) -> None:
    """Exactly n rows under one header, no duplicate children, one base hyp, and the best row is the best (unless
    a confirmed winner replaced it in hyp_evolve.yaml)."""
    lines, rows = read_csv(run_dir)
    assert sum(line == lines[0] for line in lines) == 1 and len(rows) == n
    hyp_keys = list(load_hyp())
    hyps = [tuple(row[key] for key in hyp_keys) for row in rows]
    assert len(set(hyps)) == n, "duplicate children"
    base = tuple(float(f"{value:.5g}") for value in load_hyp().values())
    assert hyps.count(base) == 1, "the base hyp must be trained exactly once"
    completed = [trial for trial in study.trials if trial.state == TrialState.COMPLETE]
    assert len(completed) == n and len({trial.number for trial in completed}) == n
    assert not [trial for trial in study.trials if trial.state == TrialState.RUNNING]
    fitness = [compute_fitness({name: row[name] for name in CSV_METRICS}) for row in rows]
    best_row = rows[max(range(n), key=fitness.__getitem__)]
    assert max(fitness) == pytest.approx(study.best_value, rel=1e-4)
    best_yaml = yaml.safe_load((run_dir / "hyp_evolve.yaml").read_text())
    if confirmed:
        header = (run_dir / "hyp_evolve.yaml").read_text()
        assert "# verdict:" in header and ("confirmed winner" in header or "no confirmed hyp beats it" in header)
        assert any(best_yaml == pytest.approx({key: row[key] for key in hyp_keys}, rel=1e-4) for row in rows)
    else:
        assert best_yaml == pytest.approx({key: best_row[key] for key in hyp_keys}, rel=1e-4)


def test_four_workers_share_one_journal_study(tmp_path):
    run_dir = tmp_path / "evo"
    outputs = finish([start_worker(run_dir, CHILDREN, "--seconds", "0.5") for _ in range(WORKERS)])  # all join
    study = optuna.load_study(study_name="evo", storage=open_storage(run_dir, None))
    check_shared_study(run_dir, study, CHILDREN)
    workers = {trial.user_attrs["worker"]["pid"] for trial in study.trials}
    assert len(workers) > 1, "only one worker did any work"
    # The console: a child's header names its worker while others train too; the ETA says once it is an estimate.
    headers = [line for output in outputs for line in output.splitlines() if line.startswith("evolve: child ")]
    assert any(re.match(rf"evolve: child \d+/{CHILDREN} \(worker \d+\): ", line) for line in headers), headers
    assert all(output.count("an estimate") <= 1 for output in outputs)
    assert any("workers: an estimate" in output for output in outputs)


def test_sigkilled_worker_loses_nothing_and_resume_completes(tmp_path):
    run_dir, started = tmp_path / "evo", tmp_path / "started"
    worker = start_worker(run_dir, 6, "--hang-child", "3", "--started-file", str(started))
    wait_until_started(worker, started)
    rows_before = read_csv(run_dir)[0]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert len(rows_before) == 4  # header + children 0-2
    finish([start_worker(run_dir, 6)])
    study = optuna.load_study(study_name="evo", storage=open_storage(run_dir, None))
    assert study.trials[3].state == TrialState.FAIL
    assert "stopped without finishing" in study.trials[3].user_attrs["error"]
    lines, _ = read_csv(run_dir)
    assert lines[:4] == rows_before and len(lines) == 7
    check_shared_study(run_dir, study, 6)


def test_a_base_killed_while_it_trains_is_trained_again_and_the_study_gets_its_verdict(tmp_path):
    run_dir, started = tmp_path / "evo", tmp_path / "started"
    worker = start_worker(run_dir, 4, *TRUST, "--hang-child", "0", "--started-file", str(started))
    wait_until_started(worker, started)
    worker.send_signal(signal.SIGKILL)  # the first minute of a run: the base is training
    worker.wait()
    output = finish([start_worker(run_dir, 4, *TRUST)])[0]
    study = optuna.load_study(study_name="evo", storage=open_storage(run_dir, None))
    killed, retrained = study.trials[0], study.trials[1]
    assert killed.state == TrialState.FAIL and killed.user_attrs["failure"] == "worker stopped"
    assert retrained.user_attrs["lineage"]["base"] and retrained.state == TrialState.COMPLETE
    assert retrained.user_attrs["hyp"] == killed.user_attrs["hyp"] == pytest.approx(dict(load_hyp()))
    assert ("repeat", 1, 1, None) in evaluation_tasks(run_dir)  # the noise estimate, from the retrained base
    verdict = output.strip().splitlines()[-1]
    assert verdict.startswith("evolve: verdict:") and "no base result" not in verdict, verdict
    check_shared_study(run_dir, study, 4, confirmed=True)


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def skip_without_postgres(reason: str) -> None:
    """Skip, unless CI asked for the PostgreSQL test to run (REQUIRE_POSTGRES=1): then a missing server fails."""
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(f"REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL on loopback; initdb refuses root, so as root it runs as the postgres user."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        skip_without_postgres("PostgreSQL server binaries not installed (no /usr/lib/postgresql/*/bin/initdb)")
    folder = Path(tempfile.mkdtemp(prefix="evolve-pg-"))  # not pytest's 0700 tmp tree: postgres must enter it
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            import pwd

            account = pwd.getpwnam("postgres")
        except KeyError:
            skip_without_postgres("running as root and there is no postgres user to run initdb as")
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = free_port(), folder / "data"

    def call(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    password_file = folder / "password"
    password_file.write_text(f"{POSTGRES_PASSWORD}\n")
    if as_user:
        os.chown(password_file, account.pw_uid, account.pw_gid)
    # Password authentication over TCP, as on a real shared server; the local socket (createdb) trusts.
    call(str(bin_dir / "initdb"), "-D", str(data), "--auth-local=trust", "--auth-host=scram-sha-256",
         f"--pwfile={password_file}", "-U", "postgres", "--no-sync")  # fmt: skip
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    call(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o", options, "start")
    try:
        call(str(bin_dir / "createdb"), "-h", str(folder), "-p", str(port), "-U", "postgres", "evolve")
        yield f"postgresql://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{port}/evolve"  # the README's form
    finally:
        call(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.postgres
def test_four_workers_share_one_postgres_study(tmp_path, postgres_url):
    run_dir = tmp_path / "evo"
    extra = ("--storage", postgres_url, "--study-name", "pg-evo")
    finish([start_worker(run_dir, CHILDREN, *extra) for _ in range(WORKERS)])
    study = optuna.load_study(study_name="pg-evo", storage=open_storage(run_dir, postgres_url))
    check_shared_study(run_dir, study, CHILDREN)
    assert not (run_dir / "study.journal").exists()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda url: url.replace(POSTGRES_PASSWORD, "wrong"), "password authentication failed for user 'postgres'"),
        (lambda url: url.rsplit("/", 1)[0] + "/nosuchdb", "database 'nosuchdb' does not exist"),
    ],
)
def test_postgres_errors_name_the_problem_and_the_server(tmp_path, postgres_url, change, message):
    port = postgres_url.rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(UserError) as error:
        open_storage(tmp_path, change(postgres_url))
    assert message in str(error.value) and f"127.0.0.1:{port}" in str(error.value)
    assert POSTGRES_PASSWORD not in str(error.value) and "\n" not in str(error.value)


def test_unreachable_postgres_server_is_one_line_with_host_and_port(tmp_path):
    port = free_port()  # nothing listens there
    with pytest.raises(UserError) as error:
        open_storage(tmp_path, f"postgresql://user:pw@127.0.0.1:{port}/evolve")
    assert f"cannot reach a PostgreSQL server at 127.0.0.1:{port}" in str(error.value)
    assert ":pw@" not in str(error.value)


@pytest.mark.postgres
def test_readme_postgres_command_trains_children(tmp_path, postgres_url, tiny_dataset):
    """The README's multi-machine command, as written (a plain postgresql:// URL), on tiny data."""
    command = [sys.executable, str(ROOT / "train.py"), "--evolve", "2", "--epochs", "1", "--img", "64", "--batch", "4",
               "--workers", "0", "--device", "cpu", "--data", str(tiny_dataset), "--name", "evo-pg",
               "--project", str(tmp_path), "--storage", postgres_url, "--noplots"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    lines, _ = read_csv(tmp_path / "evo-pg")
    assert len(lines) == 1 + 2
    study = optuna.load_study(study_name="evo-pg", storage=open_storage(tmp_path, postgres_url))
    assert sum(trial.state == TrialState.COMPLETE for trial in study.trials) == 2


def evaluation_tasks(run_dir: Path, study_name: str = "evo") -> list[tuple]:
    evaluations = optuna.load_study(study_name=f"{study_name}/evaluations", storage=open_storage(run_dir, None))
    complete = [trial for trial in evaluations.trials if trial.state == TrialState.COMPLETE]
    return [tuple(trial.user_attrs["task"].values()) for trial in complete]


TRUST = ("--confirm", "3", "--confirm-seeds", "2", "--fidelity", "3", "--noise", "0.01")


def test_three_workers_share_the_confirmation_and_fidelity_runs(tmp_path):
    run_dir = tmp_path / "evo"
    outputs = finish([start_worker(run_dir, 8, *TRUST, "--seconds", "0.05") for _ in range(3)])
    tasks = evaluation_tasks(run_dir)
    assert len(tasks) == len(set(tasks)), "an evaluation was trained twice"
    kinds = [task[0] for task in tasks]
    assert kinds.count("fidelity") == 3 and kinds.count("repeat") in (6, 8)  # base: 2; top 3 (maybe the base): 2 each
    evaluations = optuna.load_study(study_name="evo/evaluations", storage=open_storage(run_dir, None))
    assert len({trial.user_attrs["worker"]["pid"] for trial in evaluations.trials}) > 1, "one worker did all the work"
    verdicts = [output.strip().splitlines()[-1] for output in outputs]
    assert all(line.startswith("evolve: verdict:") for line in verdicts) and len(set(verdicts)) == 1, verdicts
    study = optuna.load_study(study_name="evo", storage=open_storage(run_dir, None))
    check_shared_study(run_dir, study, 8, confirmed=True)


def test_a_sigkilled_confirmation_is_redone_once_on_resume(tmp_path):
    run_dir, started = tmp_path / "evo", tmp_path / "started"
    worker = start_worker(run_dir, 4, *TRUST, "--hang-evaluation", "0", "--started-file", str(started))
    wait_until_started(worker, started)
    worker.send_signal(signal.SIGKILL)  # inside the base's first repeat
    worker.wait()
    assert evaluation_tasks(run_dir) == []
    output = finish([start_worker(run_dir, 4, *TRUST)])[0]
    tasks = evaluation_tasks(run_dir)
    assert len(tasks) == len(set(tasks)) and ("repeat", 0, 1, None) in tasks
    assert "verdict:" in output.strip().splitlines()[-1]
    evaluations = optuna.load_study(study_name="evo/evaluations", storage=open_storage(run_dir, None))
    killed = evaluations.trials[0]
    assert killed.state == TrialState.FAIL and "stopped without finishing" in killed.user_attrs["error"]
