"""A set of output files written all or nothing: ``pred/`` + ``vis/`` of ``masklab infer``, a MAL
labels file with its overlays.

Each file alone is already atomic (:mod:`masklab.atomic_files`), but a failure on the fifth of ten
(full disk, ``ulimit -f``, an image that cannot be read) would leave four predictions beside an
earlier run's, or a labels file without its overlays. :func:`staged_outputs` has the writer fill a
hidden folder inside the output folder (same file system) and moves every file into place only
once all are written; on a failure it removes that folder, and the output folder when it created it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from masklab.errors import ConfigError

STAGING_PREFIX = ".masklab-staging-"


@contextmanager
def staged_outputs(root: str | Path, what: str) -> Iterator[Path]:
    """Yield a folder to write ``root``'s files into (same relative paths); on success they are
    moved under ``root`` (replacing files of the same name, keeping others).

    Raises:
        ConfigError: a file could not be written (one line naming ``root`` and ``what``); nothing
            was added under ``root``.
    """
    root = Path(root)
    created = [p for p in (root, *root.parents) if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    except OSError as exc:
        _remove_empty(created)
        raise ConfigError(f"{root}: could not write the {what} ({exc.strerror or exc})") from None
    try:
        yield stage
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(created)
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
            raise ConfigError(f"{root}: could not write the {what} ({reason}); nothing was written") from None
        raise
    files = sorted(p for p in stage.rglob("*") if not p.is_dir())
    try:
        for file in files:
            target = root / file.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)  # a rename: no new space needed
    except OSError as exc:
        raise ConfigError(
            f"{root}: could not move the {what} into place ({exc.strerror or exc}: {exc.filename}); "
            f"the rest are in {stage}"
        ) from None
    shutil.rmtree(stage, ignore_errors=True)
    if not files:  # nothing to write (no inputs): no empty output folder either
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders :func:`staged_outputs` created (deepest first), while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
