"""User-facing errors: one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

USER_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130


class UserError(Exception):
    """Bad input from the user (a missing file, a malformed yaml, a bad flag); reported as one line."""


def one_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of ``text`` (an error message that may quote a file), with control characters
    escaped and at most ``limit`` characters, so that it cannot break or forge the one line of a UserError."""
    line = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    line = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def run_cli(main: Callable[[], object]) -> int:
    """Call ``main`` and turn a ``UserError`` into one ``error: ...`` line and exit code 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    return 0
