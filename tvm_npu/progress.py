"""Compile progress: each stage as it starts and a bar where a stage loops over layers, on one stream.

Silent unless a caller turns it on with `reporting(stream)` (`tvmc compile` does, on a terminal's
stderr, unless -q): library calls and captured output (tests, scripts parsing tvmc) see nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TextIO

from tqdm import tqdm

_stream: TextIO | None = None
_start = 0.0


@contextlib.contextmanager
def reporting(stream: TextIO | None) -> Iterator[None]:
    """Shows progress on `stream` (None: nowhere) while the block runs."""
    global _stream, _start
    saved = _stream, _start
    _stream, _start = stream, time.perf_counter()
    try:
        yield
    finally:
        _stream, _start = saved


def stage(name: str) -> None:
    """Says that stage `name` starts, with the seconds since reporting began."""
    if _stream is not None:
        print(f"[{time.perf_counter() - _start:6.1f} s] {name}", file=_stream, flush=True)


def bar(total: int, description: str) -> tqdm:
    """A progress bar over `total` steps of the running stage (inert when progress is off); a context manager."""
    # Every step drawn (layers are few and slow): the last one, n/n, shows before the bar clears itself.
    return tqdm(
        total=total,
        desc=f"{'':9} {description}",
        unit="layer",
        file=_stream,
        disable=_stream is None,
        leave=False,
        mininterval=0,
        miniters=1,
    )
