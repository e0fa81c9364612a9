"""User-facing errors: one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

USER_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130
OUT_OF_MEMORY_EXIT_CODE = 1
NESTED_TOO_DEEP = "nested too deep to read (Python's recursion limit)"  # a yaml of thousands of nested lists


class UserError(Exception):
    """Bad input from the user (a missing file, a malformed yaml, a bad flag); reported as one line."""


def one_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of ``text`` (an error message that may quote a file), with control characters
    escaped and at most ``limit`` characters, so that it cannot break or forge the one line of a UserError."""
    return printable(next((line.strip() for line in str(text).splitlines() if line.strip()), ""), limit)


def printable(text: str, limit: int = 300) -> str:
    """``text`` with every character that is not printable (line breaks included) escaped, at most ``limit``
    characters: a name read from a file, quoted whole inside a one-line error."""
    text = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in str(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    except Exception as error:
        if not out_of_memory(error):
            raise
        print(f"error: out of memory ({one_line(error, 200)}); a smaller --img or --batch-size needs less",
              file=sys.stderr)  # fmt: skip
        return OUT_OF_MEMORY_EXIT_CODE
    return 0


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a failed allocation: Python's (and numpy's) MemoryError, torch's OutOfMemoryError (CUDA)
    or its CPU allocator's RuntimeError, or OpenCV's "Insufficient memory" (``--img 60000`` in detect.py). Told
    apart by type name and message: this module imports neither torch nor OpenCV."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    if type(error) is RuntimeError:
        return "DefaultCPUAllocator: can't allocate memory" in str(error)
    return type(error).__module__.startswith("cv2") and "Insufficient memory" in str(error)
