"""Small file helpers shared by the evaluators.

Predictions go to a hidden staging folder next to their final place (`effm2f.io.StagedFolder`),
renamed there when complete, so an interrupted evaluation never leaves a half-written prediction
folder where a finished one is expected.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from effm2f.io import StagedFolder, atomic_path


def restage(folder: StagedFolder | None, final: str | Path) -> StagedFolder:
    """Discard ``folder``'s uncommitted files and start a new staging folder for ``final``."""
    if folder is not None:
        folder.discard()
    return StagedFolder(final)


def save_png(array: np.ndarray, path: Path) -> None:
    """Save a 2-D uint8 (grayscale) or H x W x 3 uint8 (RGB) array as a PNG."""
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


def write_csv_atomic(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts with the same keys) as CSV atomically; NaN is written as empty."""
    fields = list(rows[0]) if rows else []
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})


def _csv_value(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return ""
    return value


@contextlib.contextmanager
def quiet_stdout() -> Iterator[io.StringIO]:
    """Capture what library code prints (pycocotools, cityscapesScripts) into a buffer."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer
