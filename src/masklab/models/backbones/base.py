"""What every backbone tells its heads before the first forward pass."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and strides of the maps a backbone returns, fine to coarse.

    Heads derive their input channels from this instead of having them restated in configs.

    Attributes:
        channels: number of channels of each returned map.
        strides: downsampling factor of each returned map relative to the input image.
    """

    channels: list[int]
    strides: list[int]

    def __post_init__(self) -> None:
        assert len(self.channels) == len(self.strides), (
            f"{len(self.channels)} channels vs {len(self.strides)} strides"
        )

    def __len__(self) -> int:
        return len(self.channels)
