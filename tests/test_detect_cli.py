"""Tests for detect.py: source discovery, drawing, txt output, images and videos end to end, and clear errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import detect
from utils import cli
from utils.data.sources import output_stems, source_files
from utils.errors import UserError
from utils.evaluation.detector import Detector
from utils.evaluation.label_txt import write_label_txt
from utils.plots.annotate import AnnotateOptions, annotate_file, draw

ROOT = Path(__file__).resolve().parent.parent
# An untrained model scores about 1e-3 (yolov5's objectness prior), so a tiny threshold yields detections to draw.
LOW_CONF = "0.00001"


@pytest.fixture(scope="module")
def val_images(tiny_dataset: Path) -> Path:
    return tiny_dataset.parent / "shapes" / "images" / "val"


def write_video(path: Path, frames: int = 3) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 64))
    for index in range(frames):
        writer.write(np.full((64, 96, 3), 40 * index, dtype=np.uint8))
    writer.release()
    return path


def test_source_files_from_file_folder_and_glob(tmp_path: Path) -> None:
    for name in ("a.jpg", "sub/b.png", "c.mp4", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [path.name for path in source_files(str(tmp_path))] == ["a.jpg", "c.mp4", "b.png"]
    assert [path.name for path in source_files(str(tmp_path / "*.jpg"))] == ["a.jpg"]
    assert source_files(str(tmp_path / "c.mp4")) == [tmp_path / "c.mp4"]


def test_output_stems_keep_files_with_one_name_apart() -> None:
    files = [Path("a/x.jpg"), Path("b/x.jpg"), Path("c/X.png"), Path("x_2.jpg"), Path("y.mp4")]
    assert output_stems(files) == ["x", "x_3", "X_4", "x_2", "y"]  # x_2 is a file's own stem, so never given away
    assert output_stems([Path("a/x.jpg"), Path("b/x_2.jpg"), Path("c/x.jpg")]) == ["x", "x_2", "x_3"]
    # A video's frames save as <stem>_<frame>: the video gives up a stem an image's name would read as a frame of.
    assert output_stems([Path("clip.mp4"), Path("clip_0.jpg")]) == ["clip_2", "clip_0"]
    assert output_stems([Path("clip.mp4"), Path("x/clip.jpg"), Path("y/clip.jpg")]) == ["clip_3", "clip", "clip_2"]
    assert output_stems([Path("a.mp4"), Path("b/a.mp4"), Path("c.jpg")]) == ["a", "a_2", "c"]


def test_detect_keeps_the_outputs_of_images_that_share_a_name(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    for folder, grey in (("a", 40), ("b", 200)):
        (tmp_path / "src" / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "src" / folder / "x.png"), np.full((64, 96, 3), grey, dtype=np.uint8))
    arguments = ["--weights", str(tiny_checkpoint), "--img", "128", "--conf-thres", LOW_CONF, "--max-det", "3",
                 "--project", str(tmp_path / "runs"), "--save-txt", "--device", "cpu"]  # fmt: skip
    arguments += ["--source", str(tmp_path / "src")]
    detect.main(cli.detect_parser().parse_args(arguments))
    run = tmp_path / "runs" / "exp"
    assert sorted(path.name for path in run.glob("*.png")) == ["x.png", "x_2.png"]
    assert sorted(path.name for path in (run / "labels").iterdir()) == ["x.txt", "x_2.txt"]
    first, second = (cv2.imread(str(run / name)) for name in ("x.png", "x_2.png"))
    assert np.median(first) < 100 < np.median(second)  # a/x.png's copy, then b/x.png's: neither written over
    assert f"{tmp_path / 'src' / 'b' / 'x.png'}: " in (output := capsys.readouterr().out)
    assert "(saved as x_2)" in output and "2 labels saved" in output


def test_detect_skips_and_counts_a_file_it_cannot_read(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    (source := tmp_path / "src").mkdir()
    cv2.imwrite(str(source / "a.png"), np.full((64, 96, 3), 90, dtype=np.uint8))
    (source / "b.jpg").write_bytes(b"GIF89a not a jpeg")  # cv2 cannot decode it: the run went no further
    cv2.imwrite(str(source / "c.png"), np.full((64, 96, 3), 90, dtype=np.uint8))
    arguments = ["--weights", str(tiny_checkpoint), "--img", "128", "--project", str(tmp_path / "runs"),
                 "--device", "cpu", "--source"]  # fmt: skip
    detect.main(cli.detect_parser().parse_args([*arguments, str(source)]))
    assert sorted(path.name for path in (tmp_path / "runs" / "exp").iterdir()) == ["a.png", "c.png"]
    output = capsys.readouterr().out
    assert f"2/3 {source / 'b.jpg'}: skipped (cannot read image {source / 'b.jpg'})" in output
    assert "1 of 3 file(s) could not be read and were skipped" in output
    with pytest.raises(UserError, match="none of its 1 file"):
        detect.main(cli.detect_parser().parse_args([*arguments, str(source / "b.jpg")]))


@pytest.mark.parametrize("source", ["missing_folder", "*.nothing", "notes.txt"])
def test_source_files_errors_name_the_source(tmp_path: Path, source: str) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="--source"):
        source_files(str(tmp_path / source))


class FixedBoxModel(nn.Module):
    """Always predicts one class-1 box centred in the network input, half its width and 40% of its height."""

    stride = torch.tensor([8.0, 16.0, 32.0])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list]:
        self.input_shape = tuple(images.shape)
        height, width = images.shape[2:]
        box = [width / 2, height / 2, width / 2, height * 0.4, 1.0, 0.0, 1.0]
        return torch.tensor([[box]]), []


def test_detector_maps_boxes_back_through_the_letterbox() -> None:
    model = FixedBoxModel()
    detector = Detector(model, ["a", "b"], torch.device("cpu"), img_size=128)
    # 100 x 40 scales by 1.28 to 128 x 51, padded to the next stride multiple: 128 x 64.
    detections = detector(np.zeros((40, 100, 3), dtype=np.uint8))
    assert model.input_shape == (1, 3, 64, 128)
    # In the input: x 32..96, y 19.2..44.8 with 6.4 px padding on top -> original 25..75, 10..30.
    assert detections[:, :4] == pytest.approx(np.array([[25, 10, 75, 30]]), abs=1.0)
    assert detections[0, 5] == 1


def test_draw_marks_the_box_and_leaves_the_input_untouched() -> None:
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    annotated = draw(image, np.array([[10, 20, 40, 50, 0.9, 1]]), ["a", "b"], thickness=2)
    assert image.sum() == 0
    assert annotated[35, 10].any() and not annotated[35, 25].any()  # on the left edge, not inside


@pytest.mark.parametrize("save_conf, conf_column", [(False, []), (True, ["0.750000"])])
def test_write_txt_rows_are_normalised(tmp_path: Path, save_conf: bool, conf_column: list[str]) -> None:
    path = tmp_path / "labels" / "x.txt"
    write_label_txt(path, np.array([[0, 0, 50, 20, 0.75, 3]]), (40, 100, 3), save_conf=save_conf)
    assert path.read_text().split() == ["3", "0.250000", "0.250000", "0.500000", "0.500000", *conf_column]


def test_output_flags_become_annotate_options() -> None:
    required = ["--weights", "w.pt", "--source", "x.jpg"]
    flags = ["--save-txt", "--save-conf", "--save-crop", "--nosave", "--hide-labels", "--hide-conf"]
    args = cli.detect_parser().parse_args([*required, *flags, "--line-thickness", "3"])
    assert cli.build_annotate_options(args) == AnnotateOptions(
        save_image=False, save_txt=True, save_conf=True, save_crop=True, hide_labels=True, hide_conf=True,
        line_thickness=3,
    )  # fmt: skip
    assert cli.build_annotate_options(cli.detect_parser().parse_args(required)) == AnnotateOptions()


def test_save_conf_without_save_txt_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    args = cli.detect_parser().parse_args(["--weights", "w.pt", "--source", "x.jpg", "--save-conf"])
    with caplog.at_level("WARNING", logger="train"):
        options = cli.build_annotate_options(args)
    assert not options.save_conf and "--save-conf has no effect without --save-txt" in caplog.text


def test_crops_come_from_the_frame_as_read_and_hidden_labels_stay_hidden(tmp_path: Path) -> None:
    grey = np.full((64, 96, 3), 60, dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    detector = Detector(FixedBoxModel(), ["a", "b"], torch.device("cpu"), img_size=128)
    (save_dir := tmp_path / "run").mkdir()
    options = AnnotateOptions(save_crop=True, hide_labels=True, line_thickness=3)
    (frame,) = annotate_file(tmp_path / "grey.png", detector, save_dir, options)
    assert [path.relative_to(save_dir).as_posix() for path in frame.crop_files] == ["crops/b/grey.jpg"]
    assert np.abs(cv2.imread(str(frame.crop_files[0])).astype(int) - 60).max() <= 2  # no box line in the crop
    annotated = cv2.imread(str(save_dir / "grey.png"))
    assert (annotated != 60).any(axis=2).sum() > 0  # the box was drawn onto the saved copy
    assert not (annotated.min(axis=2) > 200).any()  # but no white label text (class 1's colour is 151, 157, 255)


def test_detect_on_images_and_a_video(tiny_checkpoint: Path, val_images: Path, tmp_path: Path, capsys) -> None:
    video = write_video(tmp_path / "clip.mp4")
    arguments = ["--weights", str(tiny_checkpoint), "--img", "128", "--conf-thres", LOW_CONF, "--max-det", "3",
                 "--project", str(tmp_path / "runs"), "--save-txt", "--device", "cpu"]  # fmt: skip
    detect.main(cli.detect_parser().parse_args([*arguments, "--source", str(val_images)]))
    detect.main(cli.detect_parser().parse_args([*arguments, "--source", str(video), "--save-crop"]))
    images_run, video_run = tmp_path / "runs" / "exp", tmp_path / "runs" / "exp2"
    sources = sorted(val_images.glob("*.jpg"))  # other tests may leave disk-cache .npy files beside the images
    assert sorted(path.name for path in images_run.glob("*.jpg")) == [path.name for path in sources]
    assert cv2.imread(str(images_run / sources[0].name)).shape == cv2.imread(str(sources[0])).shape
    rows = (images_run / "labels" / f"{sources[0].stem}.txt").read_text().splitlines()
    assert 1 <= len(rows) <= 3 and all(len(row.split()) == 5 for row in rows)  # no conf without --save-conf
    capture = cv2.VideoCapture(str(video_run / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    capture.release()
    assert sorted(path.name for path in (video_run / "labels").iterdir()) == ["clip_0.txt", "clip_1.txt", "clip_2.txt"]
    crops = [path.name for path in (video_run / "crops").rglob("*.jpg")]  # a frame's crops carry its index
    assert crops and all(re.fullmatch(r"clip_[012]\d*\.jpg", name) for name in crops)
    output = capsys.readouterr().out
    assert f"Results saved to {images_run}\n{len(sources)} labels saved to {images_run / 'labels'}\n" in output
    assert f"3 labels saved to {video_run / 'labels'}" in output


def test_nosave_keeps_txt_conf_and_crops(tiny_checkpoint: Path, val_images: Path, tmp_path: Path, capsys) -> None:
    arguments = ["--weights", str(tiny_checkpoint), "--img", "128", "--conf-thres", LOW_CONF, "--max-det", "3",
                 "--project", str(tmp_path / "runs"), "--device", "cpu", "--source", str(val_images)]  # fmt: skip
    detect.main(cli.detect_parser().parse_args([*arguments, "--nosave"]))
    assert not (tmp_path / "runs" / "exp").exists()  # nothing to save, so no empty run folder
    assert "Nothing saved (--nosave without --save-txt or --save-crop)" in capsys.readouterr().out
    detect.main(cli.detect_parser().parse_args([*arguments, "--nosave", "--save-txt", "--save-conf", "--save-crop"]))
    run = tmp_path / "runs" / "exp"
    assert not [path for path in run.iterdir() if path.is_file()]  # no annotated image
    rows = [row.split() for txt in (run / "labels").glob("*.txt") for row in txt.read_text().splitlines()]
    assert rows and all(len(row) == 6 for row in rows)  # cls x y w h conf
    crops = sorted((run / "crops").rglob("*.jpg"))
    names = detect.load_checkpoint(tiny_checkpoint)["names"]
    assert sorted(path.parent.name for path in crops) == sorted(names[int(row[0])] for row in rows)
    output = capsys.readouterr().out
    assert "Images not saved (--nosave)" in output and "Results saved to" not in output
    assert f"{len(rows)} crops saved to {run / 'crops'}" in output


def test_detect_never_writes_over_its_source(tmp_path: Path) -> None:
    source = tmp_path / "grey.png"
    cv2.imwrite(str(source), np.full((64, 96, 3), 60, dtype=np.uint8))
    before = source.read_bytes()
    detector = Detector(FixedBoxModel(), ["a", "b"], torch.device("cpu"), img_size=128)
    with pytest.raises(UserError, match="would overwrite it"):
        next(annotate_file(source, detector, tmp_path, AnnotateOptions()))
    assert source.read_bytes() == before


def test_corrupt_weights_give_one_error_line(val_images: Path, tmp_path: Path) -> None:
    weights = tmp_path / "corrupt.pt"
    weights.write_bytes(np.random.default_rng(0).bytes(4096))
    result = subprocess.run(
        [sys.executable, str(ROOT / "detect.py"), "--weights", str(weights), "--source", str(val_images),
         "--project", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and "corrupt.pt" in result.stderr


@pytest.mark.parametrize("hide_conf", [False, True])
def test_annotate_file_draws_with_hide_conf(tmp_path: Path, hide_conf: bool) -> None:
    """--hide-conf reaches the drawing: the saved copy is exactly draw()'s with the same setting, not the other."""
    grey = np.full((64, 96, 3), 60, dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    detector = Detector(FixedBoxModel(), ["a", "b"], torch.device("cpu"), img_size=128)
    (save_dir := tmp_path / "run").mkdir()
    list(annotate_file(tmp_path / "grey.png", detector, save_dir, AnnotateOptions(hide_conf=hide_conf)))
    saved = cv2.imread(str(save_dir / "grey.png"))
    detections = detector(grey)
    expected, other = (draw(grey, detections, detector.names, 2, False, hide) for hide in (hide_conf, not hide_conf))
    assert np.array_equal(saved, expected) and not np.array_equal(saved, other)
