"""Training data pipeline throughput: augmented images/s and peak RSS (process tree) for several worker counts.

    python benchmarks/dataloader.py                      # generated shapes images at 640, hyp.scratch-low
    python benchmarks/dataloader.py --data coco128.yaml --workers 0 2 4 --batches 20

Each worker count runs in its own subprocess so that its memory peak is measured alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (shared pages are counted once per process)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def measure(data: str, img_size: int, batch_size: int, workers: int, num_batches: int, hyp_path: str) -> dict:
    """Iterate ``num_batches`` training batches; time all but the first (worker start-up) and sample memory."""
    import numpy as np
    import yaml

    from utils.data.config import load_data_config
    from utils.data.dataset import YoloDataset, build_dataloader, prepare_split
    from utils.data.labels import LabeledSplit

    config = load_data_config(data)
    split, _ = prepare_split(config, "train", img_size)
    repeats = -(-num_batches * batch_size // len(split))  # enough items for every batch without a new epoch
    split = LabeledSplit(split.image_files * repeats, split.labels * repeats, split.segments * repeats,
                         np.tile(split.shapes, (repeats, 1)), split.report, split.name)  # fmt: skip
    hyp = yaml.safe_load(Path(hyp_path).read_text())
    dataset = YoloDataset(split, img_size, hyp, augment=True, batch_size=batch_size)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], tree_rss_bytes(os.getpid()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    loader = iter(build_dataloader(dataset, batch_size, workers, shuffle=True, seed=0))
    start = time.perf_counter()
    next(loader)
    first_batch = time.perf_counter() - start
    start = time.perf_counter()
    images = 0
    for _ in range(num_batches - 1):
        images += len(next(loader)[0])
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    return {"workers": workers, "images_per_s": images / elapsed, "first_batch_s": first_batch, "peak_rss": peak[0]}


def _generated_data(folder: Path, img_size: int, num_images: int) -> Path:
    from utils.data.synthetic import SHAPE_NAMES, generate_dataset

    generate_dataset(folder / "shapes", seed=0, num_train=num_images, num_val=0, img_size=img_size)
    yaml_path = folder / "bench.yaml"
    names = "\n".join(f"  - {name}" for name in SHAPE_NAMES)
    yaml_path.write_text(f"path: shapes\ntrain: images/train\nval: images/train\nnames:\n{names}\n")
    return yaml_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="", help="data yaml (default: generate shapes images at --img)")
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=10, help="batches per measurement (the first is not timed)")
    parser.add_argument("--images", type=int, default=32, help="images to generate when --data is not given")
    parser.add_argument("--hyp", default=str(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.data, args.img, args.batch, args.workers[0], args.batches, args.hyp)))
        return
    with tempfile.TemporaryDirectory() as folder:
        data = args.data or str(_generated_data(Path(folder), args.img, args.images))
        print(f"data={data if args.data else 'generated shapes'} img={args.img} batch={args.batch} hyp={args.hyp}")
        print(f"{'workers':>7} {'images/s':>9} {'first batch s':>14} {'peak RSS MB':>12}")
        for workers in args.workers:
            options = {"--data": data, "--img": args.img, "--batch": args.batch, "--workers": workers,
                       "--batches": args.batches, "--hyp": args.hyp}  # fmt: skip
            command = [sys.executable, __file__, "--child", *(str(v) for item in options.items() for v in item)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            print(f"{workers:>7} {result['images_per_s']:>9.1f} {result['first_batch_s']:>14.2f} "
                  f"{result['peak_rss'] / 2**20:>12.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
