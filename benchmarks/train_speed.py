"""Training throughput: (a) model+loss+optimizer steps on batches already on the device, (b) end to end with data.

    python benchmarks/train_speed.py --cfg yolov5n.yaml --img 320 --batch 16 --device cpu
    python benchmarks/train_speed.py --cfg yolov5s.yaml --img 640 --batch 64 --device 0 --workers 16
    python benchmarks/train_speed.py --img 320 --variants fp32,bf16,channels_last,bf16+channels_last,threads1
    python benchmarks/train_speed.py --img 256 --variants fp32+w2,bf16+channels_last+w0   # +wN: N loader workers

Prints images/s for both, plus where an end-to-end step spends its time (waiting for data vs computing).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli.train_cli import default_workers  # noqa: E402
from utils.data.dataset import build_dataloader  # noqa: E402
from utils.data.prepared import prepare_data  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.training.engine import train_one_epoch  # noqa: E402
from utils.training.hyp import load_hyp  # noqa: E402
from utils.training.options import OutputOptions, TrainOptions  # noqa: E402
from utils.training.trainer import build_detector, build_step_context  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only(model, context, batch, device: torch.device, steps: int, warmup: int) -> float:
    """Images/s of forward + loss + backward + optimizer step on one batch kept on the device."""
    images, targets = batch[0].to(device).float() / 255, batch[1].to(device)
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device_type=device.type, enabled=context.amp):
            loss, _ = context.loss_fn(model(images), targets)
        context.scaler.scale(loss).backward()
        context.scaler.step(context.optimizer)
        context.scaler.update()
        context.optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return steps * images.shape[0] / (time.perf_counter() - start)


class TimedLoader:
    """Wraps a loader, stopping after ``limit`` batches and timing how long each batch took to arrive."""

    def __init__(self, loader, limit: int):
        self.loader, self.limit, self.wait_seconds = loader, limit, 0.0

    def __iter__(self):
        iterator = iter(self.loader)
        for _ in range(self.limit):
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.wait_seconds += time.perf_counter() - start
            yield batch

    def __len__(self) -> int:
        return min(self.limit, len(self.loader))


VARIANTS = (
    "fp32", "bf16", "channels_last", "bf16+channels_last", "compile", "bf16+channels_last+compile", "threads1",
    "bf16+channels_last+threads1",
)  # fmt: skip


def variant_workers(name: str, workers: int) -> int:
    """A variant's loader workers: a '+wN' part (e.g. 'bf16+channels_last+w0'), else --workers."""
    parts = [part for part in name.split("+") if part[:1] == "w" and part[1:].isdigit()]
    return int(parts[-1][1:]) if parts else workers


def apply_variant(name: str, model, context):
    """(model, context) for one CPU speed candidate (issue 16), from a float32 NCHW model and its context.

    bf16: CPU autocast to bfloat16 (float32 master weights, the loss in float32, no loss scaling);
    channels_last: NHWC weights, so oneDNN keeps activations NHWC (converted before the context is built, so the
    EMA copy is NHWC too, as in the trainer); compile: torch.compile (inductor) of the training forward, its
    compile time in the first-step column; threads1: one intra-op thread instead of one per core."""
    if "bf16" in name:
        context = dataclasses.replace(context, amp=True)  # the engine's autocast on CPU defaults to bfloat16
    if "compile" in name:
        model = torch.compile(model)
    return model, context


