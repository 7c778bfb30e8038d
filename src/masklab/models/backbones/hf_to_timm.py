"""Hugging Face backbone weights -> a :class:`TimmBackbone` state dict and the config node that builds it.

Covers the backbones HF Mask2Former checkpoints use: ``ResNetBackbone`` (-> timm ``resnet*``) and
``SwinBackbone`` (-> timm ``swin_*``, both key spellings: transformers 5 ``swin.…{q,k,v,o}_proj`` and the
v4-era ``…attention.self.{query,key,value}``). The architecture is read from the weights' shapes; a HF
backbone config, when given, is only checked for settings timm cannot reproduce. Anything else is a
one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from masklab.errors import CheckpointError

_SUPPORTED = "supported: HF ResNet -> timm resnet*, HF Swin -> timm swin_*"


@dataclass(frozen=True)
class TimmBackboneImport:
    """HF backbone weights renamed for a :class:`TimmBackbone`, and the backbone node that builds it.

    Attributes:
        state: weights keyed as in ``TimmBackbone.state_dict()`` (``model.…``, ``out_norms.…``).
        node: the ``model.backbone`` config node (``{"type": "TimmBackbone", "model_name": …}``).
        description: one phrase for messages, e.g. ``HF ResNet (basic 2-2-2-2) -> timm resnet18``.
    """

    state: dict[str, torch.Tensor]
    node: dict[str, Any]
    description: str


def hf_backbone_to_timm(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None, source: str = "checkpoint"
) -> TimmBackboneImport:
    """Rename a HF backbone's weights (keys relative to the backbone module) to timm's.

    Args:
        state: HF backbone weights, e.g. ``embedder.embedder.convolution.weight``.
        config: the HF backbone config (``backbone_config`` of ``config.json``), or None.
        source: name used in error messages.

    Raises:
        CheckpointError: the backbone is not one masklab maps, or uses a setting timm cannot reproduce.
    """
    kind = _kind(state, config, source)
    if kind == "resnet":
        return _resnet(state, config or {}, source)
    return _swin(state, config or {}, source)


def _kind(state: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None, source: str) -> str:
    declared = (config or {}).get("model_type")
    if declared is not None and declared not in ("resnet", "swin"):
        raise CheckpointError(
            f"{source}: backbone: a HF {declared!r} backbone has no masklab mapping ({_SUPPORTED})"
        )
    if any(k.startswith("embedder.embedder.") for k in state):
        return "resnet"
    if any(k.startswith(("swin.embeddings.", "embeddings.patch_embeddings.")) for k in state):
        return "swin"
    example = next(iter(state), "<none>")
    raise CheckpointError(
        f"{source}: backbone: keys like {example!r} are not a HF ResNet or Swin backbone, "
        f"which has no masklab mapping ({_SUPPORTED})"
    )


def _refuse(config: Mapping[str, Any], source: str, family: str, settings: Mapping[str, Any]) -> None:
    """One-line error for the first config setting timm's model cannot reproduce."""
    for name, supported in settings.items():
        if name in config and config[name] != supported:
            raise CheckpointError(
                f"{source}: backbone: HF {family} with {name}={config[name]!r} has no timm counterpart "
                f"(timm needs {name}={supported!r})"
            )


# ---------------------------------------------------------------------------------------- ResNet
_RESNET_STEM = re.compile(r"embedder\.embedder\.(convolution|normalization)\.(\w+)")
_RESNET_LAYER = re.compile(
    r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(?:shortcut|layer\.(\d+))\.(convolution|normalization)\.(\w+)"
)
# (block, depths) -> timm name; other depths use the block's base name with ``layers`` set.
_RESNET_NAMES = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}


