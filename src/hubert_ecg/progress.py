"""Progress bars for long steps, one way for every command (tqdm on stderr, off with ``--quiet``).

>>> from hubert_ecg.progress import progress, say
>>> for record in progress(records, desc="plots", unit="rec", enabled=not quiet):   # doctest: +SKIP
...     say(f"OK {record}")        # a line printed above the bar, not through it          # doctest: +SKIP

``progress(total=N)`` without an iterable gives a bar to ``update(k)`` by hand (bootstrap resamples,
k-means iterations). Bars go to stderr, so stdout stays a clean table for pipes; when stderr is not a
terminal (CI logs, ``2> file``) tqdm still writes, but less often (``mininterval`` 1 s).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    enabled: bool = True,
    leave: bool = True,
) -> Any:
    """A tqdm bar over ``iterable`` (or a manual one of ``total`` steps); a silent one when not ``enabled``."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        leave=leave,
        dynamic_ncols=True,
        mininterval=0.1 if interactive else 1.0,
        file=sys.stderr,
    )


def say(message: str) -> None:
    """Print a line to stdout without breaking a progress bar that is on screen."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stdout)