def compare_variants(args, hyp, options, data, names: list[str], rounds: int) -> None:
    """Model-only and end-to-end img/s of each variant, interleaved round by round so that a busy machine slows
    every variant alike; prints each round's figures and the median. Every variant starts from float32 NCHW."""
    options = dataclasses.replace(options, cpu_fast=False)
    dataset = data.train_dataset(hyp, args.batch, seed=0)
    loaders = {workers: build_dataloader(dataset, args.batch, workers, shuffle=True)
               for workers in {variant_workers(name, args.workers) for name in names}}  # fmt: skip
    batch = next(iter(loaders[args.workers] if args.workers in loaders else next(iter(loaders.values()))))
    built = {}
    for name in names:
        torch.manual_seed(0)
        model = build_detector(hyp, options, data)
        if "channels_last" in name:
            model = model.to(memory_format=torch.channels_last)
        loader = loaders[variant_workers(name, args.workers)]
        context = build_step_context(model, hyp, options, data, num_batches=len(loader))
        start = time.perf_counter()
        model, context = apply_variant(name, model, context)
        with thread_count(1 if "threads1" in name else None):
            model_only(model, context, batch, options.device, steps=1, warmup=1)  # compiles, if it does
        built[name] = (model, context, time.perf_counter() - start)
    figures = {name: ([], []) for name in names}
    for _ in range(rounds):
        for name in names:
            model, context, _ = built[name]
            with thread_count(1 if "threads1" in name else None):
                figures[name][0].append(model_only(model, context, batch, options.device, args.steps, warmup=1))
                loader = loaders[variant_workers(name, args.workers)]
                figures[name][1].append(end_to_end(model, context, loader, args, options.device))
    print(
        f"device {options.device}, {args.cfg}, img {args.img}, batch {args.batch}, workers {args.workers}, "
        f"{args.steps} steps x {rounds} interleaved rounds; torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'variant':20s} {'model-only img/s (rounds; median)':44s} {'end-to-end img/s (rounds; median)':44s} "
        "first step s"
    )
    for name in names:
        model_ips, e2e_ips = figures[name]
        cells = [
            f"{' '.join(f'{v:.1f}' for v in values)}; {statistics.median(values):.1f}"
            for values in (model_ips, e2e_ips)
        ]
        print(f"{name:20s} {cells[0]:44s} {cells[1]:44s} {built[name][2]:.1f}")


@contextlib.contextmanager
def thread_count(count: int | None):
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def end_to_end(model, context, loader, args, device: torch.device) -> float:
    """Images/s of train_one_epoch over ``args.steps`` batches from the loader (workers included)."""
    timed = TimedLoader(loader, args.steps)
    context = dataclasses.replace(context, num_batches=len(timed))
    synchronize(device)
    start = time.perf_counter()
    train_one_epoch(model, timed, context, epoch=0, epochs=1, show_progress=False)
    synchronize(device)
    return len(timed) * args.batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default="yolov5n.yaml")
    parser.add_argument("--data", default="shapes.yaml")
    parser.add_argument("--img", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (train.py's default: 0 on a CPU)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps for each measurement")
    parser.add_argument("--amp", action="store_true", help="autocast on CUDA")
    variants = f"compare CPU speed candidates side by side, e.g. fp32,bf16 (any of {', '.join(VARIANTS)})"
    parser.add_argument("--variants", default=None, help=variants)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of --variants")
    args = parser.parse_args()

    device = select_device(args.device)
    args.workers = default_workers(args.workers, device)
    hyp = load_hyp()
    data = prepare_data(args.data, args.img, "ram")
    options = TrainOptions(
        epochs=1, batch_size=args.batch, cfg=args.cfg, device=device, workers=args.workers, amp=args.amp,
        outputs=OutputOptions(show_progress=False, plots=False),
    )  # fmt: skip
    if args.variants:
        names = args.variants.split(",")
        unknown = [name for name in names if "+".join(p for p in name.split("+") if p[:1] != "w") not in VARIANTS]
        if unknown:
            parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        compare_variants(args, hyp, options, data, names, args.rounds)
        return
    dataset = data.train_dataset(hyp, args.batch, seed=0)
    loader = build_dataloader(dataset, args.batch, args.workers, shuffle=True)
    model = build_detector(hyp, options, data)
    context = build_step_context(model, hyp, options, data, num_batches=len(loader))
    batch = next(iter(loader))
    model_ips = model_only(model, context, batch, device, args.steps, warmup=2)

    timed = TimedLoader(loader, args.steps)
    context = build_step_context(model, hyp, dataclasses.replace(options), data, num_batches=len(timed))
    train_one_epoch(model, TimedLoader(loader, 2), context, epoch=0, epochs=1, show_progress=False)  # warm up
    synchronize(device)
    start = time.perf_counter()
    train_one_epoch(model, timed, context, epoch=0, epochs=1, show_progress=False)
    synchronize(device)
    elapsed = time.perf_counter() - start
    images = len(timed) * args.batch
    precision = f"amp {context.amp}, channels_last {options.cpu_fast and device.type == 'cpu'}"
    print(f"device {device}, {args.cfg}, img {args.img}, batch {args.batch}, workers {args.workers}, {precision}")
    print(f"(a) model+loss+optimizer, data on device: {model_ips:.1f} img/s")
    print(f"(b) end to end incl. data loading:       {images / elapsed:.1f} img/s over {len(timed)} steps")
    print(f"    waiting for data: {timed.wait_seconds / elapsed:.0%} of the end-to-end time")


if __name__ == "__main__":
    main()
