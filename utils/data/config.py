"""Data yaml loading: resolve the dataset root, split sources and class names; generate or download on first use."""

from __future__ import annotations

import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from filelock import FileLock

from utils.errors import NESTED_TOO_DEEP, UserError
from utils.files import atomic_path

IMAGE_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm"}
SPLIT_NAMES = ("train", "val", "test")
DATA_FOLDER = Path(__file__).resolve().parents[2] / "data"
GENERATE_MIN_SIZE = 32  # the shapes generator's smallest image (its objects need room)
GENERATE_KEYS = {"seed", "train", "val", "img_size"}
# train.py options a data yaml may recommend under ``defaults:`` (used only where the command line is silent)
TRAIN_DEFAULT_TYPES = {"hyp": str, "optimizer": str, "epochs": int, "nbs": int, "close_mosaic": int}
DOWNLOAD_SCHEMES = {"http", "https", "file"}
SINGLE_CLASS_NAME = "item"  # yolov5's name for the one class of --single-cls


@dataclass(frozen=True)
class DataConfig:
    """A parsed data yaml. ``splits`` maps a split name to its sources: image folders and/or .txt image lists."""

    yaml_path: Path
    root: Path
    splits: dict[str, list[Path]]
    names: list[str]
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def image_files(self, split: str) -> list[Path]:
        """All image files of a split, sorted, duplicates removed."""
        if split not in self.splits:
            raise UserError(f"{self.yaml_path}: no '{split}' split")
        return list_images(self.splits[split], self.root)


def single_class_names(names: list[str]) -> list[str]:
    """--single-cls: one class, keeping the name of a data set that has only one, else yolov5's 'item'."""
    return list(names) if len(names) == 1 else [SINGLE_CLASS_NAME]


