"""Careless and hostile input: each case exits non-zero with one ``error:`` line naming the problem, prints no
traceback, fails before any dataset work, and leaves every file the user made byte-identical."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--img", "64", "--batch", "4", "--epochs", "1", "--workers", "0", "--device", "cpu"]


def run_script(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def assert_one_error_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, no traceback, exactly one ``error:`` line, holding every needle; returns that line."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def generated_data_yaml(folder: Path, dataset: str) -> Path:
    """A copy of shapes.yaml (a ``generate:`` dataset) whose ``path`` is ``dataset``, with tiny generate counts."""
    content = yaml.safe_load((ROOT / "data" / "shapes.yaml").read_text())
    content.pop("defaults", None)
    content["path"] = dataset
    content["generate"] = {"seed": 0, "train": 4, "val": 2, "img_size": 64}
    path = folder / "mine.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


# --- 1. generated data never touches what it did not make ---------------------------------------------------------


@pytest.fixture
def users_dataset(tmp_path: Path) -> Path:
    """A folder that looks like a user's own dataset: images, labels and notes, no generator stamp."""
    root = tmp_path / "my_dataset"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "images" / "train" / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "notes.md").write_text("three weeks of labelling\n")
    return root


def test_generate_refuses_a_folder_it_did_not_make(tmp_path, users_dataset):
    from utils.data.config import load_data_config

    before = snapshot(users_dataset)
    with pytest.raises(UserError) as error:
        load_data_config(generated_data_yaml(tmp_path, str(users_dataset)))
    assert str(users_dataset) in str(error.value) and "mine.yaml" in str(error.value)
    assert snapshot(users_dataset) == before


def test_generate_library_call_refuses_a_folder_it_did_not_make(users_dataset):
    from utils.data.synthetic import generate_dataset

    before = snapshot(users_dataset)
    with pytest.raises(UserError, match="did not make"):
        generate_dataset(users_dataset, num_train=2, num_val=1, img_size=64)
    assert snapshot(users_dataset) == before


def test_generate_fills_an_empty_folder_and_replaces_its_own_stale_copy(tmp_path):
    from utils.data.config import load_data_config
    from utils.data.synthetic import STAMP_FILE

    root = tmp_path / "empty"
    root.mkdir()
    config = load_data_config(generated_data_yaml(tmp_path, str(root)))
    assert len(config.image_files("train")) == 4 and (root / STAMP_FILE).is_file()
    (root / STAMP_FILE).write_text('{"version": 0}\n')  # our stamp, an older generator: ours to replace
    # what training adds (the label cache, --cache disk arrays, a write a kill interrupted) is ours to replace too
    for made in ("labels/train.cache", "images/train/000000.64.npy", "labels/.train.cache.k3j_9x0a.tmp"):
        (root / made).write_bytes(b"x")
    config = load_data_config(generated_data_yaml(tmp_path, str(root)))
    assert len(config.image_files("val")) == 2 and '"version": 0' not in (root / STAMP_FILE).read_text()
    assert not (root / "images" / "train" / "000000.64.npy").exists()


@pytest.mark.parametrize("added", ["NOTES.md", "images/train/my_photo.jpg", "labels/train/my_photo.txt", "extra/a.txt"])
def test_generate_keeps_a_stamped_folder_that_holds_the_users_files(tmp_path, added):
    """Regenerating replaces the whole folder: a file a user added to a generated dataset (their own image and
    label, notes) makes the stale copy theirs as well, and it is refused, naming the file."""
    from utils.data.config import load_data_config
    from utils.data.synthetic import STAMP_FILE

    root = tmp_path / "generated"
    load_data_config(generated_data_yaml(tmp_path, str(root)))
    (root / added).parent.mkdir(parents=True, exist_ok=True)
    (root / added).write_text("mine\n")
    (root / STAMP_FILE).write_text('{"version": 0}\n')  # stale: the next load would regenerate
    before = snapshot(root)
    with pytest.raises(UserError) as error:
        load_data_config(generated_data_yaml(tmp_path, str(root)))
    assert str(root) in str(error.value) and f"such as {added}" in str(error.value)
    assert snapshot(root) == before


