"""Data yaml parsing: every split form, names forms, path resolution, errors, generation and zip download."""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from utils.data.config import (
    DATA_FOLDER,
    dataset_lock,
    extract_zip,
    load_data_config,
    resolve_yaml_path,
    training_defaults,
)
from utils.errors import UserError


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((16, 16, 3), np.uint8))
    return path


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """tmp/data/{images/train/{a,b}.jpg, images/train/sub/c.jpg, images/val/d.jpg}."""
    root = tmp_path / "data"
    for name in ("train/a.jpg", "train/b.jpg", "train/sub/c.jpg", "val/d.jpg"):
        _image(root / "images" / name)
    return root


def _write_yaml(folder: Path, content: dict, name: str = "d.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.mark.parametrize(
    "names", [["a", "b"], {0: "a", 1: "b"}, {1: "b", 0: "a"}], ids=["list", "map", "unordered-map"]
)
def test_names_list_or_map(dataset: Path, names: object) -> None:
    config = load_data_config(
        _write_yaml(dataset.parent, {"path": "data", "train": "images/train", "val": "images/val", "names": names})
    )
    assert config.names == ["a", "b"] and config.num_classes == 2


def test_folder_split_is_searched_recursively(dataset: Path) -> None:
    path = _write_yaml(dataset.parent, {"path": "data", "train": "images/train", "val": "images/val", "names": ["a"]})
    config = load_data_config(path)
    assert config.root == dataset and config.yaml_path == path
    assert [p.name for p in config.image_files("train")] == ["a.jpg", "b.jpg", "c.jpg"]


def test_txt_split_resolves_relative_lines(dataset: Path) -> None:
    (dataset / "train.txt").write_text(f"./images/train/a.jpg\nimages/val/d.jpg\n{dataset / 'images/train/b.jpg'}\n")
    path = _write_yaml(dataset.parent, {"path": "data", "train": "train.txt", "val": "images/val", "names": ["a"]})
    assert [p.name for p in load_data_config(path).image_files("train")] == ["a.jpg", "b.jpg", "d.jpg"]


def test_list_split_mixes_folders_and_lists(dataset: Path) -> None:
    (dataset / "extra.txt").write_text("images/val/d.jpg\n")
    content = {"path": str(dataset), "train": ["images/train/sub", "extra.txt"], "val": "images/val", "names": ["a"]}
    config = load_data_config(_write_yaml(dataset.parent, content))
    assert [p.name for p in config.image_files("train")] == ["c.jpg", "d.jpg"]
    assert "test" not in config.splits


def test_split_relative_to_yaml_folder_when_not_under_root(dataset: Path) -> None:
    content = {"path": "data/images", "train": "train", "val": "data/images/val", "names": ["a"]}
    config = load_data_config(_write_yaml(dataset.parent, content))
    assert config.splits["val"] == [dataset / "images" / "val"]


def test_missing_path_key_means_the_yaml_folder(dataset: Path) -> None:
    config = load_data_config(_write_yaml(dataset, {"train": "images/train", "val": "images/val", "names": ["a"]}))
    assert config.root == dataset


@pytest.mark.parametrize("missing", ["train", "val", "names"])
def test_missing_key_names_file_and_key(dataset: Path, missing: str) -> None:
    content = {"path": "data", "train": "images/train", "val": "images/val", "names": ["a"]}
    del content[missing]
    path = _write_yaml(dataset.parent, content)
    with pytest.raises(UserError, match=f"{path}: missing key '{missing}'"):
        load_data_config(path)


def test_nonexistent_split_path_names_the_key(dataset: Path) -> None:
    path = _write_yaml(dataset.parent, {"path": "data", "train": "images/train", "val": "images/nope", "names": ["a"]})
    with pytest.raises(UserError, match=r"key 'val' points to .*images/nope, which does not exist"):
        load_data_config(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [("train: [unclosed\n", "malformed yaml"), ("- a list\n", "expected a mapping"), ("names: 3\n", "names")],
)
def test_malformed_yaml_is_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as error:
        load_data_config(path)
    assert "\n" not in str(error.value)


