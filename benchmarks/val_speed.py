"""The per-epoch validation pass on a CPU: float32 against bf16 autocast, NCHW against channels_last weights.

    python benchmarks/val_speed.py --weights runs/train/exp/weights/best.pt --rounds 3
    python benchmarks/val_speed.py   # an untrained nano: early epochs, whose NMS sees the most candidates

Runs ``run_validation`` as training's per-epoch validation does, without the loss (``half`` is bf16 autocast on a
CPU; emulated, slowly, where the CPU lacks AVX-512 BF16 and AMX, which the header says), interleaved round by round
so that a busy machine slows every case alike; prints seconds per pass, mAP@0.5 and where the time goes per image.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.data.prepared import prepare_data  # noqa: E402
from utils.device import cpu_has_bf16  # noqa: E402
from utils.evaluation.validator import run_validation  # noqa: E402
from utils.training.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from utils.training.hyp import load_hyp  # noqa: E402
from utils.training.options import TrainOptions  # noqa: E402
from utils.training.trainer import build_detector  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="", help="a checkpoint to validate (default: an untrained nano)")
    parser.add_argument("--data", default="shapes.yaml")
    parser.add_argument("--img", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32, help="training validates at twice its batch")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    data = prepare_data(args.data, args.img, "ram")
    loader = data.val_loader(args.batch, args.workers)
    if args.weights:
        model = model_from_checkpoint(load_checkpoint(args.weights)).float()
    else:
        torch.manual_seed(0)
        model = build_detector(load_hyp(), TrainOptions(cpu_fast=False, autoanchor=False), data)
    models = {"nchw": model, "channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last)}
    cases = [(layout, half) for layout in models for half in (False, True)]
    seconds, last = {case: [] for case in cases}, {}
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for layout, half in cases:
            start = time.perf_counter()
            validation = run_validation(models[layout], loader, data.names, half=half)
            if round_index:
                seconds[(layout, half)].append(time.perf_counter() - start)
            last[(layout, half)] = validation
    print(
        f"{args.weights or 'untrained yolov5n'}, {args.data}, img {args.img}, batch {args.batch}, "
        f"{len(loader.dataset)} images, {args.rounds} interleaved rounds; torch threads {torch.get_num_threads()}; "
        f"native bf16 {cpu_has_bf16()}"
    )
    for layout, half in cases:
        validation, times = last[(layout, half)], seconds[(layout, half)]
        speed = validation.speed_ms
        print(
            f"{layout:14s} {'bf16' if half else 'fp32'}  s/pass {' '.join(f'{t:.2f}' for t in times)}; median "
            f"{statistics.median(times):.2f}  mAP50 {validation.metrics['metrics/mAP_0.5']:.4f}  ms/image: "
            f"preprocess {speed['preprocess']:.1f}, inference {speed['inference']:.1f}, nms {speed['nms']:.1f}"
        )


if __name__ == "__main__":
    main()
