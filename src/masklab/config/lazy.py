"""``Lazy[T]``: a config node built later, when the owner knows the values it derives.

A parent whose child needs derived values (a decode head needs the backbone's channels) annotates
the parameter as ``Lazy[DecodeHead]``. The config builder validates the node's keys against the
child's signature up front (so typos fail before any work), and hands the parent a :class:`Lazy`
that it calls with the derived keyword arguments::

    def __init__(self, backbone: Backbone, decode_head: Lazy[DecodeHead]):
        self.decode_head = decode_head(in_channels=backbone.feature_info.channels)

A derived value the config also states must agree with it, otherwise the call is a ``ConfigError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Lazy(Generic[T]):
    """A deferred constructor call: ``factory(**kwargs, **later_kwargs)``, checked when called.

    Args:
        factory: the class or function to call.
        kwargs: keyword arguments already bound from the config.
        path: dotted config path of the node (for error messages).
        source: the file that set the node (for error messages).
        origin: maps a dotted key under ``path`` to the file that set it (default: ``source`` for
            every key), so an error on a key names the file that wrote that key.
    """

    def __init__(
        self,
        factory: Callable[..., T],
        kwargs: dict[str, Any] | None = None,
        path: str = "",
        source: str = "",
        origin: Callable[[str], str] | None = None,
    ) -> None:
        self.factory = factory
        self.kwargs = dict(kwargs or {})
        self.path = path
        self.source = source
        self.origin = origin

    def __call__(self, **later: Any) -> T:
        from masklab.config.build import call_bound  # build.py imports this module

        return call_bound(
            self.factory, self.kwargs, path=self.path, source=self.source, origin=self.origin, provided=later
        )

    def __repr__(self) -> str:
        name = getattr(self.factory, "__name__", repr(self.factory))
        return f"Lazy({name}, {self.kwargs!r})"
