"""Folder conventions shared by the named datasets: paths relative to a dataset ``root``.

MMSeg users write ``data_root`` plus ``data_prefix``; masklab's named datasets take ``root`` plus
optional ``img_dir`` / ``ann_dir`` / ``split`` that are joined to it when relative, and derive the
standard layout from ``subset`` when they are left out.
"""

from __future__ import annotations

from pathlib import Path

from masklab.errors import DataError


def under_root(root: str | Path | None, path: str | Path | None, default: str, where: str) -> Path:
    """``path`` (joined to ``root`` when relative), else ``root / default``.

    Raises:
        DataError: neither ``path`` nor ``root`` is given (``where`` names the dataset argument).
    """
    if path is not None:
        p = Path(path)
        return p if root is None or p.is_absolute() else Path(root) / p
    if root is None:
        raise DataError(
            f"{where}: give either 'root' (standard layout) or '{where.rsplit('.', 1)[-1]}' explicitly"
        )
    return Path(root) / default