def test_bare_names_resolve_in_data_folder(tmp_path: Path) -> None:
    assert resolve_yaml_path("shapes.yaml") == DATA_FOLDER / "shapes.yaml"
    assert resolve_yaml_path("coco128") == DATA_FOLDER / "coco128.yaml"
    with pytest.raises(UserError, match="data yaml not found"):
        resolve_yaml_path(tmp_path / "nope.yaml")


def test_generate_key_builds_missing_or_stale_dataset_once(tmp_path: Path) -> None:
    content = {
        "path": "gen",
        "train": "images/train",
        "val": "images/val",
        "names": ["a"] * 8,
        "generate": {"seed": 1, "train": 3, "val": 2, "img_size": 64},
    }
    config = load_data_config(_write_yaml(tmp_path, content))
    assert len(config.image_files("train")) == 3 and len(config.image_files("val")) == 2
    marker = config.root / "images" / "train" / "marker.txt"
    marker.write_text("kept while the dataset is current")
    load_data_config(_write_yaml(tmp_path, content))
    assert marker.exists()
    stamp = config.root / "generated.json"
    stamp.write_text(stamp.read_text().replace('"version"', '"old_version"'))  # an older generator made it
    with pytest.raises(UserError, match="such as images/train/marker.txt"):  # regenerating would delete it
        load_data_config(_write_yaml(tmp_path, content))
    assert marker.exists()
    marker.unlink()
    config = load_data_config(_write_yaml(tmp_path, content))
    assert len(config.image_files("train")) == 3 and "old_version" not in stamp.read_text()
    with pytest.raises(UserError, match="key 'generate'"):
        load_data_config(_write_yaml(tmp_path, {**content, "path": "other", "generate": {"code": "rm -rf /"}}))
    with pytest.raises(UserError, match="generate img_size must be at least 32, got 0"):
        load_data_config(_write_yaml(tmp_path, {**content, "path": "other", "generate": {"img_size": 0}}))


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server over a folder -> (base URL, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


def _zip_dataset(path: Path, extra_entry: str | None = None) -> None:
    encoded = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("remote/images/train/a.jpg", encoded)
        zipped.writestr("remote/labels/train/a.txt", "0 0.5 0.5 0.5 0.5\n")
        if extra_entry:
            zipped.writestr(extra_entry, "escaped")


def test_download_zip_over_loopback_http(http_root: tuple[str, Path], tmp_path: Path) -> None:
    url, folder = http_root
    _zip_dataset(folder / "remote.zip")
    content = {"path": "datasets/remote", "train": "images/train", "val": "images/train", "names": ["a"]}
    config = load_data_config(_write_yaml(tmp_path, {**content, "download": f"{url}/remote.zip"}))
    assert [p.name for p in config.image_files("train")] == ["a.jpg"]
    assert (tmp_path / "datasets" / "remote" / "labels" / "train" / "a.txt").is_file()


def test_download_never_overwrites_a_file_already_there(http_root, tmp_path: Path, capsys) -> None:
    """The images are missing, so the zip is fetched; the label the user corrected meanwhile is kept."""
    url, folder = http_root
    _zip_dataset(folder / "remote.zip", extra_entry="remote/README.txt")
    corrected = tmp_path / "datasets" / "remote" / "labels" / "train" / "a.txt"
    corrected.parent.mkdir(parents=True)
    corrected.write_text("3 0.5 0.5 0.2 0.2\n")
    (tmp_path / "datasets" / "remote" / "README.txt").write_text("escaped")  # the zip's own copy: not counted
    content = {"path": "datasets/remote", "train": "images/train", "val": "images/train", "names": ["a"] * 4}
    config = load_data_config(_write_yaml(tmp_path, {**content, "download": f"{url}/remote.zip"}))
    assert [p.name for p in config.image_files("train")] == ["a.jpg"]
    assert corrected.read_text() == "3 0.5 0.5 0.2 0.2\n"
    assert "kept 1 existing file(s) that the zip also holds (never overwritten)" in capsys.readouterr().out


def test_zip_slip_entry_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    _zip_dataset(archive, extra_entry="../../escaped.txt")
    target = tmp_path / "deep" / "target"
    target.mkdir(parents=True)
    with pytest.raises(UserError, match="refusing zip entry '../../escaped.txt'"):
        extract_zip(archive, target)
    assert not (tmp_path / "escaped.txt").exists() and not any(target.iterdir())


@pytest.mark.parametrize(
    "download",
    ["bash data/scripts/get_coco.sh", "https://example.com/data.tar.gz", "ftp://example.com/a.zip", ["a.zip"]],
)
def test_download_accepts_only_zip_urls(tmp_path: Path, download: object) -> None:
    content = {"path": "nothing", "train": "images/train", "val": "images/val", "names": ["a"], "download": download}
    with pytest.raises(UserError, match="key 'download' must be"):
        load_data_config(_write_yaml(tmp_path, content))


def test_file_url_download(tmp_path: Path) -> None:
    archive = tmp_path / "local.zip"
    _zip_dataset(archive)
    content = {"path": "remote", "train": "images/train", "val": "images/train", "names": ["a"]}
    config = load_data_config(_write_yaml(tmp_path, {**content, "download": archive.as_uri()}))
    assert len(config.image_files("val")) == 1


LOADER = """
import sys
sys.path.insert(0, {root!r})
from utils.data.config import load_data_config
print("ready", flush=True)
print(len(load_data_config({yaml!r}).image_files("train")), flush=True)
"""


def test_workers_starting_together_download_once(tmp_path: Path) -> None:
    """A worker that finds the data missing waits on the dataset's lock; when the worker holding it (here, the test)
    has extracted the data, the waiting one finds it there and downloads nothing (its URL is gone by then)."""
    archive, spare = tmp_path / "local.zip", tmp_path / "spare.zip"
    _zip_dataset(spare)
    archive.write_bytes(spare.read_bytes())
    content = {"path": "remote", "train": "images/train", "val": "images/train", "names": ["a"]}
    yaml_path = _write_yaml(tmp_path, {**content, "download": archive.as_uri()})
    code = LOADER.format(root=str(Path(__file__).resolve().parents[1]), yaml=str(yaml_path))
    with dataset_lock(tmp_path / "remote"):  # the first worker, downloading
        waiting = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)  # fmt: skip
        assert waiting.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # long enough to have found the data missing and asked for the lock
        archive.unlink()
        extract_zip(spare, tmp_path)
    output = waiting.communicate(timeout=120)[0]
    assert waiting.returncode == 0 and output.strip().splitlines() == ["1"], output  # nothing downloaded