def _resnet(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str) -> TimmBackboneImport:
    _refuse(
        config,
        source,
        "ResNet",
        {"downsample_in_first_stage": False, "downsample_in_bottleneck": False, "hidden_act": "relu"},
    )
    out: dict[str, torch.Tensor] = {}
    depths: dict[int, int] = {}
    convs: dict[int, int] = {}  # convolutions per block: 2 = basic, 3 = bottleneck
    for key, value in state.items():
        if m := _RESNET_STEM.fullmatch(key):
            out[f"model.{'conv1' if m[1] == 'convolution' else 'bn1'}.{m[2]}"] = value
        elif m := _RESNET_LAYER.fullmatch(key):
            stage, block, conv, kind, leaf = int(m[1]), int(m[2]), m[3], m[4], m[5]
            depths[stage] = max(depths.get(stage, 0), block + 1)
            if conv is None:  # the projection shortcut
                name = f"downsample.{0 if kind == 'convolution' else 1}"
            else:
                convs[stage] = max(convs.get(stage, 0), int(conv) + 1)
                name = f"{'conv' if kind == 'convolution' else 'bn'}{int(conv) + 1}"
            out[f"model.layer{stage + 1}.{block}.{name}.{leaf}"] = value
        else:
            raise CheckpointError(f"{source}: backbone: key {key!r} is not a known HF ResNet weight")
    if sorted(depths) != [0, 1, 2, 3] or len(set(convs.values())) != 1 or set(convs.values()) - {2, 3}:
        raise CheckpointError(
            f"{source}: backbone: HF ResNet with stages {sorted(depths)} and {sorted(set(convs.values()))} "
            "convolutions per block; timm needs 4 stages of basic (2) or bottleneck (3) blocks"
        )
    block = "basic" if convs[0] == 2 else "bottleneck"
    if config.get("layer_type", block) != block:
        raise CheckpointError(
            f"{source}: backbone: config.json says layer_type={config['layer_type']!r} but the weights "
            f"have {block} blocks"
        )
    layers = tuple(depths[s] for s in range(4))
    # timm's `channels` are a stage's inner width: a bottleneck's first 1x1 convolution.
    planes = [int(_need(out, f"model.layer{s + 1}.0.conv1.weight", source).shape[0]) for s in range(4)]
    stem, in_chans = _need(out, "model.conv1.weight", source).shape[:2]
    if stem != 64:
        raise CheckpointError(
            f"{source}: backbone: HF ResNet with embedding_size={stem} has no timm counterpart "
            "(timm's 7x7 stem is 64 channels wide)"
        )
    _fill_batch_counters(out)
    name = _RESNET_NAMES.get((block, layers))
    base = "resnet18" if block == "basic" else "resnet50"
    node: dict[str, Any] = {"type": "TimmBackbone", "model_name": name or base}
    if name is None:
        node["layers"] = list(layers)
    if planes != [64, 128, 256, 512]:
        node["channels"] = planes
    if in_chans != 3:
        node["in_chans"] = in_chans
    node["out_indices"] = [1, 2, 3, 4]
    depth_text = "-".join(map(str, layers))
    return TimmBackboneImport(out, node, f"HF ResNet ({block} {depth_text}) -> timm {node['model_name']}")


