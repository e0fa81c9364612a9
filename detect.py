"""Run a trained detector on images, folders, globs or videos: ``python detect.py --weights best.pt --source img.jpg``.

Annotated images (and videos) with class names and scores are written to runs/detect/expN; ``--save-txt`` adds
``labels/<name>.txt`` with one ``cls x y w h conf`` row per detection, normalised to the image.
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.boxes import scale_boxes, xyxy2xywhn
from utils.cli import CliParser
from utils.data.augment import letterbox
from utils.data.config import IMAGE_SUFFIXES
from utils.device import select_device
from utils.errors import UserError, run_cli
from utils.evaluation.postprocess import non_max_suppression
from utils.run_dir import increment_path
from utils.training.checkpoint import load_checkpoint, model_from_checkpoint

ROOT = Path(__file__).resolve().parent
VIDEO_SUFFIXES = {".asf", ".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts", ".wmv", ".webm"}
PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
           (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
           (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203)]  # fmt: skip


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


def source_files(source: str) -> list[Path]:
    """Images and videos named by a file, a folder (recursively) or a glob pattern, sorted."""
    if any(character in source for character in "*?["):
        candidates = [Path(path) for path in glob.glob(source, recursive=True)]
    elif Path(source).is_dir():
        candidates = [path for path in Path(source).rglob("*") if path.is_file()]
    elif Path(source).is_file():
        candidates = [Path(source)]
    else:
        raise UserError(f"--source {source} does not exist")
    files = sorted(path for path in candidates if path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
    if not files:
        raise UserError(f"--source {source}: no images or videos found (image types: {sorted(IMAGE_SUFFIXES)})")
    return files


def read_frames(path: Path) -> Iterator[tuple[int, np.ndarray, float]]:
    """(frame index, BGR image, frames per second) for every frame of a video, or the one frame of an image."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = cv2.imread(str(path))
        if image is None:
            raise UserError(f"cannot read image {path}")
        yield 0, image, 0.0
        return
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise UserError(f"cannot open video {path}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield index, frame, fps
            index += 1
    finally:
        capture.release()


@dataclass(frozen=True)
class Detector:
    """A model with its inference settings: BGR image in, (n, 6) x1, y1, x2, y2, conf, cls in its pixels out."""

    model: torch.nn.Module
    names: list[str]
    device: torch.device
    img_size: int
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    classes: list[int] | None = None
    max_det: int = 1000

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        stride = int(self.model.stride.max())
        padded, _, _ = letterbox(image, self.img_size, auto=True, stride=stride)
        tensor = torch.from_numpy(np.ascontiguousarray(padded[:, :, ::-1].transpose(2, 0, 1))).to(self.device)
        decoded, _ = self.model(tensor[None].float() / 255)
        (detections,) = non_max_suppression(
            decoded, self.conf_thres, self.iou_thres, self.classes, max_det=self.max_det
        )
        detections[:, :4] = scale_boxes(detections[:, :4], padded.shape[:2], image.shape[:2])
        return detections.cpu().numpy()


def draw(image: np.ndarray, detections: np.ndarray, names: list[str], thickness: int) -> np.ndarray:
    """A copy of ``image`` with each box and a ``name conf`` label drawn in its class colour."""
    image = image.copy()
    for x1, y1, x2, y2, conf, class_id in detections:
        colour = PALETTE[int(class_id) % len(PALETTE)]
        top_left, bottom_right = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(image, top_left, bottom_right, colour, thickness, cv2.LINE_AA)
        label = f"{names[int(class_id)]} {conf:.2f}"
        (text_width, text_height), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, thickness / 5, 1)
        above = top_left[1] - text_height - 3 >= 0
        corner = (top_left[0], top_left[1] - text_height - 3 if above else top_left[1] + text_height + 3)
        cv2.rectangle(image, top_left, (top_left[0] + text_width, corner[1]), colour, -1, cv2.LINE_AA)
        text_y = top_left[1] - 2 if above else top_left[1] + text_height + 2
        cv2.putText(image, label, (top_left[0], text_y), cv2.FONT_HERSHEY_SIMPLEX, thickness / 5, (255, 255, 255), 1,
                    cv2.LINE_AA)  # fmt: skip
    return image


def write_txt(path: Path, detections: np.ndarray, image_shape: tuple[int, ...]) -> None:
    """One ``cls x y w h conf`` row per detection, normalised to the image (yolov5 --save-txt --save-conf)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boxes = xyxy2xywhn(detections[:, :4], image_shape[1], image_shape[0])
    rows = [
        f"{int(class_id)} {x:.6f} {y:.6f} {w:.6f} {h:.6f} {conf:.6f}\n"
        for (x, y, w, h), conf, class_id in zip(boxes, detections[:, 4], detections[:, 5])
    ]
    path.write_text("".join(rows))


def summary(detections: np.ndarray, names: list[str]) -> str:
    """'2 circle, 1 star' style count of detections per class."""
    classes, counts = np.unique(detections[:, 5].astype(int), return_counts=True)
    return ", ".join(f"{count} {names[class_id]}" for class_id, count in zip(classes, counts)) or "no detections"


def annotate_file(
    path: Path, detector: Detector, save_dir: Path, save_txt: bool = False, line_thickness: int = 2
) -> Iterator[tuple[int, str]]:
    """Detect on every frame of one image or video, write the annotated copy (and txt); yields a line per frame."""
    is_video = path.suffix.lower() in VIDEO_SUFFIXES
    writer = None
    try:
        for frame_index, image, fps in read_frames(path):
            start = time.perf_counter()
            detections = detector(image)
            elapsed_ms = (time.perf_counter() - start) * 1000
            annotated = draw(image, detections, detector.names, line_thickness)
            if not is_video:
                cv2.imwrite(str(save_dir / path.name), annotated)
            else:
                if writer is None:
                    size = (image.shape[1], image.shape[0])
                    writer = cv2.VideoWriter(
                        str(save_dir / f"{path.stem}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, size
                    )
                writer.write(annotated)
            if save_txt:
                stem = f"{path.stem}_{frame_index}" if is_video else path.stem
                write_txt(save_dir / "labels" / f"{stem}.txt", detections, image.shape)
            yield frame_index, f"{summary(detections, detector.names)}, {elapsed_ms:.1f}ms"
    finally:
        if writer is not None:
            writer.release()


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
            frame = f" frame {frame_index}" if path.suffix.lower() in VIDEO_SUFFIXES else ""
            print(f"{file_number}/{len(files)} {path}{frame}: {report}")
    print(f"Results saved to {save_dir}")


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(get_args_parser().parse_args())))
