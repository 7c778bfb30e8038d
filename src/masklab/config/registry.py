"""Name -> class tables, one per kind of component.

Registries exist only at the config boundary: a class registers under its name so that a config
node ``{type: FCNHead, ...}`` can find it. Inside the code, use plain imports and constructors.
A ``type`` may also be a dotted path ``my_pkg.heads:MyHead`` which needs no registration.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

from masklab.errors import ConfigError

T = TypeVar("T")


class Registry:
    """A table of named classes (or factory functions) of one kind.

    Args:
        kind: what the table holds ("backbone", "head", ...); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._table: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Class decorator: ``@HEADS.register()`` registers under the class's ``__name__``.

        Registering a second object under a taken name is an error (two definitions would
        silently shadow each other otherwise).
        """

        def deco(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._table and self._table[key] is not obj:
                raise KeyError(f"{self.kind} {key!r} is already registered by {self._table[key]!r}")
            self._table[key] = obj  # type: ignore[assignment]
            return obj

        return deco

    def get(self, name: str, where: str = "") -> Callable[..., Any]:
        """The object registered as ``name``; an unknown name is a :class:`ConfigError` with suggestions."""
        from masklab.config.registries import populate

        if name in self._table:  # already registered: no need to import every package
            return self._table[name]
        populate()
        if name in self._table:
            return self._table[name]
        close = difflib.get_close_matches(name, self._table, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        prefix = f"{where}: " if where else ""
        raise ConfigError(
            f"{prefix}unknown {self.kind} type {name!r}{hint} (known: {', '.join(sorted(self._table)) or 'none'})"
        )

    def __contains__(self, name: str) -> bool:
        from masklab.config.registries import populate

        populate()
        return name in self._table

    def names(self) -> list[str]:
        from masklab.config.registries import populate

        populate()
        return sorted(self._table)

    def items(self) -> list[tuple[str, Callable[..., Any]]]:
        from masklab.config.registries import populate

        populate()
        return sorted(self._table.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._table)} entries)"
