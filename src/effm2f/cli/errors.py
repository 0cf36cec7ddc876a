"""One line on stderr for a failure the user can act on, the traceback only with ``--debug``.

Every ``effm2f`` command's ``main`` is wrapped by :func:`guarded`: the project's own errors
(`effm2f.errors.InputError`: bad config, files, annotations, checkpoints, downloads) and OS errors
(a missing file, a read-only folder, a full disk) exit with status 2 and one line naming the file
and what to do; a failed run (`effm2f.errors.RunFailure`, e.g. a NaN loss) exits with status 1 and
its line. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

from effm2f.errors import InputError, RunFailure

BAD_INPUT = 2
RUN_FAILED = 1
DEBUG_FLAG = "--debug"

_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.EACCES: "make it writable (or readable) or choose another folder",
    errno.EPERM: "make it writable (or readable) or choose another folder",
    errno.EROFS: "the file system is read-only: choose another folder",
    errno.ENOSPC: "the disk is full: free some space and run the command again",
    errno.EDQUOT: "the disk quota is exceeded: free some space and run the command again",
}


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe(error: BaseException) -> tuple[int, str] | None:
    """(exit status, message) of a failure the user can act on; None for anything else."""
    if isinstance(error, InputError):
        return BAD_INPUT, one_line(str(error))
    if isinstance(error, RunFailure):
        return RUN_FAILED, one_line(str(error))
    if isinstance(error, OSError) and error.strerror:
        names = [str(n) for n in (error.filename, error.filename2) if n is not None]
        hint = _OS_HINTS.get(error.errno or 0, "check the file and its folder")
        where = " -> ".join(names) or "(no file named)"
        return BAD_INPUT, f"{where}: {error.strerror}; {hint}"
    return None


def guarded(prog: str) -> Callable[[Callable[[list[str]], Any]], Callable[..., Any]]:
    """Wrap a command's ``main(argv)``: ``--debug`` anywhere in argv shows tracebacks, else a
    failure :func:`describe` knows becomes one line on stderr and its exit status."""

    def wrap(main: Callable[[list[str]], Any]) -> Callable[..., Any]:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> Any:
            args = list(sys.argv[1:] if argv is None else argv)
            debug = DEBUG_FLAG in args
            try:
                return main([a for a in args if a != DEBUG_FLAG])
            except Exception as error:
                known = None if debug else describe(error)
                if known is None:
                    raise
                status, message = known
                print(f"{prog}: error: {message}", file=sys.stderr)
                raise SystemExit(status) from None

        return run

    return wrap
