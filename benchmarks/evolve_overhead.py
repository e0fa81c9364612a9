"""Per-child evolution overhead: wall time of a child minus the time spent in its training steps.

    python benchmarks/evolve_overhead.py                      # tiny generated data, nano model, CPU
    python benchmarks/evolve_overhead.py --images 1000 --img 640 --device 0 --epochs 2   # yolov5's short child

Overhead is everything a child costs besides train_one_epoch: building the model and optimizer, AutoAnchor,
validation, bookkeeping in the study and refreshing evolve.csv / hyp_evolve.yaml (and the plots with --plots).
The dataset scan and image cache are paid once per worker, before the first child, and are reported separately.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utils.training.trainer as trainer_module  # noqa: E402
from utils.data.prepared import prepare_data  # noqa: E402
from utils.data.synthetic import SHAPE_NAMES, generate_dataset  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.evolution import load_meta, run  # noqa: E402
from utils.training.hyp import load_hyp  # noqa: E402
from utils.training.options import OutputOptions, TrainOptions  # noqa: E402
from utils.training.trainer import train  # noqa: E402


def make_dataset(folder: Path, images: int, img_size: int) -> Path:
    generate_dataset(folder / "shapes", seed=0, num_train=images, num_val=max(images // 4, 4), img_size=img_size)
    data_yaml = folder / "data.yaml"
    content = {"path": "shapes", "train": "images/train", "val": "images/val", "names": list(SHAPE_NAMES)}
    data_yaml.write_text(yaml.safe_dump(content))
    return data_yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32, help="generated training images")
    parser.add_argument("--img", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--children", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--plots", action="store_true", help="also redraw evolve.png and fitness.png per child")
    args = parser.parse_args()

    step_seconds: list[float] = []
    original_epoch = trainer_module.train_one_epoch

    def timed_epoch(*positional, **keywords):
        start = time.perf_counter()
        result = original_epoch(*positional, **keywords)
        step_seconds.append(time.perf_counter() - start)
        return result

    trainer_module.train_one_epoch = timed_epoch
    with tempfile.TemporaryDirectory() as folder:
        data_yaml = make_dataset(Path(folder), args.images, args.img)
        start = time.perf_counter()
        data = prepare_data(data_yaml, args.img, "ram")
        setup_seconds = time.perf_counter() - start
        options = TrainOptions(
            epochs=args.epochs, batch_size=args.batch, device=select_device(args.device), workers=args.workers,
            validate_every_epoch=False, outputs=OutputOptions(show_progress=False, plots=False),
        )  # fmt: skip
        training_seconds: list[float] = []

        def objective(hyp, child):
            step_seconds.clear()
            metrics = train(hyp, options, data)
            training_seconds.append(sum(step_seconds))
            return metrics

        hyp = load_hyp()
        start = time.perf_counter()
        run(objective, hyp, load_meta(), args.children, run_dir=Path(folder) / "evolve", plots=args.plots)
        # Whole-run wall time per child, so that study bookkeeping and view refreshes between children count too.
        child_seconds = [(time.perf_counter() - start) / len(training_seconds)] * len(training_seconds)
    overheads = [child - training for child, training in zip(child_seconds, training_seconds)]
    print(f"device {options.device}, {args.images} images at {args.img} px, {args.epochs} epoch(s), plots {args.plots}")
    print(f"once per worker: scan + cache {setup_seconds:.2f} s")
    print(f"per child: {statistics.mean(child_seconds):.2f} s in all, {statistics.mean(training_seconds):.2f} s "
          f"in training steps, overhead {statistics.mean(overheads):.2f} s "
          f"over {len(overheads)} children")  # fmt: skip


if __name__ == "__main__":
    main()
