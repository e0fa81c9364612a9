"""Tests for utils/run_dir.py: the run folder's lock works without fcntl (Windows), and names its holder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from utils.errors import UserError
from utils.run_dir import RunFolderLock

ROOT = Path(__file__).resolve().parents[1]

WITHOUT_FCNTL = """
import sys
sys.modules["fcntl"] = None  # as on Windows: importing it raises ImportError
sys.path.insert(0, {root!r})
import detect, evolve, train, val
from pathlib import Path
from utils.run_dir import RunFolderLock
with RunFolderLock(Path({folder!r})):
    print("locked")
"""


def test_the_scripts_import_and_take_a_lock_where_fcntl_is_missing(tmp_path):
    """Windows' own lock is not tested here: this shows that nothing needs fcntl (filelock then locks otherwise)."""
    code = WITHOUT_FCNTL.format(root=str(ROOT), folder=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "locked", result.stderr[-2000:]


def test_a_second_lock_on_a_held_folder_names_the_holder(tmp_path):
    with RunFolderLock(tmp_path):
        with pytest.raises(UserError, match=r"in use by a training process \(host .* pid \d+\)"):
            RunFolderLock(tmp_path).acquire()
    with RunFolderLock(tmp_path):  # released: free again
        pass
