"""Atomic file output: every file tvm_npu writes appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import NpuError


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[BinaryIO]:
    """Yields a binary stream to a temp file beside `path`, renamed onto it on success.

    The rename is atomic on POSIX, so readers and concurrent writers see the old file or a
    complete new one; on any exception (Ctrl-C included) the temp file is removed.
    """
    path = check_output_path(path)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the result the mode a plain open() would.
        os.chmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as stream:
            yield stream
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def check_output_path(path: str | Path) -> Path:
    """Fails early, before any long work, when `path` cannot become a file."""
    path = Path(path)
    if path.is_dir():
        raise NpuError(f"output path {path} is a directory; give a file name inside it")
    if not path.parent.is_dir():
        raise NpuError(f"output folder {path.parent} does not exist; create it first")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
