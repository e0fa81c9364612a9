"""A real ``train.py --evolve 3`` on tiny data: children train, every view is written, a rerun resumes toward N."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from utils.evolution.views import CSV_METRICS

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--img", "64", "--batch", "4", "--epochs", "1", "--workers", "0", "--device", "cpu", "--noplots"]


def run_evolve(data: Path, project: Path, children: int, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "train.py"), "--data", str(data), *TINY_ARGS, "--project", str(project),
               "--name", "evo", "--evolve", str(children), *extra]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)


def csv_rows(path: Path) -> list[list[str]]:
    return [[cell.strip() for cell in line.split(",")] for line in path.read_text().splitlines()]


def test_train_evolve_writes_all_views_and_resumes(tiny_dataset, tmp_path):
    first = run_evolve(tiny_dataset, tmp_path, 3)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "evo"
    rows = csv_rows(run_dir / "evolve.csv")
    assert rows[0][: len(CSV_METRICS)] == list(CSV_METRICS)
    assert len(rows) == 1 + 3, "one header and one row per finished child"
    assert (run_dir / "hyp_evolve.yaml").is_file() and (run_dir / "study.journal").is_file()
    best = yaml.safe_load((run_dir / "hyp_evolve.yaml").read_text())
    assert set(best) >= {"lr0", "mosaic", "anchor_t"}
    lines = first.stdout.strip().splitlines()
    assert "warmup trap" in first.stderr, "1 epoch of 3 batches is all warmup: the user is told once"
    assert first.stderr.count("warmup trap") == 1
    assert any(line.startswith("evolve: noise: pooled sd") for line in lines)
    assert lines[-1].startswith("evolve: verdict: "), lines[-3:]
    assert len(csv_rows(run_dir / "confirm.csv")) >= 1 + 2, "the base was trained with two more seeds"

    # A worker (or rerun) that would measure something else is refused before it writes anything.
    hyp = tmp_path / "hyp.other.yaml"
    hyp.write_text(yaml.safe_dump({**yaml.safe_load(Path(ROOT / "data/hyps/hyp.scratch-low.yaml").read_text()),
                                   "lr0": 0.02}))  # fmt: skip
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    for changed in (["--fitness", "mAP50-95=1"], ["--batch", "8"], ["--hyp", str(hyp)]):
        refused = run_evolve(tiny_dataset, tmp_path, 4, "--exist-ok", *changed)
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert refused.returncode == 2 and len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert "was started with a different" in errors[0], errors[0]
    assert "hyp.lr0=0.01" in errors[0]
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before

    again = run_evolve(tiny_dataset, tmp_path, 4, "--exist-ok")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(csv_rows(run_dir / "evolve.csv")) == 1 + 4, "rerunning resumes toward N instead of adding N more"


def test_evolve_with_plots_draws_the_pngs(tiny_dataset, tmp_path):
    command = [sys.executable, str(ROOT / "evolve.py"), "--data", str(tiny_dataset),
               *[arg for arg in TINY_ARGS if arg != "--noplots"], "--project", str(tmp_path), "--name", "evo",
               "--evolve", "2", "--confirm", "1", "--confirm-seeds", "1", "--fidelity", "2",
               "--fidelity-epochs", "2"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fidelity: " in result.stdout and "verdict: " in result.stdout.strip().splitlines()[-1]
    for name in ("evolve.csv", "hyp_evolve.yaml", "evolve.png", "fitness.png", "confirm.csv", "fidelity.csv",
                 "fidelity.png"):  # fmt: skip
        assert (tmp_path / "evo" / name).is_file(), f"missing {name}"


def test_evolve_with_a_hyp_key_missing_from_meta_is_one_clear_error(tiny_dataset, tmp_path):
    hyp = yaml.safe_load((ROOT / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    meta = yaml.safe_load((ROOT / "data" / "hyps" / "meta.yaml").read_text())
    del meta["mixup"]
    (tmp_path / "meta.yaml").write_text(yaml.safe_dump(meta))
    (tmp_path / "hyp.yaml").write_text(yaml.safe_dump(hyp))
    result = run_evolve(tiny_dataset, tmp_path, 2, "--meta", str(tmp_path / "meta.yaml"), "--confirm-seeds", "0")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "mixup" in result.stderr


def test_evolve_with_a_bad_flag_fails_once_before_any_child(tiny_dataset, tmp_path):
    result = run_evolve(tiny_dataset, tmp_path, 3, "--scheduler", "multistep", "--lr-milestones", "5", "2",
                        "--confirm-seeds", "0")  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--lr-milestones" in result.stderr
    assert not (tmp_path / "evo" / "evolve.csv").exists(), "no child was trained or recorded as failed"


def test_ctrl_c_says_how_to_continue(tiny_dataset, tmp_path):
    import signal
    import time

    command = [sys.executable, str(ROOT / "train.py"), "--data", str(tiny_dataset), *TINY_ARGS, "--epochs", "200",
               "--project", str(tmp_path), "--name", "evo", "--evolve", "3"]  # fmt: skip
    # A test run started as a background job of a script inherits an ignored SIGINT, and Python then never raises
    # KeyboardInterrupt: the worker gets the default disposition, as an interactive shell gives it.
    worker = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    journal, deadline = tmp_path / "evo" / "study.journal", time.monotonic() + 300
    while not (journal.is_file() and "child" in journal.read_text()):  # child 0 has been claimed and is training
        assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()
        time.sleep(0.2)
    time.sleep(1.0)
    worker.send_signal(signal.SIGINT)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 130 and "Traceback" not in err
    assert "rerun the same command to continue" in out


def test_evolve_with_halving_reports_epochs_trained_as_steps(tiny_dataset, tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    result = run_evolve(tiny_dataset, tmp_path, 3, "--epochs", "2", "--prune", "halving", "--confirm", "0",
                        "--confirm-seeds", "0")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "evo" / "study.journal")))
    study = optuna.load_study(study_name="evo", storage=storage)
    assert study.user_attrs["setup"]["pruner"] == "halving"
    for trial in study.trials:
        assert set(trial.intermediate_values) <= {1, 2} and 1 in trial.intermediate_values, "step = epochs trained"
    completed = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert len(csv_rows(tmp_path / "evo" / "evolve.csv")) == 1 + len(completed)


def test_a_negative_fitness_weight_is_refused_before_any_work(tiny_dataset, tmp_path):
    result = run_evolve(tiny_dataset, tmp_path, 2, "--fitness", "mAP50=-1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: fitness weight for 'mAP50' must be a finite number >= 0, got '-1'"
    )
    assert not (tmp_path / "evo").exists()
