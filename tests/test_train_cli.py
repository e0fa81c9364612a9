"""train.py from the command line: a CPU smoke run, one-line user errors, and a 2-process gloo DDP run."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--img", "64", "--batch", "4", "--epochs", "1", "--workers", "0", "--device", "cpu"]


def run_train(*args: str, launcher: list[str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [*(launcher or [sys.executable]), str(ROOT / "train.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_smoke_run_writes_a_run_folder(tiny_dataset, tmp_path):
    result = run_train("--data", str(tiny_dataset), *TINY_ARGS, "--project", str(tmp_path), "--name", "smoke")
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "smoke"
    assert (run_dir / "weights" / "last.pt").is_file() and (run_dir / "results.csv").is_file()
    second = run_train("--data", str(tiny_dataset), *TINY_ARGS, "--project", str(tmp_path), "--name", "smoke",
                       "--noplots", "--nosave")  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    assert (tmp_path / "smoke2" / "weights" / "last.pt").is_file(), "a second run gets exp2; --nosave keeps last.pt"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "no/such/data.yaml"], "no/such/data.yaml"),
        (["--cfg", "yolov5q.yaml"], "yolov5q"),
        (["--device", "7"], "--device"),
        (["--hyp", "missing-hyp.yaml"], "missing-hyp.yaml"),
        (["--weights", "missing.pt"], "missing.pt"),
        (["--optimizer", "Lion"], "Lion"),
        (["--scheduler", "triangle"], "triangle"),
    ],
)
def test_user_errors_print_one_line_and_exit_non_zero(tiny_dataset, tmp_path, args, message):
    base = ["--data", str(tiny_dataset), *TINY_ARGS, "--project", str(tmp_path)]
    result = run_train(*base, *args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-2000:]


def test_malformed_hyp_yaml_is_a_one_line_error(tiny_dataset, tmp_path):
    bad_hyp = tmp_path / "bad.yaml"
    bad_hyp.write_text("lr0: [0.01\nmomentum: 0.9\n")
    result = run_train("--data", str(tiny_dataset), *TINY_ARGS, "--project", str(tmp_path), "--hyp", str(bad_hyp))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "bad.yaml" in result.stderr and "yaml" in result.stderr


def test_ddp_two_process_gloo_run(tiny_dataset, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]  # fmt: skip
    result = run_train("--data", str(tiny_dataset), *TINY_ARGS, "--project", str(tmp_path), "--name", "ddp",
                       launcher=launcher)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ddp" / "weights" / "last.pt").is_file()
    assert not (tmp_path / "ddp2").exists(), "only rank 0 creates the run folder"


def test_noval_still_saves_every_epoch_and_odd_img_is_rounded(tiny_dataset, tmp_path):
    args = ["--data", str(tiny_dataset), "--img", "60", "--batch", "4", "--epochs", "2", "--workers", "0",
            "--device", "cpu", "--project", str(tmp_path), "--name", "noval", "--noval", "--noplots"]  # fmt: skip
    result = run_train(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "using 64" in result.stderr
    rows = (tmp_path / "noval" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 2, "a row per epoch even when only the last epoch validates"
    assert "nan" in rows[1] and "nan" not in rows[2]


def test_data_yaml_defaults_fill_only_the_options_left_out(tmp_path):
    import train

    data = tmp_path / "d.yaml"
    data.write_text("path: .\ntrain: images\nval: images\nnames: [a]\n"
                    "defaults: {hyp: h.yaml, optimizer: AdamW, epochs: 7}\n")  # fmt: skip
    args = train.parse_args(["--data", str(data)])
    assert (args.hyp, args.optimizer, args.epochs) == (str(tmp_path / "h.yaml"), "AdamW", 7)
    args = train.parse_args(["--data", str(data), "--epochs", "3", "--optimizer", "SGD", "--hyp", "x.yaml"])
    assert (args.hyp, args.optimizer, args.epochs) == ("x.yaml", "SGD", 3)
    coco = train.parse_args(["--data", "coco128.yaml"])  # yolov5's defaults where the data yaml names none
    assert (Path(coco.hyp).name, coco.optimizer, coco.batch_size) == ("hyp.scratch-low.yaml", "SGD", 16)


@pytest.mark.parametrize(
    ("defaults", "message"),
    [
        ("{optimizer: Foo}", "'defaults': unknown optimizer 'Foo'"),
        ("{close_mosaic: -3}", "'defaults' key 'close_mosaic' (--close-mosaic) must be at least 0"),
        ("{epochs: 0}", "'defaults' key 'epochs' (--epochs) must be at least 1"),
    ],
)
def test_bad_data_yaml_defaults_are_errors_that_name_the_yaml(tmp_path, defaults, message):
    """They were refused later, as if the user had typed the flag."""
    import train
    from utils.errors import UserError

    data = tmp_path / "d.yaml"
    data.write_text(f"path: .\ntrain: images\nval: images\nnames: [a]\ndefaults: {defaults}\n")
    with pytest.raises(UserError) as error:
        train.parse_args(["--data", str(data)])
    assert str(error.value).startswith(f"{data}: ") and message in str(error.value)