def test_training_defaults_are_checked_and_hyp_resolves_beside_the_yaml(tmp_path: Path) -> None:
    base = {"path": "d", "train": "images", "val": "images", "names": ["a"]}
    assert training_defaults(_write_yaml(tmp_path, base)) == {}
    defaults = {"hyp": "hyps/h.yaml", "optimizer": "AdamW", "epochs": 40, "nbs": 16, "close_mosaic": 5}
    assert training_defaults(_write_yaml(tmp_path, {**base, "defaults": defaults})) == {
        **defaults,
        "hyp": str((tmp_path / "hyps" / "h.yaml").resolve()),
    }
    for bad, message in [
        ([1], "must be a mapping"),
        ({"batch_size": 8}, "unknown key 'batch_size'"),
        ({"epochs": "40"}, "'epochs' must be an integer"),
        ({"epochs": True}, "'epochs' must be an integer"),
        ({"hyp": 3}, "'hyp' must be a string"),
    ]:
        with pytest.raises(UserError, match=message):
            training_defaults(_write_yaml(tmp_path, {**base, "defaults": bad}))


def test_builtin_shapes_yaml_recommends_a_valid_evolvable_hyp() -> None:
    from utils.evolution import load_meta, validate_search_space
    from utils.training.hyp import load_hyp

    defaults = training_defaults("shapes.yaml")
    assert defaults["optimizer"] == "AdamW" and defaults["nbs"] == 16
    validate_search_space(load_hyp(str(defaults["hyp"])), load_meta())  # every key present and inside its bounds


def test_a_failed_download_says_how_to_go_on_offline(http_root: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = http_root  # serves nothing at missing.zip: a 404 stands in for no network
    content = {"path": "datasets/remote", "train": "images/train", "val": "images/train", "names": ["a"]}
    with pytest.raises(UserError) as error:
        load_data_config(_write_yaml(tmp_path, {**content, "download": f"{url}/missing.zip"}))
    message = str(error.value)
    assert "unzip missing.zip into" in message and "file://" in message and "--data shapes.yaml" in message