def test_train_cli_keeps_the_users_folder(tmp_path, users_dataset):
    before = snapshot(users_dataset)
    data = generated_data_yaml(tmp_path, str(users_dataset))
    result = run_script("train.py", "--data", str(data), *TINY_ARGS, "--project", str(tmp_path / "runs"))
    assert_one_error_line(result, str(users_dataset), "refusing to replace")
    assert snapshot(users_dataset) == before


# --- 2. existing evolution files are kept --------------------------------------------------------------------------


def synthetic_objective(hyp: dict[str, float], child: object) -> dict[str, float]:
    score = 0.5 - abs(hyp["lr0"] - 0.01)
    return {"metrics/mAP_0.5": score + 0.1, "metrics/mAP_0.5:0.95": score}


def test_evolve_keeps_an_evolve_csv_it_did_not_write(tmp_path, capsys):
    from utils.evolution import load_meta, run
    from utils.training.hyp import load_hyp

    run_dir = tmp_path / "evo"
    run_dir.mkdir()
    yolov5_csv = "metrics/precision,metrics/recall\n0.5,0.4\n"
    (run_dir / "evolve.csv").write_text(yolov5_csv)
    (run_dir / "hyp_evolve.yaml").write_text("# yolov5's best\nlr0: 0.02\n")
    run(synthetic_objective, load_hyp(), load_meta(), 2, run_dir=run_dir, plots=False)
    assert (run_dir / "evolve.backup.csv").read_text() == yolov5_csv
    assert (run_dir / "hyp_evolve.backup.yaml").read_text() == "# yolov5's best\nlr0: 0.02\n"
    assert len((run_dir / "evolve.csv").read_text().splitlines()) == 1 + 2
    out = capsys.readouterr().out
    assert "evolve.backup.csv" in out and "--evolve-from" in out
    run(synthetic_objective, load_hyp(), load_meta(), 3, run_dir=run_dir, plots=False)  # resume: its own files
    assert not (run_dir / "evolve.backup2.csv").exists()
    (run_dir / "evolve.csv").write_text("edited by hand\n")
    run(synthetic_objective, load_hyp(), load_meta(), 4, run_dir=run_dir, plots=False)
    assert (run_dir / "evolve.backup2.csv").read_text() == "edited by hand\n"
    assert len((run_dir / "evolve.csv").read_text().splitlines()) == 1 + 4


def test_evolve_moves_aside_a_folder_with_a_views_name(tmp_path, capsys):
    """A folder named like a view (evolve.csv/) was an IsADirectoryError after the first child: it moves aside whole."""
    from utils.evolution import load_meta, run
    from utils.training.hyp import load_hyp

    run_dir = tmp_path / "evo"
    (run_dir / "evolve.csv").mkdir(parents=True)
    (run_dir / "evolve.csv" / "notes.txt").write_text("mine\n")
    run(synthetic_objective, load_hyp(), load_meta(), 2, run_dir=run_dir, plots=False)
    assert (run_dir / "evolve.backup.csv" / "notes.txt").read_text() == "mine\n"
    assert len((run_dir / "evolve.csv").read_text().splitlines()) == 1 + 2
    out = capsys.readouterr().out
    assert "kept as evolve.backup.csv" in out and "--evolve-from" not in out


# --- 4. a run in use is not resumed ---------------------------------------------------------------------------------

HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from utils.run_dir import RunFolderLock
held = RunFolderLock(Path({folder!r})).acquire()  # held while referenced, as a training run holds it
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def held_folder(tmp_path):
    """A run folder locked by another live process (as a training run holds its folder); yields (folder, process)."""
    folder = tmp_path / "project" / "busy"
    (folder / "weights").mkdir(parents=True)
    (folder / "opt.yaml").write_text("epochs: 3\n")  # a train.py run folder
    code = HOLDER.format(root=str(ROOT), folder=str(folder))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    yield folder, holder
    holder.kill()
    holder.wait()


def test_resume_of_a_run_in_use_is_refused(held_folder, tiny_checkpoint):
    folder, holder = held_folder
    checkpoint = folder / "weights" / "last.pt"
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    before = snapshot(folder)
    result = run_script("train.py", "--resume", str(checkpoint))
    assert_one_error_line(result, str(folder), "in use", f"pid {holder.pid}")
    assert snapshot(folder) == before


