"""The project's error for bad input a user can fix.

Every such error names the thing (a file, a config key) and says what to do. The command line
(`effm2f.cli.errors`) prints it as one line and exits with status 2; a :class:`RunFailure` exits
with status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input a user can fix: a missing or corrupt file, a malformed annotation, an unknown
    config key, a wrong checksum. The message names the thing and what to do."""


class RunFailure(Exception):
    """A run that failed for a reason its message states (a NaN loss); not a bug, not bad input."""
