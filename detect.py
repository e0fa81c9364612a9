"""Run a trained detector on images, folders, globs or videos: ``python detect.py --weights best.pt --source img.jpg``.

Annotated images (and videos) with class names and scores are written to runs/detect/expN (not with ``--nosave``;
``--hide-labels`` and ``--hide-conf`` trim the labels); ``--save-txt`` adds ``labels/<name>.txt`` with one
``cls x y w h`` row per detection, normalised to the image (``--save-conf`` appends the score), and ``--save-crop``
saves each box's crop of the original image to ``crops/<class>/<name>.jpg``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils import cli
from utils.data.sources import UnreadableSource, is_video, output_stems, source_files
from utils.device import select_device
from utils.errors import UserError, run_cli
from utils.evaluation.detector import Detector
from utils.plots.annotate import SavedOutputs, annotate_file
from utils.run_dir import increment_path
from utils.training.checkpoint import load_checkpoint, model_from_checkpoint

ROOT = Path(__file__).resolve().parent


def main(args: argparse.Namespace) -> None:
    cli.check_flags(args)
    options = cli.build_annotate_options(args)
    files = source_files(args.source)
    device = select_device(args.device)
    checkpoint = load_checkpoint(args.weights)
    names = list(checkpoint.get("names") or [str(index) for index in range(int(checkpoint["num_classes"]))])
    detector = Detector(
        model_from_checkpoint(checkpoint).to(device), names, device, args.imgsz, args.conf_thres, args.iou_thres,
        args.classes, args.max_det,
    )  # fmt: skip
    save_dir = increment_path(Path(args.project) / args.name, args.exist_ok, mkdir=options.saves_anything)
    saved, unreadable = SavedOutputs(), 0
    for file_number, (path, stem) in enumerate(zip(files, output_stems(files)), 1):
        try:
            for frame in annotate_file(path, detector, save_dir, options, stem):
                where = f" frame {frame.index}" if is_video(path) else ""
                renamed = f" (saved as {stem})" if stem != path.stem and frame.index == 0 else ""
                print(f"{file_number}/{len(files)} {path}{where}: {frame.report}{renamed}")
                saved.add(frame)
        except UnreadableSource as error:  # a corrupt file is skipped and counted, as in a dataset scan
            unreadable += 1
            print(f"{file_number}/{len(files)} {path}: skipped ({error})")
    if unreadable == len(files):
        raise UserError(f"--source {args.source}: none of its {len(files)} file(s) could be read")
    print("\n".join(saved.summary(save_dir, options)))
    if unreadable:
        print(f"{unreadable} of {len(files)} file(s) could not be read and were skipped")


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(cli.detect_parser(__doc__).parse_args())))