def _need(out: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in out:
        raise CheckpointError(f"{source}: backbone: no weight for timm's {key!r}: an incomplete checkpoint")
    return out[key]


def _fill_batch_counters(out: dict[str, torch.Tensor]) -> None:
    """Add ``num_batches_tracked`` where a file left it out (it is only a counter)."""
    for key in [k for k in out if k.endswith(".running_mean")]:
        counter = key[: -len("running_mean")] + "num_batches_tracked"
        out.setdefault(counter, torch.tensor(0, dtype=torch.long))


# ------------------------------------------------------------------------------------------ Swin
_SWIN_EMBED = re.compile(r"(?:swin\.)?embeddings\.(patch_embeddings\.projection|norm)\.(weight|bias)")
_SWIN_BLOCK = re.compile(r"(?:swin\.)?encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)")
_SWIN_DOWN = re.compile(r"(?:swin\.)?encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)")
_SWIN_OUT_NORM = re.compile(r"hidden_states_norms\.stage(\d)\.(weight|bias)")
_SWIN_FINAL_NORM = re.compile(r"(?:swin\.)?layernorm\.(weight|bias)")  # SwinModel's; the maps never see it
# HF block sub-key (either spelling) -> timm block sub-key; q/k/v are fused into ``attn.qkv``.
_SWIN_BLOCK_KEYS = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.q_proj": "q",
    "attention.self.query": "q",
    "attention.k_proj": "k",
    "attention.self.key": "k",
    "attention.v_proj": "v",
    "attention.self.value": "v",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "output.dense": "mlp.fc2",
}
_SWIN_TABLE = (
    "attention.relative_position_bias.relative_position_bias_table",
    "attention.self.relative_position_bias_table",
)
_SWIN_INDEX = (
    "attention.relative_position_bias.relative_position_index",
    "attention.self.relative_position_index",
)
# (embed_dim, depths, num_heads, window) -> timm name; others use swin_tiny's name with the values set.
_SWIN_NAMES = {
    (96, (2, 2, 6, 2), (3, 6, 12, 24), 7): "swin_tiny_patch4_window7_224",
    (96, (2, 2, 18, 2), (3, 6, 12, 24), 7): "swin_small_patch4_window7_224",
    (128, (2, 2, 18, 2), (4, 8, 16, 32), 7): "swin_base_patch4_window7_224",
    (128, (2, 2, 18, 2), (4, 8, 16, 32), 12): "swin_base_patch4_window12_384",
    (192, (2, 2, 18, 2), (6, 12, 24, 48), 7): "swin_large_patch4_window7_224",
    (192, (2, 2, 18, 2), (6, 12, 24, 48), 12): "swin_large_patch4_window12_384",
}