def test_training_into_a_folder_in_use_is_refused(held_folder, tiny_dataset):
    folder, _ = held_folder
    args = ["--data", str(tiny_dataset), *TINY_ARGS, "--project", str(folder.parent), "--name", "busy", "--exist-ok"]
    assert_one_error_line(run_script("train.py", *args), str(folder), "in use")
    assert not (folder / "results.csv").exists()


def test_a_lock_left_by_a_killed_process_does_not_block(held_folder):
    from utils.run_dir import RunFolderLock

    folder, holder = held_folder
    with pytest.raises(UserError, match="in use"):
        RunFolderLock(folder).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunFolderLock(folder):  # the kernel dropped the dead process's lock; its file is still there
        assert (folder / ".train.lock").is_file()


def test_bare_resume_says_which_run_it_picked(tmp_path, caplog):
    from utils.training.launch import resume_checkpoint_path

    for name, age in (("exp", 100), ("exp2", 0)):
        checkpoint = tmp_path / "runs" / "train" / name / "weights" / "last.pt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"x")
        os.utime(checkpoint, (time.time() - age, time.time() - age))
    with caplog.at_level("INFO", logger="train"):
        picked = resume_checkpoint_path(True, tmp_path / "runs" / "train")
    assert picked.parent.parent.name == "exp2" and str(picked) in caplog.text


def test_resume_refuses_a_checkpoint_outside_a_run_folder_and_touches_nothing(tmp_path):
    """A run resumes in <run>/weights/..'s folder: a checkpoint elsewhere would make its grandparent the run folder
    and rewrite the hyp.yaml, opt.yaml and results.csv a user keeps there."""
    (folder := tmp_path / "mine" / "ck").mkdir(parents=True)
    (tmp_path / "mine" / "hyp.yaml").write_text("my notes\n")
    (folder / "ckpt.pt").write_bytes(b"x")
    before = snapshot(tmp_path)
    result = run_script("train.py", "--resume", str(folder / "ckpt.pt"), "--device", "cpu")
    assert_one_error_line(result, f"--resume {folder / 'ckpt.pt'}: ", "must be <run>/weights/<file>.pt")
    (weights := tmp_path / "proj" / "weights").mkdir(parents=True)  # a weights/ folder, but no train.py run's
    (weights / "last.pt").write_bytes(b"x")
    (tmp_path / "proj" / "hyp.yaml").write_text("my notes\n")
    before = snapshot(tmp_path)
    result = run_script("train.py", "--resume", str(weights / "last.pt"), "--device", "cpu")
    assert_one_error_line(result, f"{tmp_path / 'proj'} has no opt.yaml, so it is not the folder of a train.py run")
    missing = tmp_path / "nope" / "weights" / "last.pt"  # the run folder's lock was taken before the file was checked
    assert_one_error_line(run_script("train.py", "--resume", str(missing)), str(missing), "no such checkpoint file")
    assert snapshot(tmp_path) == before


def test_resume_refuses_a_run_folder_whose_opt_yaml_is_another_runs(tmp_path, monkeypatch):
    from utils.training import launch
    from utils.training.hyp import load_hyp
    from utils.training.launch import resume_state

    options = {"data": "a.yaml", "cfg": "yolov5n.yaml", "epochs": 5}
    checkpoint = tmp_path / "run" / "weights" / "last.pt"
    state = {"training_model": {}, "options": options, "epoch": 1, "hyp": load_hyp()}  # what last.pt holds
    monkeypatch.setattr(launch, "load_checkpoint", lambda path: state if path == checkpoint else None)
    checkpoint.parent.mkdir(parents=True)
    (tmp_path / "run" / "opt.yaml").write_text(yaml.safe_dump(options))
    assert resume_state(checkpoint)[0] == options  # its own opt.yaml: resumed
    (tmp_path / "run" / "opt.yaml").write_text(yaml.safe_dump({**options, "data": "b.yaml"}))
    with pytest.raises(UserError, match="is not the opt.yaml of the run in"):
        resume_state(checkpoint)


# --- 5. no traceback for user input --------------------------------------------------------------------------------

BINARY = b"PK\x03\x04\x80\x81\xfe\xff binary, as a checkpoint or an image is"


