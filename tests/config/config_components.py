"""Small classes that config tests build by dotted path (``config_components:Name``).

Written with ``from __future__ import annotations`` on purpose: every annotation is a string
that the binder must resolve.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, Protocol, Union, runtime_checkable

import torch
from torch import nn

from masklab.config.lazy import Lazy
from masklab.errors import DataError


@dataclass
class Loss:
    """A dataclass the binder may build from a mapping without ``type``."""

    weight: float = 1.0
    name: str = "loss_ce"


class Everything:
    """One parameter per supported annotation."""

    def __init__(
        self,
        i: int = 0,
        f: float = 0.0,
        s: str = "",
        b: bool = False,
        none: None = None,
        opt: Optional[int] = None,  # noqa: UP045 - the old spelling must work too
        union: Union[int, str] = 0,  # noqa: UP007
        pipe: float | list[float] = 0.0,
        lit: Literal["a", "b"] = "a",
        ints: list[int] | None = None,
        var_tuple: tuple[int, ...] = (),
        pair: tuple[int, str] = (0, ""),
        table: dict[str, float] | None = None,
        seq: Sequence[str] = (),
        mapping: Mapping[str, int] | None = None,
        anything: Any = None,
        path: pathlib.Path | None = None,
        loss: Loss | None = None,
    ) -> None:
        self.__dict__.update({k: v for k, v in locals().items() if k != "self"})


class Head(nn.Module):
    """A head whose input channels are derived by its owner."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1)
        self.channels = channels


class Backbone(nn.Module):
    def __init__(self, out_channels: int = 3) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv = nn.Conv2d(3, out_channels, 1)


class Model(nn.Module):
    """Owner of a module child, a lazy head and a list of lazy auxiliary heads."""

    def __init__(
        self,
        backbone: Backbone,
        decode_head: Lazy[Head],
        aux_heads: list[Lazy[Head]] = [],  # noqa: B006 - never mutated
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head(in_channels=backbone.out_channels, num_classes=num_classes)
        self.aux_heads = nn.ModuleList(
            a(in_channels=backbone.out_channels, num_classes=num_classes) for a in aux_heads
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head.conv(self.backbone.conv(x))


class Flexible:
    """Accepts extra keys through ``**kwargs``."""

    def __init__(self, a: int, **kwargs: Any) -> None:
        self.a = a
        self.extra = kwargs


class Picky:
    """Raises from its constructor: a ValueError (becomes a ConfigError) or a MasklabError (kept)."""

    def __init__(self, mode: str) -> None:
        if mode == "value":
            raise ValueError("mode 'value' is not supported")
        if mode == "data":
            raise DataError("labels.png: label 9 out of range")


def make_pair(left: int, right: int = 1) -> tuple[int, int]:
    """A factory function is as good as a class."""
    return left, right


class Scorer(Protocol):
    """A protocol without @runtime_checkable: isinstance() refuses it, the binder must not."""

    def __call__(self, x: float) -> float: ...


@runtime_checkable
class Named(Protocol):
    """A runtime-checkable protocol with a data member."""

    name: str

    def describe(self) -> str: ...


class Doubler:
    """Follows ``Scorer``."""

    def __init__(self, factor: float = 2.0) -> None:
        self.factor = factor

    def __call__(self, x: float) -> float:
        return self.factor * x


class Tag:
    """Follows ``Named`` (its data member is set by ``__init__``)."""

    def __init__(self, name: str = "t") -> None:
        self.name = name

    def describe(self) -> str:
        return self.name


class UsesProtocols:
    """Parameters annotated with protocols, as DecodeHead's ``sampler: PixelSampler | None``."""

    def __init__(self, scorer: Scorer | None = None, named: Named | None = None) -> None:
        self.scorer = scorer
        self.named = named
