"""Run a trained detector on images, folders, globs or videos: ``python detect.py --weights best.pt --source img.jpg``.

Annotated images (and videos) with class names and scores are written to runs/detect/expN; ``--save-txt`` adds
``labels/<name>.txt`` with one ``cls x y w h conf`` row per detection, normalised to the image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.cli import CliParser
from utils.data.sources import is_video, source_files
from utils.device import select_device
from utils.errors import UserError, run_cli
from utils.evaluation.detector import Detector, annotate_file
from utils.run_dir import increment_path
from utils.training.checkpoint import load_checkpoint, model_from_checkpoint

ROOT = Path(__file__).resolve().parent


def get_args_parser() -> argparse.ArgumentParser:
    parser = CliParser(description=__doc__)
    parser.add_argument("--weights", required=True, help="checkpoint .pt written by train.py")
    parser.add_argument("--source", required=True, help="image, video, folder or glob (quote it: 'imgs/*.jpg')")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=256, help="inference size (pixels)")
    parser.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    parser.add_argument("--classes", nargs="+", type=int, default=None, help="keep only these class ids")
    parser.add_argument("--save-txt", action="store_true", help="save results to labels/*.txt")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu")
    parser.add_argument("--line-thickness", type=int, default=2, help="box thickness (pixels)")
    parser.add_argument("--project", default=str(ROOT / "runs" / "detect"), help="save to project/name")
    parser.add_argument("--name", default="exp", help="save to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="reuse an existing project/name")
    return parser


def main(args: argparse.Namespace) -> None:
    if args.imgsz < 32 or args.max_det < 1:
        raise UserError("--img must be >= 32 and --max-det >= 1")
    files = source_files(args.source)
    device = select_device(args.device)
    checkpoint = load_checkpoint(args.weights)
    names = list(checkpoint.get("names") or [str(index) for index in range(int(checkpoint["num_classes"]))])
    detector = Detector(
        model_from_checkpoint(checkpoint).to(device), names, device, args.imgsz, args.conf_thres, args.iou_thres,
        args.classes, args.max_det,
    )  # fmt: skip
    save_dir = increment_path(Path(args.project) / args.name, args.exist_ok)
    for file_number, path in enumerate(files, 1):
        for frame_index, report in annotate_file(path, detector, save_dir, args.save_txt, args.line_thickness):
            frame = f" frame {frame_index}" if is_video(path) else ""
            print(f"{file_number}/{len(files)} {path}{frame}: {report}")
    print(f"Results saved to {save_dir}")


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(get_args_parser().parse_args())))
