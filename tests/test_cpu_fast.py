"""Tests for --cpu-fast (utils/training/trainer.py, engine.py, utils/device.py): channels_last and bf16 autocast on a
CPU give finite losses close to float32's, keep the weights, EMA and BatchNorm statistics in float32, and follow
the flag and the CPU's bf16 support."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from utils import cli
from utils import device as device_module
from utils.data.prepared import prepare_data
from utils.errors import UserError
from utils.training import trainer
from utils.training.options import OutputOptions, TrainOptions
from utils.training.trainer import build_detector, build_step_context, build_train_loader, train_one_epoch


@pytest.fixture(scope="module")
def prepared(tiny_dataset: Path):
    return prepare_data(tiny_dataset, 64)


def one_batch_epoch(prepared, hyp: dict, cpu_fast: bool) -> tuple[dict[str, float], torch.nn.Module, object]:
    """One epoch over the first batch with a fresh seeded detector; the loss is computed before the step."""
    options = TrainOptions(epochs=1, batch_size=4, workers=0, autoanchor=False, cpu_fast=cpu_fast,
                           outputs=OutputOptions(show_progress=False, plots=False))  # fmt: skip
    torch.manual_seed(0)
    model = build_detector(hyp, options, prepared)
    _, loader = build_train_loader(hyp, options, prepared)
    batch = next(iter(loader))
    context = build_step_context(model, hyp, options, prepared, num_batches=1)
    means = train_one_epoch(model, [batch], context, epoch=0, epochs=1, show_progress=False)
    return means, model, context


def test_bf16_autocast_and_float32_losses_are_finite_and_close(prepared, default_hyp, monkeypatch) -> None:
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: True)  # autocast runs (emulated) on any CPU
    hyp = {key: float(value) for key, value in default_hyp.items()}
    plain, _, plain_context = one_batch_epoch(prepared, hyp, cpu_fast=False)
    fast, model, context = one_batch_epoch(prepared, hyp, cpu_fast=True)
    assert not plain_context.amp and context.amp and not context.scaler.is_enabled()  # bf16 needs no loss scale
    for name, value in plain.items():
        assert math.isfinite(fast[name]) and fast[name] == pytest.approx(value, rel=0.05), name
    assert plain != fast  # bf16 really ran: the figures differ in their low bits
    floats = [*model.state_dict().values(), *context.ema.ema.state_dict().values()]
    assert all(tensor.dtype == torch.float32 for tensor in floats if tensor.is_floating_point())
    assert all(torch.isfinite(tensor).all() for tensor in floats if tensor.is_floating_point())


@pytest.mark.parametrize(("cpu_fast", "has_bf16", "amp", "channels_last"), [
    (False, True, False, False), (True, True, True, True), (True, False, False, True),
])  # fmt: skip
def test_cpu_fast_follows_the_flag_and_the_cpu(prepared, default_hyp, monkeypatch, cpu_fast, has_bf16, amp,
                                               channels_last) -> None:  # fmt: skip
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: has_bf16)
    hyp = {key: float(value) for key, value in default_hyp.items()}
    options = TrainOptions(epochs=1, batch_size=4, workers=0, autoanchor=False, cpu_fast=cpu_fast,
                           outputs=OutputOptions(show_progress=False, plots=False))  # fmt: skip
    model = build_detector(hyp, options, prepared)
    weight = model.model[0].conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert weight.is_contiguous() != channels_last
    assert build_step_context(model, hyp, options, prepared, num_batches=1).amp == amp


@pytest.mark.parametrize(("flags", "expected"), [([], True), (["--cpu-fast"], True), (["--no-cpu-fast"], False)])
def test_cpu_fast_flag(flags: list[str], expected: bool) -> None:
    args = cli.parse_train_args(["--device", "cpu", *flags])
    assert cli.build_train_options(args, torch.device("cpu")).cpu_fast == expected


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [(False, False, False), (True, False, True),
                                                               (False, True, True)])  # fmt: skip
def test_native_bf16_means_avx512_bf16_or_amx(monkeypatch, avx512_bf16: bool, amx: bool, expected: bool) -> None:
    """Plain AVX-512 (Skylake to Ice Lake) only emulates bf16: mkldnn's own check says yes there, ours must not."""
    from utils import device

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert device.cpu_has_bf16() == expected


@pytest.mark.parametrize(("device", "has_bf16", "expected"), [("cpu", True, True), ("cpu", False, False),
                                                             ("cuda", True, False)])  # fmt: skip
def test_the_study_records_whether_children_train_in_bf16(monkeypatch, device: str, has_bf16: bool,
                                                          expected: bool) -> None:  # fmt: skip
    """bf16 and float32 children cannot share a study; where the flag changes nothing (CUDA, a CPU without native
    bf16) the study records False, so workers there join a --no-cpu-fast study."""
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: has_bf16)
    plain, fast = (cli.evolution_setup(cli.parse_train_args(flags), torch.device(device))
                   for flags in (["--no-cpu-fast"], []))  # fmt: skip
    assert plain["cpu_fast"] is False and fast["cpu_fast"] is expected


@pytest.mark.parametrize(("recorded", "expected"), [({}, False), ({"cpu_fast": True}, True)])
def test_a_run_recorded_before_cpu_fast_resumes_in_float32(tmp_path, recorded: dict, expected: bool) -> None:
    args = cli.resumed_args(cli.parse_train_args([]), tmp_path / "last.pt", {"epochs": 3, **recorded})
    assert args.cpu_fast is expected and args.epochs == 3


