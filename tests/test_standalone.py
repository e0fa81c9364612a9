"""The project stands alone: a clone with nothing beside it has every file its tests and tools read."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A path into the team's folder beside the clone: "../shared", parents[N] / "shared", "shared" / "fixtures".
OUTSIDE = re.compile(r"\.\./shared|parents\[\d\]\s*/\s*[\"']shared[\"']|[\"']shared[\"']\s*/\s*[\"']fixtures")


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / name for name in listed.split()]


def test_no_tracked_code_reads_the_folder_beside_the_clone() -> None:
    code = [path for path in tracked_files() if path.suffix in (".py", ".sh") or path.parent.name == ".ci"]
    assert len(code) > 50, "git ls-files listed too few files to judge"
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in code
        if path.is_file() and path != Path(__file__).resolve()  # this file names the patterns it looks for
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []


@pytest.mark.parametrize("line", ['Path("../shared/x")', 'ROOT.parents[2] / "shared"', '"shared" / "fixtures"'])
def test_the_pattern_catches_each_way_of_reaching_outside(line: str) -> None:
    assert OUTSIDE.search(line)


@pytest.mark.parametrize("name", ["yolov5n-6cls-320.pt", "input_1x3x320x320.npy", "output_1x6300x11.npy"])
def test_the_yolov5_fixtures_are_in_the_repo(name: str) -> None:
    path = ROOT / "tests" / "fixtures" / "yolov5" / name
    assert path.is_file() and path.stat().st_size > 100_000
    assert f"tests/fixtures/yolov5/{name}" in {str(p.relative_to(ROOT)) for p in tracked_files()}