def resolve_yaml_path(path: str | Path) -> Path:
    """The yaml as given, or a bare name such as ``shapes.yaml`` (or ``shapes``) looked up in data/."""
    path = Path(path)
    candidates = [path, DATA_FOLDER / path.name]
    if not path.suffix:
        candidates += [path.with_suffix(".yaml"), DATA_FOLDER / f"{path.name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise UserError(f"data yaml not found: {path} (also looked in {DATA_FOLDER})")


def _read_yaml(path: Path) -> dict:
    try:
        content = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: malformed yaml{where}") from None
    except RecursionError:
        raise UserError(f"{path}: malformed yaml ({NESTED_TOO_DEEP})") from None
    if not isinstance(content, dict):
        raise UserError(f"{path}: expected a mapping with keys path, train, val, names")
    return content


def _parse_names(content: dict, path: Path) -> list[str]:
    if "names" not in content:
        raise UserError(f"{path}: missing key 'names'")
    names = content["names"]
    if isinstance(names, dict):
        if set(names) != set(range(len(names))):  # keys of mixed types cannot be sorted
            raise UserError(f"{path}: key 'names' must map the ids 0..{len(names) - 1} to names")
        names = [names[index] for index in range(len(names))]
    if not isinstance(names, list) or not names:
        raise UserError(f"{path}: key 'names' must be a non-empty list or an {{id: name}} map")
    if "nc" in content and content["nc"] != len(names):
        raise UserError(f"{path}: key 'nc' is {content['nc']} but 'names' has {len(names)} entries")
    return [str(name) for name in names]


def _resolve_root(content: dict, yaml_path: Path) -> Path:
    root = Path(str(content.get("path") or "."))
    return root if root.is_absolute() else (yaml_path.parent / root).resolve()


def _resolve_source(entry: object, root: Path, yaml_path: Path, key: str) -> Path:
    """A split entry resolves against the dataset root first, then against the yaml's folder."""
    if not isinstance(entry, str) or not entry:
        raise UserError(f"{yaml_path}: key '{key}' must be a path or a list of paths, got {entry!r}")
    path = Path(entry)
    if path.is_absolute():
        return path
    candidates = [root / path, yaml_path.parent / path]
    return next((candidate.resolve() for candidate in candidates if candidate.exists()), candidates[0].resolve())


def _split_sources(content: dict, root: Path, yaml_path: Path) -> dict[str, list[Path]]:
    splits = {}
    for key in SPLIT_NAMES:
        if key not in content or content[key] is None:
            if key != "test":
                raise UserError(f"{yaml_path}: missing key '{key}'")
            continue
        entries = content[key] if isinstance(content[key], list) else [content[key]]
        splits[key] = [_resolve_source(entry, root, yaml_path, key) for entry in entries]
    return splits


def _missing_sources(splits: dict[str, list[Path]]) -> list[tuple[str, Path]]:
    return [(key, source) for key, sources in splits.items() for source in sources if not source.exists()]


def load_data_config(path: str | Path) -> DataConfig:
    """Parse a data yaml; download (``download:``) the dataset if its files are missing.

    A ``generate:`` dataset is (re)made when missing or made by an older generator version.
    """
    yaml_path = resolve_yaml_path(path)
    content = _read_yaml(yaml_path)
    names = _parse_names(content, yaml_path)
    root = _resolve_root(content, yaml_path)
    splits = _split_sources(content, root, yaml_path)
    if content.get("generate") is not None:  # (re)generate when missing, or made by another generator version
        _generate(content["generate"], root, yaml_path)
        splits = _split_sources(content, root, yaml_path)
    elif _missing_sources(splits):
        if content.get("download") is not None:
            _download(content, root, yaml_path)
        splits = _split_sources(content, root, yaml_path)  # entries may now resolve to a different candidate
    missing = _missing_sources(splits)
    if missing:
        key, source = missing[0]
        raise UserError(f"{yaml_path}: key '{key}' points to {source}, which does not exist")
    return DataConfig(yaml_path=yaml_path, root=root, splits=splits, names=names, raw=content)


def training_defaults(path: str | Path) -> dict[str, object]:
    """The train.py options a data yaml recommends in its optional ``defaults:`` mapping, checked.

    Keys are train.py option names with underscores (``hyp``, ``optimizer``, ``epochs``, ``nbs``, ``close_mosaic``).
    A relative ``hyp`` resolves against the yaml's folder. Nothing is generated or downloaded here.
    """
    yaml_path = resolve_yaml_path(path)
    defaults = _read_yaml(yaml_path).get("defaults")
    if defaults is None:
        return {}
    if not isinstance(defaults, dict):
        raise UserError(f"{yaml_path}: key 'defaults' must be a mapping of train.py options")
    checked: dict[str, object] = {}
    for key, value in defaults.items():
        expected = TRAIN_DEFAULT_TYPES.get(key)
        if expected is None:
            raise UserError(f"{yaml_path}: 'defaults' has unknown key {key!r}; use {sorted(TRAIN_DEFAULT_TYPES)}")
        if isinstance(value, bool) or not isinstance(value, expected):
            kind = "an integer" if expected is int else "a string"
            raise UserError(f"{yaml_path}: 'defaults' key {key!r} must be {kind}, got {value!r}")
        checked[key] = value
    if "hyp" in checked and not Path(str(checked["hyp"])).is_absolute():
        checked["hyp"] = str((yaml_path.parent / str(checked["hyp"])).resolve())
    return checked


def _generate(options: object, root: Path, yaml_path: Path) -> None:
    """Build the synthetic dataset described by a ``generate:`` mapping (data only, never code).

    Nothing happens when ``root`` already holds what this generator version makes from these options. A folder
    that the generator did not make (no stamp) and that is not empty is refused, never replaced.
    """
    from utils.data.synthetic import check_replaceable, generate_dataset, is_generated

    if not isinstance(options, dict) or set(options) - GENERATE_KEYS:
        raise UserError(f"{yaml_path}: key 'generate' must be a mapping with keys from {sorted(GENERATE_KEYS)}")
    if not all(isinstance(value, int) and value >= 0 for value in options.values()):
        raise UserError(f"{yaml_path}: key 'generate' values must be non-negative integers")
    if options.get("img_size", GENERATE_MIN_SIZE) < GENERATE_MIN_SIZE:
        raise UserError(
            f"{yaml_path}: generate img_size must be at least {GENERATE_MIN_SIZE}, got {options['img_size']}"
        )
    arguments = {
        "seed": options.get("seed", 0),
        "num_train": options.get("train", 400),
        "num_val": options.get("val", 100),
        "img_size": options.get("img_size", 256),
    }
    if is_generated(root, **arguments):
        return
    hint = f"point 'path' in {yaml_path} at a new or empty folder, or move {root} away first"
    check_replaceable(root, hint)  # fail before waiting on the lock; checked again under it
    root.parent.mkdir(parents=True, exist_ok=True)
    with dataset_lock(root):
        if is_generated(root, **arguments):
            return  # another process generated it while this one waited
        check_replaceable(root, hint)
        stale = " (replacing a copy made by another generator version or options)" if root.exists() else ""
        print(f"Generating dataset {root}{stale} ...")
        generate_dataset(root, **arguments)


def dataset_lock(root: Path) -> FileLock:
    """The lock beside a dataset folder that its generation or download holds: several processes (one per GPU in an
    evolve run) may start together, so one makes the data while the others wait, then find it made."""
    return FileLock(str(root.parent / f".{root.name}.lock"))


def _download(content: dict, root: Path, yaml_path: Path) -> None:
    """Download the data yaml's ``download:`` zip next to ``root`` once, under the dataset's lock."""
    url = _check_download_url(content["download"], yaml_path)
    root.parent.mkdir(parents=True, exist_ok=True)
    with dataset_lock(root):
        if _missing_sources(_split_sources(content, root, yaml_path)):  # not downloaded by another process meanwhile
            download_zip(url, root.parent, yaml_path)


def _check_download_url(url: object, yaml_path: Path) -> str:
    if not isinstance(url, str):
        raise UserError(f"{yaml_path}: key 'download' must be a URL to a .zip file (code is never run)")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in DOWNLOAD_SCHEMES or not parsed.path.lower().endswith(".zip"):
        raise UserError(f"{yaml_path}: key 'download' must be an http(s):// or file:// URL to a .zip, got {url!r}")
    return url


def extract_zip(archive: Path, target: Path) -> int:
    """Extract ``archive`` into ``target``, refusing any entry that would land outside it (zip-slip) or is a link.

    A file that already exists is kept, never overwritten (a label the user corrected in a half-downloaded dataset);
    returns how many such files differ from the zip's copy."""
    target = target.resolve()
    try:
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                destination = (target / info.filename).resolve()
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                if is_link or not destination.is_relative_to(target):
                    raise UserError(f"{archive}: refusing zip entry {info.filename!r}, which escapes {target}")
            kept = 0
            for info in zipped.infolist():
                destination = target / info.filename
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                if destination.exists():  # counted only where it differs from the zip's copy
                    kept += zlib.crc32(destination.read_bytes()) != info.CRC
                    continue
                # each file appears whole or not at all: a killed extraction leaves no truncated file to be kept
                with atomic_path(destination) as temporary, zipped.open(info) as source, open(temporary, "wb") as out:
                    shutil.copyfileobj(source, out)
            return kept
    except zipfile.BadZipFile:
        raise UserError(f"{archive}: not a valid zip file") from None


def download_zip(url: object, target: Path, yaml_path: Path) -> None:
    """Download a .zip named by a data yaml's ``download:`` key and extract it into ``target``."""
    url = _check_download_url(url, yaml_path)
    target.mkdir(parents=True, exist_ok=True)
    print(f"Downloading {url} to {target} ...")
    with tempfile.TemporaryDirectory(dir=target) as staging:
        archive = Path(staging) / "download.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as file:
                shutil.copyfileobj(response, file)
        except (OSError, ValueError) as error:
            name = Path(urllib.parse.urlparse(url).path).name
            raise UserError(
                f"{yaml_path}: download of {url} failed ({error}); offline, unzip {name} into {target} yourself, "
                "point 'download' at a file:// URL, or train on the built-in data with --data shapes.yaml"
            ) from None
        kept = extract_zip(archive, target)
        if kept:
            print(f"{target}: kept {kept} existing file(s) that the zip also holds (never overwritten)")


def list_images(sources: list[Path], root: Path) -> list[Path]:
    """Expand folders (recursively) and .txt lists into image files.

    A relative line in a .txt list resolves against the list's folder (yolov5's ``./images/...`` convention),
    then against the dataset root.
    """
    files: set[Path] = set()
    for source in sources:
        if source.is_dir():
            files.update(path for path in source.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        elif source.suffix == ".txt":
            try:
                lines = source.read_text().splitlines()
            except UnicodeDecodeError:
                raise UserError(f"{source}: not a text list of images (not UTF-8 text: a binary file?)") from None
            for line in lines:
                line = line.strip()
                if not line:
                    continue
                entry = Path(line)
                if not entry.is_absolute():
                    beside_list = (source.parent / entry).resolve()
                    entry = beside_list if beside_list.exists() else (root / entry).resolve()
                if entry.suffix.lower() in IMAGE_SUFFIXES:
                    files.add(entry)
        elif source.suffix.lower() in IMAGE_SUFFIXES:
            files.add(source)
        else:
            raise UserError(f"{source}: not an image folder, a .txt image list or an image")
    return sorted(files)
