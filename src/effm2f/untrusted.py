"""Loading files that come from outside this process (checkpoints, pickles), without running code.

A checkpoint may have travelled through a DVC remote or been named on the command line, so every
load of a file we did not just write goes through here:

- :func:`load_torch_file`: ``torch.load(weights_only=True)``, which rebuilds only tensors, numbers,
  strings and containers, plus the few types of :data:`TORCH_ALLOWED_GLOBALS`;
- :func:`load_array_pickle`: a plain pickle (detectron2's model-zoo .pkl) with an unpickler that
  rebuilds only containers, numpy arrays and torch tensors.

Anything else in the file is refused with an :class:`UnsafeFileError` that names the file and the
offending type; a truncated or corrupt file raises :class:`UnreadableFileError` naming the file.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.data import AttributeDict

from effm2f.errors import InputError

TORCH_ALLOWED_GLOBALS: tuple[Any, ...] = (
    AttributeDict,  # Lightning's hyper-parameter container (a plain dict subclass)
)
"""Types beyond torch's weights-only defaults that our (Lightning) checkpoints may hold."""

_UNSUPPORTED_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")


class UnsafeFileError(InputError):
    """A file holds something that would run code when loaded; it is refused."""


class UnreadableFileError(InputError):
    """A file is missing, truncated or not in the expected format."""


def load_torch_file(path: str | Path, *, what: str = "checkpoint", mmap: bool = False) -> Any:
    """``torch.load`` of an untrusted file onto the CPU, weights only (``mmap``: map the tensors
    instead of reading them, for a zip-format file).

    Raises:
        UnreadableFileError: missing, truncated or corrupt.
        UnsafeFileError: it holds a type outside the weights-only set and the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(list(TORCH_ALLOWED_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        found = _UNSUPPORTED_GLOBAL.search(str(error))
        offending = found.group(1) if found else str(error).splitlines()[0]
        raise UnsafeFileError(
            f"refusing to load {what} {path}: it holds {offending}, which is not a tensor, "
            "number, string or container (loading it could run code); use a checkpoint "
            "written by effm2f or export plain weights") from error
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise UnreadableFileError(
            f"cannot read {what} {path}: it is truncated or not a torch file "
            f"({type(error).__name__}: {str(error).splitlines()[0]}); write it again or "
            "restore it (e.g. dvc pull)") from error


def _storage_from_bytes(data: bytes) -> Any:
    """torch.storage._load_from_bytes, but through torch's weights-only loader."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds containers, numbers, strings, numpy arrays and torch tensors; nothing else.

    detectron2's model zoo pickles numpy arrays; Mask2Former's Swin conversion script pickles torch
    tensors with plain pickle.
    """

    ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # bytes pickled by Python 2 / protocol 2
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _storage_from_bytes
        if (module, name) in self.ALLOWED or module == "numpy.dtypes":
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


class _Refused(pickle.UnpicklingError):
    """The unpickler met a type outside its allow-list (its name is the message)."""


def load_array_pickle(path: str | Path, *, what: str = "checkpoint") -> Any:
    """A plain pickle of arrays (detectron2 .pkl), rebuilt with :class:`_ArrayUnpickler`.

    Raises:
        UnreadableFileError: missing, truncated or not a pickle.
        UnsafeFileError: it holds a type outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(f"{what} not found: {path}")
    try:
        with path.open("rb") as handle:
            return _ArrayUnpickler(handle, encoding="latin1").load()
    except _Refused as error:
        raise UnsafeFileError(
            f"refusing to load {what} {path}: it holds {error}, which is not an array, number, "
            "string or container (loading it could run code)") from error
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError) as error:
        raise UnreadableFileError(
            f"cannot read {what} {path}: it is truncated or not a pickle of arrays "
            f"({type(error).__name__}: {error})") from error
