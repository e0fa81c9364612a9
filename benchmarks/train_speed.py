"""Training throughput: (a) model+loss+optimizer steps on batches already on the device, (b) end to end with data.

    python benchmarks/train_speed.py --cfg yolov5n.yaml --img 320 --batch 16 --device cpu
    python benchmarks/train_speed.py --cfg yolov5s.yaml --img 640 --batch 64 --device 0 --workers 16

Prints images/s for both, plus where an end-to-end step spends its time (waiting for data vs computing).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default="yolov5n.yaml")
    parser.add_argument("--data", default="shapes.yaml")
    parser.add_argument("--img", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps for each measurement")
    parser.add_argument("--amp", action="store_true", help="autocast on CUDA")
    args = parser.parse_args()

    device = select_device(args.device)
    hyp = load_hyp()
    data = prepare_data(args.data, args.img, "ram")
    options = TrainOptions(
        epochs=1, batch_size=args.batch, cfg=args.cfg, device=device, workers=args.workers, amp=args.amp,
        outputs=OutputOptions(show_progress=False, plots=False),
    )  # fmt: skip
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
    print(f"device {device}, {args.cfg}, img {args.img}, batch {args.batch}, workers {args.workers}")
    print(f"(a) model+loss+optimizer, data on device: {model_ips:.1f} img/s")
    print(f"(b) end to end incl. data loading:       {images / elapsed:.1f} img/s over {len(timed)} steps")
    print(f"    waiting for data: {timed.wait_seconds / elapsed:.0%} of the end-to-end time")


if __name__ == "__main__":
    main()
