"""Conv -> norm -> activation, the block every segmentation head is made of."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from masklab.errors import ModelError

NormType = Literal["bn", "syncbn", "gn", "ln"]
ActType = Literal["relu", "gelu"]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of an NCHW map (what ConvNeXt-style heads call "ln")."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def build_norm(norm: str | None, channels: int, num_groups: int = 32) -> nn.Module | None:
    """The normalisation layer named ``norm`` for ``channels`` channels (None -> no layer).

    Raises:
        ModelError: unknown name, GroupNorm groups that do not divide the channels, or SyncBN
            without a process group.
    """
    if norm is None:
        return None
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "syncbn":
        import torch.distributed as dist

        # SyncBN silently needs a process group at forward time; fail at build time with the fix instead.
        if not (dist.is_available() and dist.is_initialized()):
            raise ModelError(
                "norm: syncbn needs a distributed process group; set `norm: bn` for single-process runs "
                "or launch with torchrun"
            )
        return nn.SyncBatchNorm(channels)
    if norm == "gn":
        if channels % num_groups:
            raise ModelError(f"norm: gn with {num_groups} groups does not divide {channels} channels")
        return nn.GroupNorm(num_groups, channels)
    if norm == "ln":
        return ChannelLayerNorm(channels)
    raise ModelError(f"norm: unknown norm {norm!r}; expected one of bn, syncbn, gn, ln or null")


def build_act(act: str | None) -> nn.Module | None:
    """The activation named ``act`` (None -> no layer).

    Raises:
        ModelError: unknown name.
    """
    if act is None:
        return None
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "gelu":
        return nn.GELU()
    raise ModelError(f"act: unknown activation {act!r}; expected relu, gelu or null")


class ConvNormAct(nn.Sequential):
    """``Conv2d`` followed by an optional norm and activation.

    The conv has a bias only when no norm follows it (a norm's shift makes it redundant).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: conv kernel size.
        stride: conv stride.
        padding: conv padding; None = ``dilation * (kernel_size // 2)`` ("same" for odd kernels).
        dilation: conv dilation.
        groups: conv groups.
        norm: "bn", "syncbn", "gn", "ln" or None.
        act: "relu", "gelu" or None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        norm: NormType | None = "bn",
        act: ActType | None = "relu",
    ) -> None:
        if padding is None:
            padding = dilation * (kernel_size // 2)
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=norm is None,
            )
        ]
        norm_layer = build_norm(norm, out_channels)
        if norm_layer is not None:
            layers.append(norm_layer)
        act_layer = build_act(act)
        if act_layer is not None:
            layers.append(act_layer)
        super().__init__(*layers)