def _swin(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str) -> TimmBackboneImport:
    _refuse(
        config,
        source,
        "Swin",
        {"use_absolute_embeddings": False, "hidden_act": "gelu", "layer_norm_eps": 1e-5, "patch_size": 4},
    )
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, int, str], dict[str, torch.Tensor]] = {}
    depths: dict[int, int] = {}
    tables: dict[int, torch.Tensor] = {}
    indices: list[tuple[str, torch.Tensor]] = []
    for key, value in state.items():
        if m := _SWIN_EMBED.fullmatch(key):
            out[f"model.patch_embed.{'proj' if m[1] != 'norm' else 'norm'}.{m[2]}"] = value
        elif m := _SWIN_DOWN.fullmatch(key):
            # HF merges patches at the end of stage S, timm at the start of stage S + 1.
            out[f"model.layers_{int(m[1]) + 1}.downsample.{m[2]}.{m[3]}"] = value
        elif m := _SWIN_OUT_NORM.fullmatch(key):
            out[f"out_norms.{int(m[1]) - 1}.{m[2]}"] = value
        elif _SWIN_FINAL_NORM.fullmatch(key):
            continue
        elif m := _SWIN_BLOCK.fullmatch(key):
            stage, block, rest = int(m[1]), int(m[2]), m[3]
            depths[stage] = max(depths.get(stage, 0), block + 1)
            prefix = f"model.layers_{stage}.blocks.{block}"
            if rest in _SWIN_TABLE:
                out[f"{prefix}.attn.relative_position_bias_table"] = value
                tables[stage] = value
                continue
            if rest in _SWIN_INDEX:
                indices.append((key, value))  # a buffer timm recomputes; checked below, not copied
                continue
            module, _, leaf = rest.rpartition(".")
            target = _SWIN_BLOCK_KEYS.get(module)
            if target is None or leaf not in ("weight", "bias"):
                raise CheckpointError(f"{source}: backbone: key {key!r} is not a known HF Swin weight")
            if target in ("q", "k", "v"):
                qkv.setdefault((stage, block, leaf), {})[target] = value
            else:
                out[f"{prefix}.{target}.{leaf}"] = value
        elif key.startswith(("swin.embeddings.position_embeddings", "embeddings.position_embeddings")):
            raise CheckpointError(
                f"{source}: backbone: HF Swin with absolute position embeddings has no timm counterpart"
            )
        else:
            raise CheckpointError(f"{source}: backbone: key {key!r} is not a known HF Swin weight")
    for (stage, block, leaf), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{source}: backbone: Swin stage {stage} block {block} lacks one of q/k/v")
        out[f"model.layers_{stage}.blocks.{block}.attn.qkv.{leaf}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], 0
        )
    if sorted(depths) != [0, 1, 2, 3] or sorted(tables) != [0, 1, 2, 3]:
        raise CheckpointError(f"{source}: backbone: HF Swin with stages {sorted(depths)}; timm needs 4")
    missing = [f"stage{i + 1}" for i in range(4) if f"out_norms.{i}.weight" not in out]
    if missing:
        raise CheckpointError(
            f"{source}: backbone: HF Swin without hidden_states_norms.{missing[0]}: Mask2Former needs "
            "all four stage outputs"
        )
    window = _window(tables, source)
    _check_indices(indices, window, source)
    proj = _need(out, "model.patch_embed.proj.weight", source)
    if tuple(proj.shape[2:]) != (4, 4):
        raise CheckpointError(f"{source}: backbone: HF Swin patch size {tuple(proj.shape[2:])}; timm needs 4")
    embed_dim, in_chans = int(proj.shape[0]), int(proj.shape[1])
    layers = tuple(depths[s] for s in range(4))
    heads = tuple(int(tables[s].shape[1]) for s in range(4))
    mlp_ratio = _need(out, "model.layers_0.blocks.0.mlp.fc1.weight", source).shape[0] / embed_dim
    qkv_bias = "model.layers_0.blocks.0.attn.qkv.bias" in out
    name = _SWIN_NAMES.get((embed_dim, layers, heads, window))
    node: dict[str, Any] = {"type": "TimmBackbone", "model_name": name or "swin_tiny_patch4_window7_224"}
    if name is None:
        node.update(embed_dim=embed_dim, depths=list(layers), num_heads=list(heads), window_size=window)
    if mlp_ratio != 4.0:
        node["mlp_ratio"] = mlp_ratio
    if not qkv_bias:
        node["qkv_bias"] = False
    if in_chans != 3:
        node["in_chans"] = in_chans
    if config.get("drop_path_rate") is not None:
        node["drop_path_rate"] = float(config["drop_path_rate"])
    # HF's SwinBackbone shifts windows at every resolution (always_partition), takes any input size and,
    # like the original Swin, pads to whole windows before shifting (pad_windows_first).
    node.update(
        out_indices=[0, 1, 2, 3],
        out_norm=True,
        pad_windows_first=True,
        always_partition=True,
        strict_img_size=False,
    )
    text = f"HF Swin (embed {embed_dim}, depths {'-'.join(map(str, layers))}, window {window})"
    return TimmBackboneImport(out, node, f"{text} -> timm {node['model_name']}")


def _window(tables: Mapping[int, torch.Tensor], source: str) -> int:
    """Window size from the bias tables, ((2w - 1)^2, heads) each; one size for every stage."""
    sizes = set()
    for table in tables.values():
        side = math.isqrt(int(table.shape[0]))
        if side * side != table.shape[0] or side % 2 == 0:
            raise CheckpointError(
                f"{source}: backbone: Swin relative_position_bias_table with {table.shape[0]} rows is not "
                "(2 * window - 1)^2"
            )
        sizes.add((side + 1) // 2)
    if len(sizes) != 1:
        raise CheckpointError(
            f"{source}: backbone: Swin stages use windows {sorted(sizes)}; timm needs one size"
        )
    return sizes.pop()


def _check_indices(indices: list[tuple[str, torch.Tensor]], window: int, source: str) -> None:
    """Older files store ``relative_position_index``; timm rebuilds it, so it must be the standard one."""
    if not indices:
        return
    from timm.models.swin_transformer import get_relative_position_index

    expected = get_relative_position_index(window, window)
    for key, index in indices:
        if tuple(index.shape) != tuple(expected.shape) or not torch.equal(index.long(), expected):
            raise CheckpointError(
                f"{source}: backbone: {key} is not the standard Swin relative position index for window {window}"
            )