@pytest.mark.parametrize(("option", "value"), [("batch_size", "4"), ("epochs", 3.5), ("rect", 1), ("lr_gamma", "x")])
def test_a_recorded_option_of_the_wrong_type_is_refused_with_one_line(tmp_path, option, value) -> None:
    with pytest.raises(UserError, match=f"cannot be resumed: its option '{option}' is "):
        cli.resumed_args(cli.parse_train_args([]), tmp_path / "last.pt", {"epochs": 3, option: value})
    resumed = cli.resumed_args(
        cli.parse_train_args([]), tmp_path / "last.pt", {"epochs": 3, "lr_gamma": 1, "resume": "runs/x/last.pt"}
    )
    assert resumed.lr_gamma == 1 and resumed.epochs == 3  # an int where a float is expected is a number


def test_options_given_with_resume_are_named_as_ignored(tmp_path, caplog) -> None:
    """yolov5's --resume takes every option from the run; a flag typed with it is named in a warning, not dropped
    silently. --device applies, and a flag equal to the run's own value changes nothing."""
    recorded = {**vars(cli.parse_train_args([])), "epochs": 3, "cpu_fast": True, "batch_size": 8}
    flags = ["--resume", "--epochs", "5", "--no-cpu-fast", "--device", "cpu", "--batch-size", "8"]
    with caplog.at_level("WARNING"):
        args = cli.resumed_args(cli.parse_train_args(flags), tmp_path / "last.pt", recorded)
    assert (args.epochs, args.cpu_fast, args.batch_size, args.device) == (3, True, 8, "cpu")
    assert caplog.messages == [f"--resume continues {tmp_path / 'last.pt'} with its own options; ignored: --epochs, "
                               "--no-cpu-fast"]  # fmt: skip
    caplog.clear()
    cli.resumed_args(cli.parse_train_args(["--resume"]), tmp_path / "last.pt", recorded)
    assert not caplog.messages
    # A flag set back to its default (30 epochs, against the run's 3) is named too, by the alias typed.
    cli.resumed_args(cli.parse_train_args(["--resume", "--epochs=30", "--img", "96"]), tmp_path / "last.pt", recorded)
    assert caplog.messages[-1].endswith("ignored: --epochs, --img")


def test_the_final_best_pt_table_is_float32_on_a_cpu(tmp_path, monkeypatch) -> None:
    """--cpu-fast validates each epoch in bf16, but the best.pt table that ends a run is float32, as val.py's."""
    from types import SimpleNamespace

    from utils.training import best_validation

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "best.pt").touch()
    calls = []
    monkeypatch.setattr(best_validation, "load_checkpoint", lambda path: {})
    monkeypatch.setattr(best_validation, "model_from_checkpoint", lambda checkpoint: torch.nn.Identity())
    monkeypatch.setattr(best_validation, "run_validation", lambda *args, **kwargs: calls.append(kwargs) or
                        SimpleNamespace(metrics={}, table=lambda **options: ""))  # fmt: skip
    data = SimpleNamespace(val_loader=lambda batch, workers: [], names=["a"])
    options = TrainOptions(cpu_fast=True, outputs=OutputOptions(show_progress=False, plots=False))
    assert best_validation.validate_best(tmp_path, data, options) == {}
    assert calls and calls[0]["half"] is False


def test_a_run_that_fails_mid_epoch_closes_its_event_file(prepared, default_hyp, tmp_path, monkeypatch) -> None:
    """A pruned or failed child leaves train() by an exception; its TensorBoard writer must not stay open."""
    closed = []
    monkeypatch.setattr(trainer.RunOutputs, "close", lambda self: closed.append(self.save_dir))
    hyp = {key: float(value) for key, value in default_hyp.items()}
    options = TrainOptions(epochs=2, batch_size=4, workers=0, autoanchor=False,
                           outputs=OutputOptions(show_progress=False, plots=False, save_dir=tmp_path))  # fmt: skip

    def fail(epoch: int, metrics: dict[str, float]) -> None:
        raise RuntimeError("pruned")

    with pytest.raises(RuntimeError, match="pruned"):
        trainer.train(hyp, options, prepared, on_epoch_end=fail)
    assert closed == [tmp_path]


@pytest.mark.parametrize("cpu_fast", [False, True])
def test_per_epoch_validation_follows_the_training_precision(prepared, default_hyp, monkeypatch, cpu_fast) -> None:
    """With bf16 training the per-epoch validation of the EMA runs under bf16 autocast too (cheaper); its metrics
    stay finite and the EMA stays float32. Without it, validation is float32."""
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: True)
    hyp = {key: float(value) for key, value in default_hyp.items()}
    _, _, context = one_batch_epoch(prepared, hyp, cpu_fast=cpu_fast)
    seen = []
    hook = context.ema.ema.register_forward_hook(
        lambda module, inputs, output: seen.append((torch.is_autocast_enabled("cpu"), output[1][0].dtype))
    )
    options = TrainOptions(batch_size=4, workers=0, cpu_fast=cpu_fast)
    validation = trainer.evaluate(context, prepared, options)
    hook.remove()
    expected = (True, torch.bfloat16) if cpu_fast else (False, torch.float32)
    assert seen and all(entry == expected for entry in seen)
    assert all(math.isfinite(value) for value in validation.metrics.values())
    assert all(t.dtype == torch.float32 for t in context.ema.ema.state_dict().values() if t.is_floating_point())


@pytest.mark.parametrize(("flags", "device", "expected"), [
    ([], "cpu", 0), ([], "cuda", 2), (["--workers", "3"], "cpu", 3), (["--workers", "0"], "cuda", 0),
])  # fmt: skip
def test_loader_workers_default_to_0_on_a_cpu(flags: list[str], device: str, expected: int) -> None:
    """A CPU trains on every core, so loader processes would only compete with the step; CUDA keeps 2."""
    args = cli.parse_train_args(flags)
    assert cli.build_train_options(args, torch.device(device)).workers == expected
