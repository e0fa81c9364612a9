"""Run folders: runs/train/exp, exp2, ... with yolov5's --project/--name/--exist-ok semantics, and the lock a
training process holds on its folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from filelock import FileLock, Timeout

from utils.errors import UserError
from utils.files import write_atomic

TRAIN_LOCK_NAME = ".train.lock"
TRAIN_OWNER_NAME = ".train.owner"  # who holds the lock, to name in a refusal (the lock file itself may be emptied)


def make_folder(path: Path) -> Path:
    """``mkdir -p path``, with a one-line error when the path or one of its parents is a file, or not writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((parent for parent in (path, *path.parents) if parent.exists() and not parent.is_dir()), path)
        raise UserError(f"cannot create folder {path}: {blocker} is a file, not a folder (check --project)") from None
    except PermissionError:
        raise UserError(f"cannot create folder {path}: permission denied (check --project)") from None
    except OSError as error:  # a name too long, a read-only or pseudo file system (/proc), ...
        raise UserError(
            f"cannot create folder {path}: {error.strerror or error} (check --project and --name)"
        ) from None
    return path


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = True) -> Path:
    """Return ``path`` if it is free (or ``exist_ok``), else the first free ``path2``, ``path3``, ...

    The folder is created atomically so that processes started at the same moment never share one by accident.
    """
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise UserError(f"--project/--name must end in a folder name, got {str(path)!r}")
    if exist_ok:
        if mkdir:
            make_folder(path)
        return path
    make_folder(path.parent)
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
        except OSError:
            return make_folder(candidate)  # raises the one-line error (the same call succeeds only in a race)


class RunFolderLock:
    """An exclusive lock on a training run folder, held while a process trains into it.

    It is ``filelock``'s lock on ``<run>/.train.lock``: an OS lock (``flock``, or Windows' own) that is released
    when the process exits, however it dies (SIGKILL, a crash, a reboot), so a lock left by a dead process never
    blocks. ``<run>/.train.owner`` holds the owner's host and pid only to name it in the refusal; that file is never
    what decides.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / TRAIN_LOCK_NAME
        self.owner_path = Path(folder) / TRAIN_OWNER_NAME
        self.lock = FileLock(str(self.path), timeout=0)

    def acquire(self, what: str = "train into") -> RunFolderLock:
        """Take the lock, or raise a one-line ``UserError`` naming the process that holds it."""
        try:
            self.lock.acquire()
        except Timeout:
            try:
                owner = self.owner_path.read_text(errors="replace")[:200].strip()
            except OSError:
                owner = ""
            raise UserError(
                f"cannot {what} {self.path.parent}: it is in use by a training process ({owner or 'another process'}); "
                "wait for it to finish, or use another run"
            ) from None
        write_atomic(self.owner_path, f"host {socket.gethostname()} pid {os.getpid()}\n")
        return self

    def release(self) -> None:
        if self.lock.is_locked:
            self.lock.release()

    def __enter__(self) -> RunFolderLock:
        return self if self.lock.is_locked else self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
