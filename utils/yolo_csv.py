"""yolov5's csv line format, shared by results.csv and evolve.csv: 20-character right-aligned fields, ``%20.5g``."""

from __future__ import annotations

from collections.abc import Sequence

FIELD_WIDTH = 20


def format_header(names: Sequence[str]) -> str:
    """Column names right-aligned in 20-character fields, comma-separated."""
    return ",".join(f"{name:>{FIELD_WIDTH}}" for name in names)


def format_row(values: Sequence[float | str]) -> str:
    """Numbers as ``%20.5g`` and names (evolve.csv's choice columns) right-aligned, comma-separated."""
    return ",".join(f"{value:>{FIELD_WIDTH}}" if isinstance(value, str) else f"{value:{FIELD_WIDTH}.5g}"
                    for value in values)  # fmt: skip
