"""Atomic file writing: every file the project rewrites appears whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path`` with ``os.replace``.

    Readers (other workers, a crash-time resume) never see half a file; on any error the temporary is removed.
    ``suffix`` lets writers that append an extension themselves (``np.save``) name the temporary exactly.
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o644)  # mkstemp makes 0600 files; outputs are meant to be read by anyone
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a whole text or binary file atomically (see ``atomic_path``)."""
    with atomic_path(path) as temporary:
        if isinstance(data, bytes):
            temporary.write_bytes(data)
        else:
            temporary.write_text(data)


def free_backup_path(path: Path) -> Path:
    """``evolve.csv`` -> the first of ``evolve.backup.csv``, ``evolve.backup2.csv``, ... that does not exist."""
    number = 1
    while True:
        candidate = path.with_name(f"{path.stem}.backup{number if number > 1 else ''}{path.suffix}")
        if not os.path.lexists(candidate):
            return candidate
        number += 1
