"""Run folders: runs/train/exp, exp2, ... with yolov5's --project/--name/--exist-ok semantics, and the lock a
training process holds on its folder."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from utils.errors import UserError

TRAIN_LOCK_NAME = ".train.lock"


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

    It is a kernel ``flock`` on ``<run>/.train.lock``, which the kernel releases when the process exits, however it
    dies (SIGKILL, a crash, a reboot): a lock left by a dead process never blocks. The file holds the owner's host
    and pid only to name it in the refusal; the file itself is never what decides.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / TRAIN_LOCK_NAME
        self.handle: int | None = None

    def acquire(self, what: str = "train into") -> RunFolderLock:
        """Take the lock, or raise a one-line ``UserError`` naming the process that holds it."""
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(handle, 200).decode(errors="replace").strip() or "another process"
            os.close(handle)
            raise UserError(
                f"cannot {what} {self.path.parent}: it is in use by a training process ({owner}); "
                "wait for it to finish, or use another run"
            ) from None
        os.ftruncate(handle, 0)
        os.write(handle, f"host {socket.gethostname()} pid {os.getpid()}\n".encode())
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            os.close(self.handle)  # closing the descriptor drops the flock
            self.handle = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire() if self.handle is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
