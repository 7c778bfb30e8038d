"""``Config``: a loaded config tree that remembers which file set every key.

A :class:`Config` wraps a plain nested dict (mappings, lists, scalars as YAML gives them) and a
provenance map ``{dotted key: file}``. Sections are views sharing the same provenance, so an error
deep inside ``model.decode_head`` can still say ``configs/x.yaml: model.decode_head.chanels: ...``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from masklab.errors import ConfigError

OVERRIDE = "<override>"
_MISSING = object()


def join(prefix: str, key: str | int) -> str:
    """Dotted path ``prefix.key`` (``key`` alone at the root)."""
    return f"{prefix}.{key}" if prefix else str(key)


def split(path: str) -> list[str]:
    """Segments of a dotted path (``""`` has none)."""
    return path.split(".") if path else []


class Config(Mapping[str, Any]):
    """A read-only view of a config mapping with per-key provenance.

    Args:
        data: the mapping this view shows (shared, not copied).
        provenance: ``{full dotted key: file or "<override>"}`` for the whole tree.
        filename: the top-level file the tree was loaded from.
        prefix: dotted path of this view from the root ("" for the root).
    """

    def __init__(
        self,
        data: dict[str, Any],
        provenance: dict[str, str] | None = None,
        *,
        filename: str = "",
        prefix: str = "",
    ) -> None:
        self._data = data
        self._provenance = provenance if provenance is not None else {}
        self._filename = filename
        self._prefix = prefix

    # -- mapping protocol -------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        if isinstance(value, dict):
            return Config(value, self._provenance, filename=self._filename, prefix=join(self._prefix, key))
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config {self._prefix or 'root'} has no key {name!r}") from None

    def __repr__(self) -> str:
        return f"Config({self._filename!r}, prefix={self._prefix!r}, keys={list(self._data)})"

    # -- queries ----------------------------------------------------------------------------------
    @property
    def filename(self) -> str:
        """The top-level file this config was loaded from."""
        return self._filename

    @property
    def prefix(self) -> str:
        """Dotted path of this view from the root ("" for the root)."""
        return self._prefix

    def get_path(self, path: str, default: Any = _MISSING) -> Any:
        """The value at dotted ``path`` (list indices allowed: ``dataset.train.pipeline.0``).

        Raises:
            ConfigError: the path does not exist and no ``default`` was given.
        """
        node: Any = self
        for seg in split(path):
            if isinstance(node, Mapping) and seg in node:
                node = node[seg]
            elif isinstance(node, list) and seg.lstrip("-").isdigit() and -len(node) <= int(seg) < len(node):
                node = node[int(seg)]
            else:
                if default is not _MISSING:
                    return default
                raise ConfigError(f"{self.source(path)}: {join(self._prefix, path)}: no such key")
        if isinstance(node, dict):
            return Config(node, self._provenance, filename=self._filename, prefix=join(self._prefix, path))
        return node

    def source(self, path: str = "") -> str:
        """The file that set dotted ``path`` (relative to this view), or ``<override>``.

        A key that no file set itself (a merged mapping) reports the closest ancestor that was set,
        and finally the top-level file.
        """
        segs = split(join(self._prefix, path) if path else self._prefix)
        while segs:
            hit = self._provenance.get(".".join(segs))
            if hit is not None:
                return hit
            segs.pop()
        return self._filename

    def source_of_full(self, full_path: str) -> str:
        """Like :meth:`source` but ``full_path`` is counted from the root, not from this view."""
        root = Config(self._data, self._provenance, filename=self._filename)
        return root.source(full_path)

    def provenance(self) -> dict[str, str]:
        """A copy of the ``{dotted key: file}`` map of the keys under this view."""
        if not self._prefix:
            return dict(self._provenance)
        head = self._prefix + "."
        return {k: v for k, v in self._provenance.items() if k == self._prefix or k.startswith(head)}

    # -- output -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A deep copy as plain nested dicts and lists."""
        return copy.deepcopy(self._data)

    def pretty(self) -> str:
        """The config as YAML text (keys in file order)."""
        from masklab.config.load import ConfigDumper  # load.py owns the YAML dialect

        return yaml.dump(self.to_dict(), Dumper=ConfigDumper, sort_keys=False, default_flow_style=False)

    def dump(self, path: str | Path) -> None:
        """Write the config as YAML; :func:`masklab.config.load_config` reads it back unchanged."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.pretty(), encoding="utf-8")
