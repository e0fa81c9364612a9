"""val.py's and detect.py's flags."""

from __future__ import annotations

import argparse

from utils.cli.common_cli import LOGGER, RUNS, CliParser, add_run_folder_arguments
from utils.plots.annotate import AnnotateOptions


def val_parser(description: str | None = None) -> CliParser:
    parser = CliParser(description=description)
    parser.add_argument("--weights", required=True, help="checkpoint .pt written by train.py or by ultralytics/yolov5")
    parser.add_argument("--data", default="shapes.yaml", help="data yaml")
    parser.add_argument("--batch-size", "--batch", type=int, default=32, help="batch size")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=256, help="inference size (pixels)")
    parser.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="maximum detections per image after NMS")
    coco = "score only the top N detections per image and class, as COCOeval's maxDets (100 reproduces COCO)"
    parser.add_argument("--coco-max-dets", type=int, default=None, help=coco)
    parser.add_argument("--task", default="val", choices=("val", "test", "speed"), help="split to score, or speed")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu")
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers")
    parser.add_argument("--half", action="store_true", help="FP16 autocast inference (CUDA only)")
    parser.add_argument(
        "--single-cls", action="store_true", help="score every object as one class (default: as trained)"
    )
    parser.add_argument("--save-txt", action="store_true", help="save detections to labels/*.txt (with conf)")
    parser.add_argument("--save-json", action="store_true", help="save COCO json and print the reference mAP")
    parser.add_argument("--noplots", action="store_true", help="save no plots")
    parser.add_argument("--verbose", action="store_true", help="per-class table even for many classes")
    parser.add_argument("--fitness", default=None, help="also print fitness with these weights, e.g. 'mAP50-95=1'")
    add_run_folder_arguments(parser, RUNS / "val")
    return parser


def detect_parser(description: str | None = None) -> CliParser:
    parser = CliParser(description=description)
    parser.add_argument("--weights", required=True, help="checkpoint .pt written by train.py or by ultralytics/yolov5")
    parser.add_argument("--source", required=True, help="image, video, folder or glob (quote it: 'imgs/*.jpg')")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=256, help="inference size (pixels)")
    parser.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    parser.add_argument("--classes", nargs="+", type=int, default=None, help="keep only these class ids")
    parser.add_argument("--save-txt", action="store_true", help="save results to labels/*.txt (cls x y w h)")
    parser.add_argument("--save-conf", action="store_true", help="with --save-txt, add each box's confidence")
    parser.add_argument("--save-crop", action="store_true", help="save each box's crop to crops/<class>/<stem>.jpg")
    parser.add_argument("--nosave", action="store_true", help="do not save images/videos")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu")
    parser.add_argument("--line-thickness", type=int, default=2, help="box thickness (pixels)")
    parser.add_argument("--hide-labels", action="store_true", help="draw boxes without labels")
    parser.add_argument("--hide-conf", action="store_true", help="labels without confidences")
    add_run_folder_arguments(parser, RUNS / "detect")
    return parser


def build_annotate_options(args: argparse.Namespace) -> AnnotateOptions:
    """detect.py's output flags as ``AnnotateOptions``; --save-conf without --save-txt is ignored, as in yolov5."""
    if args.save_conf and not args.save_txt:
        LOGGER.warning("--save-conf has no effect without --save-txt, ignored")
    return AnnotateOptions(
        save_image=not args.nosave, save_txt=args.save_txt, save_conf=args.save_conf and args.save_txt,
        save_crop=args.save_crop, hide_labels=args.hide_labels, hide_conf=args.hide_conf,
        line_thickness=args.line_thickness,
    )  # fmt: skip
