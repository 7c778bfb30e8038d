"""Any timm model as a multi-scale backbone (``features_only``), with local weights and frozen stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import nn

from masklab.config.registries import BACKBONES
from masklab.errors import CheckpointError, ModelError
from masklab.models.backbones.base import FeatureInfo
from masklab.models.backbones.weight_file import describe_mismatch, read_weight_file


def _canonical(name: str) -> str:
    """Module/parameter name with FeatureListNet's flattening undone for comparison.

    timm's FeatureListNet renames ``stages.0`` to ``stages_0``; mapping every ``_`` to ``.`` on both
    sides makes the two spellings compare equal (names are only compared, never looked up).
    """
    return name.replace("_", ".")


@BACKBONES.register()
class TimmBackbone(nn.Module):
    """A timm model built with ``features_only=True``.

    Args:
        model_name: timm architecture name, e.g. ``resnet50``, ``convnext_tiny``, ``swin_tiny_patch4_window7_224``.
        pretrained: ``False`` for random init, or a local ``.safetensors`` / torch state-dict file (a
            timm classification checkpoint loads; its head is dropped). Nothing is ever downloaded.
        out_indices: which of timm's feature levels to return (timm numbering); None = all.
        output_stride: 8 or 16 dilates the last stages (ResNet "-D8"/"-D16" settings); 32 or None =
            native. timm builds no other value (its ``assert output_stride in (8, 16, 32)``).
        frozen_stages: freeze every module up to and including feature level ``frozen_stages``
            (timm numbering; for ResNet 0 = stem, 1 = stem + layer1, as in MMSeg); -1 freezes nothing.
            Frozen modules get ``requires_grad=False`` and stay in eval mode.
        norm_eval: keep every BatchNorm in eval mode (running statistics frozen) while training.
        drop_path_rate: stochastic depth rate (passed to timm when non-zero).
        in_chans: number of input channels.
        out_norm: a LayerNorm over the channels of every returned map (the per-output norms of the
            original Mask2Former Swin backbone and of HF's ``hidden_states_norms``), saved as ``out_norms.<i>``.
        pad_windows_first: Swin only: pad to whole windows before the cyclic shift, as the original Swin
            and HF do (timm shifts first; see :mod:`.swin_padding`). Needed for HF-converted Swin weights
            to give HF's features at sizes that are not multiples of 32 x window.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``img_size`` for Swin/ViT).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool | str = False,
        out_indices: tuple[int, ...] | None = None,
        output_stride: Literal[8, 16, 32] | None = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        drop_path_rate: float = 0.0,
        in_chans: int = 3,
        out_norm: bool = False,
        pad_windows_first: bool = False,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        if pretrained is True:
            raise ModelError(
                f"backbone {model_name!r}: pretrained=true would download weights, and there is no network; "
                "set pretrained to a local .safetensors or .pth file path instead"
            )
        if output_stride not in (None, 8, 16, 32):  # the config binder checks the Literal first
            raise ModelError(
                f"backbone {model_name!r}: output_stride: expected 8, 16, 32 or null, got {output_stride!r}"
            )
        kwargs: dict[str, Any] = dict(timm_kwargs)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if output_stride is not None:
            kwargs["output_stride"] = output_stride
        if drop_path_rate:
            kwargs["drop_path_rate"] = drop_path_rate
        try:
            self.model = timm.create_model(
                model_name, features_only=True, pretrained=False, in_chans=in_chans, **kwargs
            )
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                close = timm.list_models(f"*{model_name.split('_')[0]}*")[:5]
                raise ModelError(
                    f"backbone: unknown timm model {model_name!r} (similar: {', '.join(close)})"
                ) from None
            raise
        if pad_windows_first:
            from masklab.models.backbones.swin_padding import pad_windows_first as use_original_padding

            if not use_original_padding(self.model):
                raise ModelError(
                    f"backbone {model_name!r}: pad_windows_first is for timm Swin models, and this one has "
                    "no Swin blocks"
                )
        info = self.model.feature_info
        self.feature_info = FeatureInfo(channels=list(info.channels()), strides=list(info.reduction()))
        # Swin-like models return NHWC maps; heads expect NCHW.
        self._nhwc = str(getattr(getattr(self.model, "output_fmt", "NCHW"), "value", "NCHW")) == "NHWC"
        # Registered only when asked for, so checkpoints of backbones without it keep their keys.
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in info.channels()) if out_norm else None
        self.model_name = model_name
        self.in_chans = in_chans
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages
        self._timm_kwargs = {k: v for k, v in kwargs.items() if k != "out_indices"}
        if isinstance(pretrained, str | Path) and pretrained:
            self.load_weights(pretrained)
        self._frozen_modules = self._freeze(frozen_stages)
        self.train(self.training)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps, one per out index, fine to coarse, each (B, C_i, H/s_i, W/s_i)."""
        feats = self.model(x)
        if self.out_norms is not None:
            if self._nhwc:
                feats = [norm(f) for norm, f in zip(self.out_norms, feats, strict=True)]
            else:
                feats = [
                    norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
                    for norm, f in zip(self.out_norms, feats, strict=True)
                ]
        if self._nhwc:
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        return list(feats)

    def train(self, mode: bool = True) -> TimmBackbone:
        """Switch mode, keeping frozen stages (and all BatchNorms when ``norm_eval``) in eval mode."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules:
                module.training = False
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def load_weights(self, path: str | Path) -> None:
        """Load a local weight file (a timm classification checkpoint or a features checkpoint).

        Weights of the file that the backbone does not take are fine when they belong to the parts of
        the classification model a features model drops (its classifier head, final norm); any
        other unused weight (resnet34 weights for a resnet18: its extra blocks) is named in one
        ``warning:`` line, since the file is probably of another architecture.

        Raises:
            CheckpointError: the file does not provide every backbone weight with the right shape.
        """
        source = read_weight_file(path)
        target = self.model.state_dict()
        mapped: dict[str, torch.Tensor] = {}
        used: set[str] = set()
        for key, value in target.items():
            # FeatureListNet flattens "stages.0" into "stages_0": try the timm spelling, then the original one.
            for candidate in (key, key.replace("_", ".", 1)):
                if candidate in source:
                    mapped[key] = self._adapt_input_conv(source[candidate], value)
                    used.add(candidate)
                    break
        problem = describe_mismatch(target, mapped)
        if problem:
            unused = [k for k in source if k not in used]
            hint = f" (file has {len(unused)} unused keys, e.g. {', '.join(unused[:3])})" if unused else ""
            raise CheckpointError(f"{path}: does not fit timm model {self.model_name!r}: {problem}{hint}")
        self.model.load_state_dict(mapped, strict=True)
        unused = self._foreign_keys([k for k in source if k not in used])
        if unused:
            from masklab.engine.distributed import is_main_process

            more = f" (+{len(unused) - 5} more)" if len(unused) > 5 else ""
            if is_main_process():
                print(
                    f"warning: {path}: {len(unused)} weights of the file are unused by timm model "
                    f"{self.model_name!r} (its classifier head not counted): {', '.join(unused[:5])}{more}; "
                    "a checkpoint of another architecture?"
                )

    def _foreign_keys(self, unused: list[str]) -> list[str]:
        """The ``unused`` keys that the full timm classification model does not have either (its
        head, which the features model drops, is expected to go unused)."""
        if not unused:
            return []
        try:
            with torch.device("meta"):  # names only: no memory, no init cost
                full = timm.create_model(
                    self.model_name, pretrained=False, in_chans=self.in_chans, **self._timm_kwargs
                )
        except Exception:  # noqa: BLE001 - a features-only keyword: every unused key is reported
            return unused
        known = set(full.state_dict())
        return [k for k in unused if k not in known]

    def _adapt_input_conv(self, weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Adapt an RGB stem conv to ``in_chans`` channels the way timm does; other tensors pass through."""
        if (
            weight.ndim == 4
            and like.ndim == 4
            and weight.shape[1] != like.shape[1]
            and weight.shape[0] == like.shape[0]
        ):
            from timm.models import adapt_input_conv

            return adapt_input_conv(self.in_chans, weight)
        return weight

    def _freeze(self, frozen_stages: int) -> list[nn.Module]:
        """Freeze modules up to feature level ``frozen_stages``; return the fully frozen modules."""
        if frozen_stages < 0:
            return []
        levels = self.model.feature_info.info
        if frozen_stages >= len(levels):
            raise ModelError(
                f"backbone {self.model_name!r}: frozen_stages={frozen_stages} but the model has feature levels "
                f"0..{len(levels) - 1}"
            )
        target = _canonical(levels[frozen_stages]["module"])
        named = list(self.model.named_modules())
        names = [_canonical(n) for n, _ in named]
        inside = [i for i, n in enumerate(names) if n == target or n.startswith(target + ".")]
        assert inside, f"feature module {target!r} not found in {self.model_name}"
        last = inside[-1]
        frozen: list[nn.Module] = []
        for i in range(1, last + 1):  # index 0 is the root module
            name, module = names[i], named[i][1]
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
            # A container whose subtree reaches past the frozen range (e.g. "blocks") stays trainable.
            if not any(n.startswith(name + ".") for n in names[last + 1 :]):
                frozen.append(module)
        return frozen
