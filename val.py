"""Validate a trained detector: ``python val.py --weights runs/train/exp/weights/best.pt --data shapes.yaml``.

Prints yolov5's per-class table (P, R, mAP50, mAP50-95) and writes PR/F1/P/R curves and the confusion matrix to
runs/val/expN. ``--save-json`` also writes COCO-format predictions and ground truth and, when pycocotools or
faster-coco-eval is installed, prints their mAP beside ours.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch.utils.data import DataLoader

from utils import cli
from utils.data.config import DataConfig, load_data_config, single_class_names
from utils.data.dataset import prepare_split
from utils.data.prepared import validation_loader
from utils.device import select_device
from utils.errors import UserError, run_cli
from utils.evaluation.coco_json import available_backend, reference_map
from utils.evaluation.fitness import fitness, parse_fitness_weights
from utils.evaluation.metrics import MAP50, MAP50_95
from utils.evaluation.validator import Validation, run_validation
from utils.run_dir import increment_path
from utils.training.checkpoint import load_checkpoint, model_from_checkpoint

ROOT = Path(__file__).resolve().parent


def build_loader(
    data_yaml: str, split_name: str, img_size: int, batch_size: int, workers: int, stride: int, single_cls: bool = False
) -> tuple[DataConfig, DataLoader]:
    """(DataConfig, rectangular DataLoader) over one split of a data yaml, as validation during training uses;
    ``single_cls`` makes every label class 0, as training with --single-cls did."""
    config = load_data_config(data_yaml)
    split, _ = prepare_split(config, split_name, img_size, single_cls=single_cls)
    return config, validation_loader(split, img_size, batch_size, workers, stride)


def main(args: argparse.Namespace) -> None:
    cli.check_flags(args)
    fitness_weights = parse_fitness_weights(args.fitness) if args.fitness else None
    device = select_device(args.device)
    checkpoint = load_checkpoint(args.weights)
    model = model_from_checkpoint(checkpoint).to(device)
    stride = int(model.stride.max())
    speed_only = args.task == "speed"
    single_cls = args.single_cls or bool(checkpoint.get("single_cls"))
    if single_cls:
        print("--single-cls: every object is scored as one class" + ("" if args.single_cls else " (as trained)"))
    config, loader = build_loader(
        args.data, "val" if speed_only else args.task, args.imgsz, args.batch_size, args.workers, stride, single_cls
    )
    names = single_class_names(config.names) if single_cls else config.names
    if int(checkpoint["num_classes"]) != len(names):
        raise UserError(
            f"{args.weights} predicts {checkpoint['num_classes']} classes but {config.yaml_path} has {len(names)}"
            + (" with --single-cls" if single_cls else "")
        )
    save_dir = None if speed_only else increment_path(Path(args.project) / args.name, args.exist_ok)
    validation = run_validation(
        model,
        loader,
        names,
        device=device,
        half=args.half and device.type == "cuda",
        save_dir=save_dir,
        conf_thres=0.25 if speed_only else args.conf_thres,
        iou_thres=0.45 if speed_only else args.iou_thres,
        max_det=args.max_det,
        save_json=args.save_json and not speed_only,
        save_txt=args.save_txt and not speed_only,
        max_detections_per_image=args.coco_max_dets,
        progress=True,
    )
    if save_dir is not None and not args.noplots:
        from utils.plots.metrics import plot_validation  # matplotlib only when plotting

        plot_validation(validation.accumulator, save_dir)
    if not speed_only:
        print(validation.table(per_class=args.verbose or len(names) < 50, header=False))  # the bar shows it
    speed = validation.speed_ms
    print(
        f"Speed: {speed['preprocess']:.1f}ms pre-process, {speed['inference']:.1f}ms inference, "
        f"{speed['nms']:.1f}ms NMS per image at batch-size {args.batch_size}, image size {args.imgsz}"
    )
    if fitness_weights is not None:
        print(f"fitness {fitness(validation.metrics, fitness_weights):.5f} ({args.fitness})")
    if validation.coco_ground_truth is not None:
        print_reference(validation, args.coco_max_dets or args.max_det)
    if save_dir is not None:
        print(f"Results saved to {save_dir}")


def print_reference(validation: Validation, max_detections: int) -> None:
    """Our mAP beside pycocotools' (or faster-coco-eval's) on the same json, when one is installed."""
    backend = available_backend()
    if backend is None:
        print("install pycocotools or faster-coco-eval to print a reference mAP")
        return
    reference = reference_map(validation.coco_ground_truth, validation.coco_results, backend, max_detections)
    print(f"{'':22s}{'mAP50':>11s}{'mAP50-95':>11s}")
    for label, values in (("ours", validation.metrics), (backend, reference)):
        print(f"{label:>22s}{values[MAP50]:11.4g}{values[MAP50_95]:11.4g}")


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(cli.val_parser(__doc__).parse_args())))
