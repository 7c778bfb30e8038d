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
    probe = out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {out}: {probe} is a file, where a folder is needed")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {out}: cannot write there ({probe} does not allow writing)")
    return out
