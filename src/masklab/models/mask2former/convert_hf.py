"""Hugging Face ``Mask2FormerForUniversalSegmentation`` weights -> a masklab checkpoint and its model config.

The Mask2Former part (pixel decoder, masked decoder, heads) is renamed by the rules below. The backbone
(``model.pixel_level_module.encoder.*``) is renamed for a :class:`~masklab.models.backbones.TimmBackbone`
by :mod:`masklab.models.backbones.hf_to_timm` (HF ResNet -> timm ``resnet*``, HF Swin -> timm ``swin_*``).
The architecture is read from the weights' shapes (and ``config.json`` when there is one), and written as
a masklab ``model:`` config next to the checkpoint, so that ``build_model`` builds the model the weights
fit. Layer counts: HF ``decoder_layers = N`` is masklab ``decoder.num_layers = N - 1`` (HF counts the
prediction made from the query input as a layer); HF ``encoder_layers`` is ``pixel_decoder.num_layers``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from masklab.errors import CheckpointError
from masklab.models.backbones.hf_to_timm import hf_backbone_to_timm

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


# ------------------------------------------------------------------------------------------ reading
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_EXPECTED = (
    "expected a HF Mask2Former model folder (config.json + model.safetensors or pytorch_model.bin), "
    "a .safetensors file or a torch state dict"
)


@dataclass(frozen=True)
class HFCheckpoint:
    """A HF Mask2Former checkpoint as read from disk.

    Attributes:
        state: the weights, HF key names.
        config: ``config.json`` beside the weights (a Mask2Former config), or None.
        weights: the file the weights came from.
    """

    state: dict[str, torch.Tensor]
    config: dict[str, Any] | None
    weights: Path


def read_hf_checkpoint(src: str | Path) -> HFCheckpoint:
    """Read a HF model folder, or one weights file (with ``config.json`` beside it when there is one).

    Raises:
        CheckpointError: nothing there, not a checkpoint, or not a HF Mask2Former's weights.
    """
    path = Path(src)
    if path.is_dir():
        weights = next((path / n for n in _WEIGHT_FILES if (path / n).is_file()), None)
        if weights is None:
            sharded = " (sharded checkpoints are not read: merge the shards into one file)"
            hint = sharded if any(path.glob("*.index.json")) else ""
            raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin in this folder{hint}")
        config = _read_config(path / "config.json", required_type=True)
    elif path.is_file():
        weights = path
        config = _read_config(path.parent / "config.json", required_type=False)
    else:
        raise CheckpointError(f"{path}: HF Mask2Former checkpoint not found ({_EXPECTED})")
    state = _read_weights(weights)
    if not any(k.startswith(("model.pixel_level_module.", "model.transformer_module.")) for k in state):
        raise CheckpointError(
            f"{weights}: not a HF Mask2Former state dict (no model.pixel_level_module.* keys; e.g. "
            f"{next(iter(state), '<empty>')!r})"
        )
    return HFCheckpoint(state, config, weights)


def load_hf_state_dict(src: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a HF checkpoint (see :func:`read_hf_checkpoint`)."""
    return read_hf_checkpoint(src).state


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror})") from None
    if path.name == "config.json":
        raise CheckpointError(
            f"{path}: not a checkpoint but the model's config.json; pass its folder {path.parent} "
            "(config.json + model.safetensors or pytorch_model.bin)"
        )
    # safetensors: an 8-byte header length, then the JSON header.
    if path.suffix == ".safetensors" or head[8:9] == b"{":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({type(exc).__name__}); {_EXPECTED}"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of every kind: the file is not a torch state dict
        raise CheckpointError(f"{path}: not a checkpoint ({type(exc).__name__}); {_EXPECTED}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return dict(obj)


def _read_config(path: Path, required_type: bool) -> dict[str, Any] | None:
    """``config.json`` when it is a Mask2Former config; beside a single file, any other is ignored."""
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        if not required_type:
            return None
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind == "mask2former":
        return config
    if required_type:
        raise CheckpointError(f"{path}: model_type is {kind!r}, expected 'mask2former'")
    return None


# ------------------------------------------------------------------------------------- converting
def convert_hf_state_dict(
    hf: Mapping[str, torch.Tensor],
    backbone_key_map: Callable[[str], str | None] | None = None,
    source: str = "checkpoint",
    hf_config: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Rename HF keys to masklab keys; HF's separate self-attention q/k/v are fused into ``in_proj``.

    Args:
        hf: HF state dict.
        backbone_key_map: maps a backbone key (prefix ``model.pixel_level_module.encoder.`` removed) to a
            masklab key, or None to drop it. Default: rename for a timm backbone (see
            :func:`~masklab.models.backbones.hf_to_timm.hf_backbone_to_timm`).
        source: name used in error messages.
        hf_config: the HF ``config.json`` contents, checked for settings timm cannot reproduce.

    Raises:
        CheckpointError: on a key no rule knows, or a backbone masklab does not map.
    """
    return _convert(hf, backbone_key_map, source, hf_config)[0]


def _convert(
    hf: Mapping[str, torch.Tensor],
    backbone_key_map: Callable[[str], str | None] | None,
    source: str,
    hf_config: Mapping[str, Any] | None,
) -> tuple[dict[str, torch.Tensor], Any]:
    """The converted state dict, and the backbone import (None under a custom ``backbone_key_map``)."""
    out: dict[str, torch.Tensor] = {}
    backbone: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in hf.items():
        if key == "criterion.empty_weight":
            continue  # rebuilt from eos_coef
        new: str | None
        if key.startswith(_BACKBONE):
            backbone[key[len(_BACKBONE) :]] = value
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
    if backbone_key_map is not None:
        for key, value in backbone.items():
            if (new := backbone_key_map(key)) is not None:
                out[new] = value
        return out, None
    imported = hf_backbone_to_timm(backbone, (hf_config or {}).get("backbone_config"), source)
    out.update({f"backbone.{k}": v for k, v in imported.state.items()})
    return out, imported


# HF Mask2Former settings masklab's model takes, with HF's defaults (equal to masklab's).
_LOSS_SETTINGS = (
    ("class_weight", "class_weight", 2.0),
    ("mask_weight", "mask_weight", 5.0),
    ("dice_weight", "dice_weight", 5.0),
    ("no_object_weight", "eos_coef", 0.1),
    ("train_num_points", "num_points", 12544),
    ("oversample_ratio", "oversample_ratio", 3.0),
    ("importance_sample_ratio", "importance_sample_ratio", 0.75),
)


def hf_model_config(
    hf: Mapping[str, torch.Tensor],
    backbone_node: Mapping[str, Any],
    hf_config: Mapping[str, Any] | None = None,
    source: str = "checkpoint",
) -> dict[str, Any]:
    """The masklab ``model:`` node a HF Mask2Former's weights fit, read from their shapes.

    ``hf_config`` (``config.json``) supplies what shapes do not show (decoder heads, pre-norm, dropout,
    loss weights) and is checked against the shapes.

    Raises:
        CheckpointError: a weight is missing, ``config.json`` disagrees with the weights, or a layout
            masklab's modules cannot hold.
    """
    cfg = dict(hf_config or {})

    def shape(key: str) -> tuple[int, ...]:
        if key not in hf:
            raise CheckpointError(f"{source}: {key!r} missing: not a complete HF Mask2Former checkpoint")
        return tuple(hf[key].shape)

    num_classes = shape("class_predictor.weight")[0] - 1
    num_queries, hidden_dim = shape(_TRM + "queries_features.weight")
    decoder_layers = _count_layers(hf, _TRM + "decoder.layers.")
    encoder_layers = _count_layers(hf, _PIX + "encoder.layers.")
    conv_dim = shape(_PIX + "level_embed")[1]
    # HF's deformable attention: 3 levels x 4 points x (x, y) offsets per head.
    heads = shape(_PIX + "encoder.layers.0.self_attn.sampling_offsets.weight")[0] // (3 * 4 * 2)
    checks = {
        "decoder_layers": (decoder_layers + 1, f"{decoder_layers} decoder layers (+1 for the query input)"),
        "encoder_layers": (encoder_layers, f"{encoder_layers} pixel decoder encoder layers"),
        "hidden_dim": (hidden_dim, f"queries of width {hidden_dim}"),
        "num_queries": (num_queries, f"{num_queries} queries"),
        "feature_size": (conv_dim, f"pixel decoder width {conv_dim}"),
    }
    if "id2label" in cfg:
        checks["num_labels"] = (num_classes, f"a class head of {num_classes} + 1 outputs")
        cfg["num_labels"] = len(cfg["id2label"])
    for name, (value, what) in checks.items():
        if name in cfg and cfg[name] != value:
            raise CheckpointError(
                f"{source}: config.json says {name}={cfg[name]} but the weights have {what}"
            )
    if conv_dim == hidden_dim and any(k.startswith(_TRM + "input_projections.") for k in hf):
        raise CheckpointError(
            f"{source}: decoder input projections with feature_size == hidden_dim "
            "(enforce_input_projection) have no masklab counterpart"
        )
    pixel_decoder: dict[str, Any] = {
        "type": "MSDeformAttnPixelDecoder",
        "conv_dim": conv_dim,
        "mask_dim": shape(_PIX + "mask_projection.weight")[0],
        "num_layers": encoder_layers,
        "num_heads": heads,
        "num_points": 4,
        "ffn_dim": shape(_PIX + "encoder.layers.0.fc1.weight")[0],
        "num_groups": 32,
    }
    decoder: dict[str, Any] = {
        "type": "Mask2FormerTransformerDecoder",
        "num_queries": num_queries,
        "hidden_dim": hidden_dim,
        "num_layers": decoder_layers,
        "nheads": int(cfg.get("num_attention_heads", heads)),
        "dim_feedforward": shape(_TRM + "decoder.layers.0.fc1.weight")[0],
    }
    if cfg.get("pre_norm"):
        decoder["pre_norm"] = True
    if cfg.get("dropout"):
        pixel_decoder["dropout"] = decoder["dropout"] = float(cfg["dropout"])
    node: dict[str, Any] = {
        "type": "Mask2Former",
        "num_classes": num_classes,
        "backbone": dict(backbone_node),
        "pixel_decoder": pixel_decoder,
        "decoder": decoder,
    }
    for hf_name, name, default in _LOSS_SETTINGS:
        node[name] = cfg.get(hf_name, default)
    return node


def _count_layers(hf: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m[1] for k in hf if (m := pattern.match(k))})


# --------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class Mask2FormerConversion:
    """What :func:`convert_hf_mask2former` wrote.

    Attributes:
        state: the masklab state dict saved as the checkpoint's ``model`` entry.
        model: the masklab ``model:`` config node (None under a custom ``backbone_key_map``).
        config_path: where ``model`` was written (None when it was not).
        backbone: how the backbone was mapped, one phrase.
    """

    state: dict[str, torch.Tensor]
    model: dict[str, Any] | None
    config_path: Path | None
    backbone: str


def convert_hf_mask2former(
    src: str | Path, dst: str | Path, backbone_key_map: Callable[[str], str | None] | None = None
) -> Mask2FormerConversion:
    """Convert a HF Mask2Former (folder or weights file) into a masklab checkpoint and model config.

    Writes ``dst`` (``{"model": state_dict, "meta": ...}``) and, unless ``backbone_key_map`` is given,
    the model config beside it (``dst`` with the suffix ``.yaml``). Nothing is written on an error.
    """
    dst = Path(dst)
    if dst.suffix in (".yaml", ".yml", ".json"):
        raise CheckpointError(f"{dst}: the checkpoint to write needs a .pth name (its config goes beside it)")
    ckpt = read_hf_checkpoint(src)
    source = str(ckpt.weights)
    state, imported = _convert(ckpt.state, backbone_key_map, source, ckpt.config)
    model = None if imported is None else hf_model_config(ckpt.state, imported.node, ckpt.config, source)
    config_path = None if model is None else dst.with_suffix(".yaml")
    dst.parent.mkdir(parents=True, exist_ok=True)
    meta = {"converted_from": str(src), "format": "hf-mask2former"}
    if config_path is not None:
        meta["config"] = str(config_path)
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    torch.save({"model": state, "meta": meta}, tmp)
    tmp.replace(dst)  # never leave a torn file
    backbone = "backbone keys mapped by backbone_key_map" if imported is None else imported.description
    if config_path is not None and model is not None:
        _write_model_config(config_path, model, src=str(src), dst=dst, backbone=backbone)
    return Mask2FormerConversion(state, model, config_path, backbone)


def _write_model_config(path: Path, model: dict[str, Any], *, src: str, dst: Path, backbone: str) -> None:
    import yaml

    layers = model["decoder"]["num_layers"]
    header = [
        f"# masklab model config for {dst.name}: `masklab convert hf-mask2former {src} {dst}` wrote both.",
        f"# Backbone: {backbone}.",
        f"# HF decoder_layers={layers + 1} -> decoder.num_layers: {layers} (HF counts the prediction from the",
        "# query input as a layer); HF encoder_layers -> pixel_decoder.num_layers.",
        "# num_classes is fixed by the class head: a dataset with another class count is a ConfigError.",
        "# Use it as a _base_ beside a dataset config, then `masklab evaluate CONFIG CHECKPOINT` / `infer`,",
        f"# or fine-tune with train.load_from: {dst}.",
    ]

    class _Dumper(yaml.SafeDumper):
        pass

    # Nodes as blocks, lists of numbers on one line.
    _Dumper.add_representer(
        list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True)
    )
    body = yaml.dump({"model": model}, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text("\n".join(header) + "\n" + body)
    tmp.replace(path)