@pytest.mark.parametrize("reader", ["hyp", "cfg", "meta", "evolve-from", "image list"])
def test_a_binary_file_where_text_belongs_is_one_error_naming_it(tmp_path, reader):
    """A .pt passed as --hyp, --cfg or --meta, a binary --evolve-from, a binary .txt image list: each was a
    UnicodeDecodeError traceback."""
    from models.yolo import load_model_cfg
    from utils.data.config import list_images
    from utils.evolution import load_meta
    from utils.evolution.importer import read_evolve_csv
    from utils.training.hyp import read_hyp_file

    path = tmp_path / {"evolve-from": "evolve.csv", "image list": "train.txt"}.get(reader, "best.pt")
    path.write_bytes(BINARY)
    read = {
        "hyp": lambda: read_hyp_file(path),
        "cfg": lambda: load_model_cfg(path),
        "meta": lambda: load_meta(path),
        "evolve-from": lambda: read_evolve_csv(path, None, set()),
        "image list": lambda: list_images([path], tmp_path),
    }[reader]
    with pytest.raises(UserError, match="not UTF-8 text") as error:
        read()
    assert str(path) in str(error.value)


def test_a_names_map_with_keys_of_mixed_types_is_one_error(tmp_path):
    from utils.data.config import load_data_config

    path = tmp_path / "data.yaml"
    path.write_text("path: .\ntrain: images\nval: images\nnames: {0: circle, ring: 1}\n")
    with pytest.raises(UserError, match="key 'names' must map the ids 0..1 to names"):
        load_data_config(path)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [("lr0", -0.01, "> 0"), ("mosaic", 1.5, "in [0, 1]"), ("momentum", 1.0, "in [0, 1)"), ("anchor_t", 0.5, ">= 1")],
)
def test_hyp_values_out_of_range_name_key_file_and_range(tmp_path, default_hyp, key, value, allowed):
    from utils.training.hyp import load_hyp

    path = tmp_path / "hyp.bad.yaml"
    path.write_text(yaml.safe_dump({**default_hyp, key: value}))
    with pytest.raises(UserError) as error:
        load_hyp(path)
    assert f"'{key}'" in str(error.value) and str(path) in str(error.value) and allowed in str(error.value)


def test_shipped_hyps_are_within_range():
    from utils.training.hyp import load_hyp

    for path in sorted((ROOT / "data" / "hyps").glob("hyp.*.yaml")):
        load_hyp(path)


def test_meta_bounds_beyond_a_keys_range_are_refused(tmp_path, tiny_dataset):
    meta = yaml.safe_load((ROOT / "data" / "hyps" / "meta.yaml").read_text())
    meta["lr0"] = {"gain": 1, "low": 0.0, "high": 0.1}
    path = tmp_path / "meta.yaml"
    path.write_text(yaml.safe_dump(meta))
    result = run_script("train.py", "--data", str(tiny_dataset), *TINY_ARGS, "--evolve", "2", "--meta", str(path),
                        "--project", str(tmp_path / "runs"))  # fmt: skip
    assert_one_error_line(result, "'lr0'", "[0, 0.1]", "> 0")


def test_negative_lr0_on_the_command_line(tmp_path, tiny_dataset, default_hyp):
    hyp = tmp_path / "hyp.neg.yaml"
    hyp.write_text(yaml.safe_dump({**default_hyp, "lr0": -0.01}))
    result = run_script("train.py", "--data", str(tiny_dataset), *TINY_ARGS, "--hyp", str(hyp),
                        "--project", str(tmp_path / "runs"))  # fmt: skip
    assert_one_error_line(result, "'lr0'", "hyp.neg.yaml", "> 0")


def test_project_that_is_a_file(tmp_path, tiny_dataset):
    project = tmp_path / "notes.txt"
    project.write_text("mine\n")
    result = run_script("train.py", "--data", str(tiny_dataset), *TINY_ARGS, "--project", str(project))
    assert_one_error_line(result, str(project), "is a file")
    assert project.read_text() == "mine\n"


@pytest.mark.parametrize(
    ("name", "message"),
    [("/", "must end in a folder name"), ("..", "must end in a folder name"), ("a" * 300, "name too long")],
)
def test_run_folder_names_that_cannot_be_folders_are_one_line_errors(tmp_path, name, message):
    """--name / was a ValueError from Path.with_name, a 300-character name an OSError: tracebacks."""
    from utils.run_dir import increment_path, make_folder

    for exist_ok in (False, True):
        with pytest.raises(UserError, match=message):
            increment_path(tmp_path / "runs" / name, exist_ok=exist_ok)
    with pytest.raises(UserError, match="cannot create folder /proc/x"):  # --project on a pseudo file system
        make_folder(Path("/proc/x"))


