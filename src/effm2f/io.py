"""Atomic file output: write to a temporary name in the same folder, then rename.

A crash or a bad input never leaves a half-written result where a finished one is expected.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


class StagedFolder:
    """A folder filled under a temporary name beside ``final`` and put in its place by
    :meth:`commit`, so an interrupted job never leaves a half-written folder where a finished
    one is expected.

    A folder cannot be renamed over a non-empty one, so :meth:`commit` first renames the old
    ``final`` aside, then the new one into place, and only then deletes the old one.
    """

    def __init__(self, final: str | Path) -> None:
        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", suffix=".tmp",
                                          dir=self.final.parent))

    def commit(self) -> Path:
        """Put the staging folder in place of :attr:`final`; returns :attr:`final`."""
        old = None
        if self.final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", suffix=".old",
                                        dir=self.final.parent))
            os.replace(self.final, old)  # onto the empty folder just made: a rename
        os.replace(self.path, self.final)
        if old is not None:
            shutil.rmtree(old)
        return self.final

    def discard(self) -> None:
        """Remove the staging folder (nothing, once committed)."""
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty :class:`StagedFolder` beside ``path``; on success it takes ``path``'s
    place, on an exception it is removed and ``path`` is left exactly as it was."""
    folder = StagedFolder(path)
    try:
        yield folder.path
        folder.commit()
    finally:
        folder.discard()
