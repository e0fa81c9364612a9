"""The command-line parser every entry point uses: no flag abbreviations, and one ``error:`` line on bad flags."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from utils.errors import USER_ERROR_EXIT_CODE


class CliParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``allow_abbrev=False`` (``--freeze`` must never mean ``--freeze-hyp``) and
    errors reported as one ``error: ...`` line, like every other user error, instead of usage plus a message."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