def test_exist_ok_keeps_the_files_already_in_the_folder(tmp_path, tiny_dataset):
    """--exist-ok reused the folder and replaced opt.yaml, hyp.yaml and the weights, and appended to results.csv
    (then failed plotting it, when it was the user's own). They now move to backup names first."""
    run = tmp_path / "runs" / "mine"
    (run / "weights").mkdir(parents=True)
    users = {"results.csv": "a,b\n1,2\n", "opt.yaml": "note: mine\n", "hyp.yaml": "lr0: 0.5\n",
             "weights/last.pt": "my weights", "weights/best.pt": "my best", "notes.txt": "mine\n"}  # fmt: skip
    for name, text in users.items():
        (run / name).write_text(text)
    result = run_script("train.py", "--data", str(tiny_dataset), *TINY_ARGS, "--project", str(tmp_path / "runs"),
                        "--name", "mine", "--exist-ok")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    backup = {name: (run / name).with_name(f"{Path(name).stem}.backup{Path(name).suffix}") for name in users}
    for name, text in users.items():
        assert (run / name if name == "notes.txt" else backup[name]).read_text() == text, name
    assert "kept as results.backup.csv" in result.stderr
    assert len((run / "results.csv").read_text().splitlines()) == 1 + 1  # this run's header and its one epoch
    from utils.training.checkpoint import load_checkpoint

    assert load_checkpoint(run / "weights" / "last.pt")["epoch"] == 0
    # Fine-tuning from the folder's own best.pt into the same folder: the file it starts from is copied aside, not
    # moved away before the model is built from it.
    (run / "weights" / "best.pt").write_bytes((run / "weights" / "last.pt").read_bytes())
    result = run_script("train.py", "--data", str(tiny_dataset), *TINY_ARGS, "--project", str(tmp_path / "runs"),
                        "--name", "mine", "--exist-ok", "--weights", str(run / "weights" / "best.pt"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(run / "weights" / "best.backup2.pt")["epoch"] == 0


def test_corrupt_journal_line_names_file_and_line_and_keeps_evolve_csv(tmp_path, tiny_dataset):
    from utils.evolution import load_meta, run
    from utils.training.hyp import load_hyp

    run_dir = tmp_path / "evo"
    run(synthetic_objective, load_hyp(), load_meta(), 3, run_dir=run_dir, plots=False)
    journal = run_dir / "study.journal"
    lines = journal.read_text().splitlines(keepends=True)
    lines[4] = "{this is not json\n"
    journal.write_text("".join(lines))
    before = snapshot(run_dir)
    result = run_script("train.py", "--data", str(tiny_dataset), *TINY_ARGS, "--evolve", "5",
                        "--project", str(tmp_path), "--name", "evo")  # fmt: skip
    assert_one_error_line(result, str(journal), "line 5", "--evolve-from")
    assert snapshot(run_dir) == before
    with pytest.raises(UserError, match="line 5"):  # the library path says the same
        run(synthetic_objective, load_hyp(), load_meta(), 5, run_dir=run_dir, plots=False)
    assert snapshot(run_dir) == before
    for entry in ('{"note": "merged by hand"}\n', "[1, 2]\n", '"text"\n'):  # JSON, but no journal entry: was a KeyError
        journal.write_text("".join([*lines[:4], entry, *lines[5:]]))
        with pytest.raises(UserError, match="line 5 is not a valid journal entry"):
            run(synthetic_objective, load_hyp(), load_meta(), 5, run_dir=run_dir, plots=False)


def test_a_journal_write_cut_short_is_set_aside_and_the_evolution_goes_on(tmp_path, capsys):
    """A last line without its newline (a full disk, a crash mid-write): Optuna skipped it, then appended the next
    entry onto it (AssertionError, and the journal damaged for good). It is moved aside and cut off."""
    from utils.evolution import load_meta, run
    from utils.training.hyp import load_hyp

    run_dir = tmp_path / "evo"
    first = (  # in a process of its own, which is gone when the rerun comes, as a crashed worker is
        "from tests.test_bad_input import synthetic_objective\nfrom utils.evolution import load_meta, run\n"
        "from utils.training.hyp import load_hyp\n"
        f"run(synthetic_objective, load_hyp(), load_meta(), 2, run_dir={str(run_dir)!r}, plots=False)\n"
    )
    subprocess.run([sys.executable, "-c", first], cwd=ROOT, check=True, capture_output=True)
    journal = run_dir / "study.journal"
    data = journal.read_bytes()
    last = data[:-1].rsplit(b"\n", 1)[1]
    journal.write_bytes(data[: len(data) - 1 - len(last) // 2])
    tail = last[: len(last) - len(last) // 2]
    study = run(synthetic_objective, load_hyp(), load_meta(), 3, run_dir=run_dir, plots=False)
    assert len([trial for trial in study.trials if trial.state.name == "COMPLETE"]) == 3
    assert (run_dir / "study.journal.unfinished").read_bytes() == tail + b"\n"
    assert "ended in a write cut short" in capsys.readouterr().out
    run(synthetic_objective, load_hyp(), load_meta(), 4, run_dir=run_dir, plots=False)  # the journal reads cleanly


def test_a_worker_mends_a_write_cut_short_while_it_runs_and_keeps_a_whole_last_entry(tmp_path, capsys):
    """Another worker dies mid-write while this one holds the journal open: this one's next write mends the tail
    before appending. A last entry that only lacks its newline keeps its content."""
    import optuna

    from utils.evolution.storage import open_storage

    study = optuna.create_study(storage=open_storage(tmp_path, None), study_name="s")
    journal = tmp_path / "study.journal"
    whole = journal.read_bytes()
    with journal.open("ab") as file:
        file.write(b'{"op_code":4,"worker_id":"w","study_id":0,"dat')  # a worker killed mid-write
    study.set_user_attr("after", 1)
    assert "cut short" in capsys.readouterr().out
    assert optuna.load_study(study_name="s", storage=open_storage(tmp_path, None)).user_attrs == {"after": 1}
    journal.write_bytes(journal.read_bytes()[:-1])  # a whole entry without its newline (an editor stripped it)
    reopened = optuna.load_study(study_name="s", storage=open_storage(tmp_path, None))
    assert reopened.user_attrs == {"after": 1} and journal.read_bytes().endswith(b"\n")
    assert "lacked a newline: added" in capsys.readouterr().out
    assert journal.read_bytes().startswith(whole)


def test_a_copied_run_folder_is_refused_instead_of_starting_a_second_study(tmp_path):
    """Its journal holds the original folder's study: a new study there hid the finished children from the views."""
    from utils.evolution import load_meta, run
    from utils.training.hyp import load_hyp

    run(synthetic_objective, load_hyp(), load_meta(), 2, run_dir=tmp_path / "evo1", plots=False)
    shutil.copytree(tmp_path / "evo1", tmp_path / "evoM")
    before = snapshot(tmp_path / "evoM")
    with pytest.raises(UserError, match="holds the evolution 'evo1', not 'evoM'.*--evolve-from"):
        run(synthetic_objective, load_hyp(), load_meta(), 3, run_dir=tmp_path / "evoM", plots=False)
    assert snapshot(tmp_path / "evoM") == before


@pytest.mark.parametrize("flag", ["--data", "--hyp", "--cfg", "--meta"])
def test_a_yaml_nested_past_the_recursion_limit_is_one_line(tmp_path, flag):
    """yaml.safe_load recurses once per level: thousands of nested lists were a RecursionError traceback."""
    deep = tmp_path / "deep.yaml"
    deep.write_text("names: " + "[" * 5000 + "]" * 5000 + "\n")
    result = run_script("train.py", *TINY_ARGS, "--evolve", "1", "--project", str(tmp_path), flag, str(deep))
    assert_one_error_line(result, str(deep), "nested too deep to read")


# --- 5 and 6. flags: one message each, no abbreviations ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--img", "0"], "--img must be at least 1"),
        (["--img", "-32"], "--img must be at least 1"),
        (["--batch", "0"], "--batch must be at least 1"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--evolve", "0"], "--evolve must be at least 1"),
        (["--workers", "-1"], "--workers must be at least 0"),
        (["--seed", "-1"], "--seed must be at least 0"),
        (["--seed", "99999999999"], "--seed must be at most 2147483647"),
        (["--name", "."], "--name must end in a folder name"),
        (["--freeze", "-1"], "--freeze takes layer indices"),
        (["--freeze", "0", "30"], "--freeze: the model has layers 0-24, not 30"),
        (["--freeze-h", "lr0"], "unrecognized arguments: --freeze-h"),
        (["--optimizer", "Lion"], "Lion"),
    ],
)
def test_train_flags_out_of_range_or_unknown(tmp_path, tiny_dataset, args, message):
    result = run_script("train.py", "--data", str(tiny_dataset), *TINY_ARGS, "--project", str(tmp_path), *args)
    assert_one_error_line(result, message)
    assert not any(tmp_path.iterdir()), "nothing is written for a bad flag"


@pytest.mark.parametrize(
    ("script", "args", "abbreviation"),
    [
        ("val.py", ["--weights", "x.pt", "--conf", "0.5"], "--conf"),  # --conf-thres
        ("detect.py", ["--weights", "x.pt", "--source", "x.jpg", "--conf", "0.5"], "--conf"),
        ("evolve.py", ["--hy", "x.yaml"], "--hy"),  # --hyp
    ],
)
def test_other_clis_take_no_abbreviations(script, args, abbreviation):
    assert_one_error_line(run_script(script, *args), f"unrecognized arguments: {abbreviation}")


# --- 7. cheap checks first ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("evolve", [False, True])
@pytest.mark.parametrize("weights", ["missing.pt", "corrupt.pt"])
def test_bad_weights_fail_before_the_dataset_is_made(tmp_path, weights, evolve):
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    dataset = tmp_path / "fresh"
    data = generated_data_yaml(tmp_path, str(dataset))
    args = ["--data", str(data), *TINY_ARGS, "--project", str(tmp_path / "runs"), "--weights", str(tmp_path / weights)]
    result = run_script("train.py", *args, *(["--evolve", "2"] if evolve else []))
    assert_one_error_line(result, weights)
    assert not dataset.exists(), "the weights are checked before the dataset is generated or scanned"


def test_unreachable_storage_fails_before_the_dataset_is_made(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dataset = tmp_path / "fresh"
    args = ["--data", str(generated_data_yaml(tmp_path, str(dataset))), *TINY_ARGS, "--evolve", "2",
            "--project", str(tmp_path / "runs"), "--storage", f"postgresql://u@127.0.0.1:{port}/evolve"]  # fmt: skip
    assert_one_error_line(run_script("train.py", *args), f"127.0.0.1:{port}", "cannot reach")
    assert not dataset.exists()


@pytest.mark.parametrize("url", ["postgresql://u@h:abc/db", "postgresql://u@[::1/db", "not a url"])
def test_a_malformed_storage_url_is_one_error_line(url):
    """A port that is not a number was a ValueError traceback from SQLAlchemy's URL parser."""
    from utils.evolution.storage import database_url

    with pytest.raises(UserError, match="--storage must be a database URL"):
        database_url(url)


# --- out of memory ----------------------------------------------------------------------------------------------


def test_running_out_of_memory_is_one_error_line_not_a_traceback(capsys):
    """``detect.py --img 60000`` ended in OpenCV's allocation error with a traceback; torch's CPU allocator and numpy
    fail the same way. Any other error still propagates."""
    import cv2
    import numpy as np
    import torch

    from utils.errors import OUT_OF_MEMORY_EXIT_CODE, run_cli

    def cv2_out_of_memory():
        raise cv2.error(
            "OpenCV(4.10.0) alloc.cpp:73: error: (-4:Insufficient memory) Failed to allocate 8648460000 bytes"
        )

    for fail in (cv2_out_of_memory, lambda: torch.empty(10**14), lambda: np.empty(10**15)):
        assert run_cli(fail) == OUT_OF_MEMORY_EXIT_CODE
        err = capsys.readouterr().err
        assert err.startswith("error: out of memory (") and "--img" in err and len(err.splitlines()) == 1
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(lambda: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(cv2.error):
        run_cli(lambda: cv2.resize(np.zeros((4, 4, 3), np.uint8), (0, 0)))
