"""Output files named on the command line, checked before the work that fills them."""

from __future__ import annotations

import os
from pathlib import Path

from masklab.errors import ConfigError


def check_output_file(path: str | Path, flag: str = "--out", example: str = "out.json") -> Path:
    """``path`` as a :class:`Path` once it can be written as a file; else a one-line
    :class:`ConfigError` naming ``flag`` and the path, before a long run makes it too late.

    Refused: an existing folder, a nearest existing parent that is a file or not writable.
    Nothing is created here (the writer creates the folders when it writes).
    """
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"{flag} {out}: is a folder; expected a file path such as {out / example}")
    _check_writable_parent(out, out.parent, flag)
    return out


def check_output_dir(path: str | Path, flag: str) -> Path:
    """``path`` once it is, or can be created as, a writable folder; else a one-line
    :class:`ConfigError` naming ``flag`` (nothing is created here)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out}: is a file; expected a folder to write into")
    _check_writable_parent(out, out, flag)
    return out


def _check_writable_parent(out: Path, start: Path, flag: str) -> None:
    """The nearest existing folder at or above ``start`` must be a writable folder."""
    probe = start
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {out}: {probe} is a file, where a folder is needed")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {out}: cannot write there ({probe} does not allow writing)")
