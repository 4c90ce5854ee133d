"""Progress of long commands (requeue everything, migrate, sweep history): a bar on a
terminal, nothing at all when stderr is a file or a log collector."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm


@contextmanager
def progress(description: str, total: int | None = None, unit: str = "msg") -> Iterator[tqdm[Any]]:
    """`bar.update(n)` as work gets done; silent unless stderr is a terminal."""
    bar = tqdm(
        total=total,
        desc=description,
        unit=unit,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        leave=True,
    )
    try:
        yield bar
    finally:
        bar.close()
