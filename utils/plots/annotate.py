"""Detections drawn onto images and videos (a box and a ``name conf`` label per detection, in its class colour), and
what detect.py writes per frame: the annotated copy, label txt and crops."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.data.sources import is_video, read_frames
from utils.errors import UserError
from utils.evaluation.detector import Detector, summary
from utils.evaluation.label_txt import write_label_txt
from utils.plots.crops import save_crops

PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
           (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
           (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203)]  # fmt: skip
FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_COLOUR = (255, 255, 255)


@dataclass(frozen=True)
class AnnotateOptions:
    """What detect.py writes per frame and how it labels boxes: yolov5's --nosave (``save_image=False``),
    --save-txt, --save-conf, --save-crop, --hide-labels, --hide-conf and --line-thickness."""

    save_image: bool = True
    save_txt: bool = False
    save_conf: bool = False
    save_crop: bool = False
    hide_labels: bool = False
    hide_conf: bool = False
    line_thickness: int = 2

    @property
    def saves_anything(self) -> bool:
        return self.save_image or self.save_txt or self.save_crop


@dataclass(frozen=True)
class FrameResult:
    """One frame's console line (``2 circle, 1 star, 12.3ms``) and the files written for it."""

    index: int
    report: str
    label_file: Path | None = None
    crop_files: tuple[Path, ...] = ()


def label_text(name: str, conf: float, hide_labels: bool = False, hide_conf: bool = False) -> str | None:
    """A box's label as yolov5 writes it: ``name conf``, ``name`` with ``hide_conf``, none with ``hide_labels``."""
    if hide_labels:
        return None
    return name if hide_conf else f"{name} {conf:.2f}"


def label_rectangle(
    box: Sequence[float], label_size: tuple[int, int], image_size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Where a label of ``label_size`` (w, h) goes for ``box`` (x1, y1, x2, y2) in an image of ``image_size``
    (w, h): (x1, y1, x2, y2) pixels, ends exclusive.

    Above the box's top-left corner where it fits, else just inside the box's top edge; moved left or up where it
    would run past the image's right or bottom edge, so the whole label stays in the image (one wider or taller
    than the image starts at its left or top edge)."""
    label_width, label_height = label_size
    image_width, image_height = image_size
    left, top = int(box[0]), int(box[1])
    y1 = top - label_height if top - label_height >= 0 else top
    x1 = max(min(left, image_width - label_width), 0)
    y1 = max(min(y1, image_height - label_height), 0)
    return x1, y1, x1 + label_width, y1 + label_height


def draw_label(image: np.ndarray, box: Sequence[float], text: str, colour: tuple[int, int, int], scale: float) -> None:
    """Draw ``text`` in white on a ``colour`` rectangle at ``label_rectangle``'s place, in place."""
    (text_width, text_height), baseline = cv2.getTextSize(text, FONT, scale, 1)
    # One pixel of margin on each side; the baseline's depth keeps descenders (g, y) inside the rectangle.
    size = (text_width + 2, text_height + baseline + 2)
    x1, y1, x2, y2 = label_rectangle(box, size, (image.shape[1], image.shape[0]))
    cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), colour, -1)
    cv2.putText(image, text, (x1 + 1, y1 + 1 + text_height), FONT, scale, TEXT_COLOUR, 1, cv2.LINE_AA)


def draw(
    image: np.ndarray,
    detections: np.ndarray,
    names: list[str],
    thickness: int,
    hide_labels: bool = False,
    hide_conf: bool = False,
) -> np.ndarray:
    """A copy of ``image`` with each box and its label (``label_text``) drawn in its class colour.

    ``detections`` is (n, 6) x1, y1, x2, y2, conf, cls in the image's pixels."""
    image = image.copy()
    for x1, y1, x2, y2, conf, class_id in detections:
        colour = PALETTE[int(class_id) % len(PALETTE)]
        cv2.rectangle(image, (int(x1), int(y1)), (int(x2), int(y2)), colour, thickness, cv2.LINE_AA)
        text = label_text(names[int(class_id)], conf, hide_labels, hide_conf)
        if text:
            draw_label(image, (x1, y1, x2, y2), text, colour, thickness / 5)
    return image


def annotate_file(
    path: Path, detector: Detector, save_dir: Path, options: AnnotateOptions, name: str | None = None
) -> Iterator[FrameResult]:
    """Detect on every frame of one image or video and write what ``options`` asks for: the annotated copy
    (``save_dir/<stem><suffix>``, videos as ``<stem>.mp4``), ``labels/<stem>.txt`` and ``crops/<class>/<stem>.jpg``,
    where ``<stem>`` is ``name`` (default: the file's stem; ``sources.output_stems`` keeps them apart) and a video
    frame's stem is ``<stem>_<frame>``. Yields one ``FrameResult`` per frame."""
    video = is_video(path)
    name = name or path.stem
    target = save_dir / (f"{name}.mp4" if video else f"{name}{path.suffix}")
    if options.save_image and target.resolve() == path.resolve():
        raise UserError(f"{path} is in the run folder {save_dir}: its annotated copy would overwrite it; "
                        "pick another --project or --name")  # fmt: skip
    writer = None
    try:
        for frame_index, image, fps in read_frames(path):
            start = time.perf_counter()
            detections = detector(image)
            elapsed_ms = (time.perf_counter() - start) * 1000
            if options.save_image:
                annotated = draw(image, detections, detector.names, options.line_thickness, options.hide_labels,
                                 options.hide_conf)  # fmt: skip
                if not video:
                    write_image(target, annotated)
                else:
                    if writer is None:
                        writer = video_writer(target, fps, image.shape)
                    writer.write(annotated)
            stem = f"{name}_{frame_index}" if video else name
            label_file = save_dir / "labels" / f"{stem}.txt" if options.save_txt else None
            if label_file is not None:
                write_label_txt(label_file, detections, image.shape, options.save_conf)
            crops = save_crops(image, detections, detector.names, save_dir / "crops", stem) if options.save_crop else []
            report = f"{summary(detections, detector.names)}, {elapsed_ms:.1f}ms"
            yield FrameResult(frame_index, report, label_file, tuple(crops))
    finally:
        if writer is not None:
            writer.release()


def write_image(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise UserError(f"cannot write {path}")


def video_writer(path: Path, fps: float, frame_shape: tuple[int, ...]) -> cv2.VideoWriter:
    size = (frame_shape[1], frame_shape[0])
    return cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)


@dataclass
class SavedOutputs:
    """What a detect run wrote, counted frame by frame, for its closing lines."""

    label_files: int = 0
    crop_files: int = 0

    def add(self, frame: FrameResult) -> None:
        self.label_files += frame.label_file is not None
        self.crop_files += len(frame.crop_files)

    def summary(self, save_dir: Path, options: AnnotateOptions) -> list[str]:
        """``Results saved to ...`` (or why no image was saved), then how many labels and crops went where."""
        if not options.saves_anything:
            return ["Nothing saved (--nosave without --save-txt or --save-crop)"]
        lines = [f"Results saved to {save_dir}" if options.save_image else "Images not saved (--nosave)"]
        if options.save_txt:
            conf = " with confidences" if options.save_conf else ""
            lines.append(f"{self.label_files} labels saved to {save_dir / 'labels'}{conf}")
        if options.save_crop:
            lines.append(f"{self.crop_files} crops saved to {save_dir / 'crops'}")
        return lines
