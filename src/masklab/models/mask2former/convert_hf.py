"""Hugging Face ``Mask2FormerForUniversalSegmentation`` weights -> masklab ``Mask2Former`` state dict.

Covers the Mask2Former-specific part (pixel decoder, masked decoder, heads). Backbone keys
(``model.pixel_level_module.encoder.*``) are handed to ``backbone_key_map``; the default keeps them under
``backbone.`` unchanged, which fits a backbone module that wraps the HF backbone. Renaming HF Swin/ResNet
keys to timm names is not done here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from masklab.errors import CheckpointError

_PIX = "model.pixel_level_module.decoder."
_TRM = "model.transformer_module."
_BACKBONE = "model.pixel_level_module.encoder."

# (HF pattern, masklab template), tried in order; groups are substituted into the template.
_RULES: list[tuple[str, str]] = [
    (r"level_embed", "pixel_decoder.level_embed"),
    (r"input_projections\.(\d+)\.([01])\.(weight|bias)", r"pixel_decoder.input_proj.\1.\2.\3"),
    (
        r"encoder\.layers\.(\d+)\.self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)",
        r"pixel_decoder.layers.\1.self_attn.\2.\3",
    ),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"pixel_decoder.layers.\1.norm1.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"pixel_decoder.layers.\1.linear1.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"pixel_decoder.layers.\1.linear2.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"pixel_decoder.layers.\1.norm2.\2"),
    (r"adapter_1\.([01])\.(weight|bias)", r"pixel_decoder.lateral.\1.\2"),
    (r"layer_1\.([01])\.(weight|bias)", r"pixel_decoder.output.\1.\2"),
    (r"mask_projection\.(weight|bias)", r"pixel_decoder.mask_features.\1"),
]
_DECODER_RULES: list[tuple[str, str]] = [
    (r"queries_embedder\.weight", "decoder.query_embed.weight"),
    (r"queries_features\.weight", "decoder.query_feat.weight"),
    (r"level_embed\.weight", "decoder.level_embed.weight"),
    (r"input_projections\.(\d+)\.(weight|bias)", r"decoder.input_proj.\1.\2"),
    (
        r"decoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
        r"decoder.layers.\1.self_attn.attn.out_proj.\2",
    ),
    (r"decoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"decoder.layers.\1.self_attn.norm.\2"),
    (
        r"decoder\.layers\.(\d+)\.cross_attn\.(in_proj_weight|in_proj_bias)",
        r"decoder.layers.\1.cross_attn.attn.\2",
    ),
    (
        r"decoder\.layers\.(\d+)\.cross_attn\.out_proj\.(weight|bias)",
        r"decoder.layers.\1.cross_attn.attn.out_proj.\2",
    ),
    (
        r"decoder\.layers\.(\d+)\.cross_attn_layer_norm\.(weight|bias)",
        r"decoder.layers.\1.cross_attn.norm.\2",
    ),
    (r"decoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"decoder.layers.\1.ffn.linear1.\2"),
    (r"decoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"decoder.layers.\1.ffn.linear2.\2"),
    (r"decoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"decoder.layers.\1.ffn.norm.\2"),
    (r"decoder\.layernorm\.(weight|bias)", r"decoder.decoder_norm.\1"),
    (
        r"decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.(weight|bias)",
        r"decoder.heads.mask_embed.layers.\1.\2",
    ),
]
_QKV = re.compile(
    r"model\.transformer_module\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)"
)


def _apply(rules: list[tuple[str, str]], key: str) -> str | None:
    for pattern, template in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    return None


def load_hf_state_dict(src: str | Path) -> dict[str, torch.Tensor]:
    """Read a HF checkpoint: ``.safetensors`` or a ``torch.save``-d state dict (optionally under ``state_dict``)."""
    path = Path(src)
    if not path.is_file():
        raise CheckpointError(f"{path}: HF Mask2Former checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return dict(obj)


def convert_hf_state_dict(
    hf: Mapping[str, torch.Tensor],
    backbone_key_map: Callable[[str], str | None] | None = None,
    source: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Rename HF keys to masklab keys; HF's separate self-attention q/k/v are fused into ``in_proj``.

    Args:
        hf: HF state dict.
        backbone_key_map: maps a backbone key (prefix ``model.pixel_level_module.encoder.`` removed) to a
            masklab key, or None to drop it. Default: ``backbone.<key>``.
        source: name used in error messages.

    Raises:
        CheckpointError: on a key no rule knows (the checkpoint is not a Mask2Former of this layout).
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in hf.items():
        if key == "criterion.empty_weight":
            continue  # rebuilt from eos_coef
        new: str | None
        if key.startswith(_BACKBONE):
            rest = key[len(_BACKBONE) :]
            new = backbone_key_map(rest) if backbone_key_map else f"backbone.{rest}"
            if new is not None:
                out[new] = value
            continue
        if m := _QKV.fullmatch(key):
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        if key.startswith("class_predictor."):
            new = "decoder.heads.class_embed." + key[len("class_predictor.") :]
        elif key.startswith(_PIX):
            new = _apply(_RULES, key[len(_PIX) :])
        elif key.startswith(_TRM):
            new = _apply(_DECODER_RULES, key[len(_TRM) :])
        else:
            new = None
        if new is None:
            raise CheckpointError(f"{source}: key {key!r} is not a known HF Mask2Former weight")
        out[new] = value
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{source}: decoder layer {layer} self-attention {kind} lacks one of q/k/v")
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"decoder.layers.{layer}.self_attn.attn.{name}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], 0
        )
    return out


def convert_hf_mask2former(
    src: str | Path, dst: str | Path, backbone_key_map: Callable[[str], str | None] | None = None
) -> dict[str, torch.Tensor]:
    """Convert a HF checkpoint file and write a masklab checkpoint (``{"model": state_dict, "meta": ...}``).

    Returns:
        The converted state dict.
    """
    state = convert_hf_state_dict(load_hf_state_dict(src), backbone_key_map, source=str(src))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    torch.save({"model": state, "meta": {"converted_from": str(src), "format": "hf-mask2former"}}, tmp)
    tmp.replace(dst)  # never leave a torn file
    return state
