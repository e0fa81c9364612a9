"""Augmented images/s: GpuBatchAugmenter on --device against the CPU DataLoader pipeline, same data and hyp.

    python benchmarks/gpu_augment.py --device 0                     # 640, batch 64, generated shapes images
    python benchmarks/gpu_augment.py --device cpu --img 256 --batch 8 --batches 4 --images 16 --workers 0
    python benchmarks/gpu_augment.py --data coco128.yaml --device 0 --workers 8 16

The first batch of each pipeline (worker start-up, kernel warm-up) is not timed. Batch k of the GPU augmenter
draws from ``batch_generator(0, 0, k)`` over uniformly drawn split indices, as a shuffled epoch would.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.data.config import load_data_config  # noqa: E402
from utils.data.dataset import YoloDataset, build_dataloader, prepare_split  # noqa: E402
from utils.data.gpu_augment import GpuBatchAugmenter, batch_generator  # noqa: E402
from utils.data.labels import LabeledSplit  # noqa: E402
from utils.data.synthetic import SHAPE_NAMES, generate_dataset  # noqa: E402
from utils.device import select_device  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_pipeline(split: LabeledSplit, img_size: int, hyp: dict, batch_size: int, workers: int, batches: int) -> float:
    """Images/s of YoloDataset + DataLoader, as training uses them (split repeated so no epoch ends)."""
    repeats = -(-batches * batch_size // len(split))
    split = LabeledSplit(split.image_files * repeats, split.labels * repeats, split.segments * repeats,
                         np.tile(split.shapes, (repeats, 1)), split.report, split.name)  # fmt: skip
    dataset = YoloDataset(split, img_size, hyp, augment=True, batch_size=batch_size)
    loader = iter(build_dataloader(dataset, batch_size, workers, shuffle=True, seed=0))
    next(loader)
    start, images = time.perf_counter(), 0
    for _ in range(batches - 1):
        images += len(next(loader)[0])
    return images / (time.perf_counter() - start)


def gpu_pipeline(
    augmenter: GpuBatchAugmenter, batch_size: int, batches: int, device: torch.device
) -> tuple[float, float]:
    """(images/s, peak CUDA memory in GB or 0) of ``augmenter.batch`` on uniformly drawn indices."""
    picker = torch.Generator().manual_seed(0)

    def one_batch(batch_index: int) -> torch.Tensor:
        indices = torch.randint(0, len(augmenter), (batch_size,), generator=picker)
        return augmenter.batch(indices, batch_generator(0, 0, batch_index))[0]

    one_batch(0)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, images = time.perf_counter(), 0
    for batch_index in range(1, batches):
        images += len(one_batch(batch_index))
    synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else 0.0
    return images / elapsed, peak


def generated_data(folder: Path, img_size: int, num_images: int) -> Path:
    generate_dataset(folder / "shapes", seed=0, num_train=num_images, num_val=0, img_size=img_size)
    yaml_path = folder / "bench.yaml"
    content = {"path": "shapes", "train": "images/train", "val": "images/train", "names": list(SHAPE_NAMES)}
    yaml_path.write_text(yaml.safe_dump(content, sort_keys=False))
    return yaml_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="", help="data yaml (default: generate shapes images at --img)")
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10, help="batches per measurement (the first is not timed)")
    parser.add_argument("--images", type=int, default=128, help="images to generate when --data is not given")
    parser.add_argument("--workers", type=int, nargs="+", default=[8], help="CPU DataLoader worker counts")
    parser.add_argument("--device", default="", help="device of the GPU augmenter: cpu, 0, ...")
    parser.add_argument("--storage", default="auto", choices=("auto", "device", "host"))
    parser.add_argument("--hyp", default=str(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"))
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    hyp = yaml.safe_load(Path(args.hyp).read_text())
    with tempfile.TemporaryDirectory() as folder:
        data = args.data or str(generated_data(Path(folder), args.img, args.images))
        split, _ = prepare_split(load_data_config(data), "train", args.img)
        print(f"data={args.data or 'generated shapes'} images={len(split)} img={args.img} batch={args.batch} "
              f"hyp={Path(args.hyp).name} device={device} threads={torch.get_num_threads()}")  # fmt: skip
        print(f"{'pipeline':>28} {'images/s':>9} {'peak GPU GB':>12}")
        start = time.perf_counter()
        augmenter = GpuBatchAugmenter.from_split(split, args.img, hyp, device, storage=args.storage)
        where = "read in place" if augmenter.images_on_device else "copied per batch from host"
        print(f"  (GpuBatchAugmenter built in {time.perf_counter() - start:.1f} s, images {where})")
        rate, peak = gpu_pipeline(augmenter, args.batch, args.batches, device)
        print(f"{f'GpuBatchAugmenter ({device.type})':>28} {rate:>9.1f} {peak:>12.2f}")
        for workers in args.workers:
            rate = cpu_pipeline(split, args.img, hyp, args.batch, workers, args.batches)
            print(f"{f'CPU DataLoader ({workers} workers)':>28} {rate:>9.1f} {'-':>12}")


if __name__ == "__main__":
    main()
