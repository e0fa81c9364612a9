"""Run folders: runs/train/exp, exp2, ... with yolov5's --project/--name/--exist-ok semantics."""

from __future__ import annotations

import os
from pathlib import Path


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = True) -> Path:
    """Return ``path`` if it is free (or ``exist_ok``), else the first free ``path2``, ``path3``, ...

    The folder is created atomically so that processes started at the same moment never share one by accident.
    """
    path = Path(path)
    if exist_ok:
        if mkdir:
            path.mkdir(parents=True, exist_ok=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, number = path, 2
    while True:
        try:
            if not mkdir:
                if not candidate.exists():
                    return candidate
                raise FileExistsError
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            candidate = path.with_name(f"{path.name}{number}")
            number += 1
