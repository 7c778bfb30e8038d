"""MMSegmentation (0.x / 1.x) checkpoints -> masklab checkpoints for the zoo families.

Covers what ``configs/{fcn,pspnet,deeplabv3,deeplabv3plus,upernet,fpn,segformer}`` build: an
``EncoderDecoder`` on a timm ResNet (MMSeg's ``ResNetV1c`` deep stem = timm ``resnet*c``; ``ResNetV1b``
= timm ``resnet*``) or on the MiT encoder, an FPN neck, and the FCN / PSP / ASPP / separable ASPP /
UPerNet / FPN / SegFormer heads. The names on the left are MMSeg's (``mmseg/models/backbones/
{resnet,mit}.py``, ``mmseg/models/necks/fpn.py``, ``mmseg/models/decode_heads/*_head.py``, mmcv's
``ConvModule`` / ``DepthwiseSeparableConvModule``):

- ``backbone.stem.{0,1,3,4,6}`` -> ``backbone.model.conv1.{0,1,3,4,6}``, ``backbone.stem.7`` ->
  ``backbone.model.bn1``; ``backbone.{conv1,bn1,layerN}.*`` -> ``backbone.model.*`` (same block names).
- MiT ``backbone.layers.I.0.{projection,norm}`` -> ``backbone.stages.I.patch_embed.{proj,norm}``;
  ``layers.I.1.J.attn.attn.in_proj_*`` (``nn.MultiheadAttention``, rows q|k|v) -> ``attn.q`` (q rows) and
  ``attn.kv`` (k|v rows); ``attn.attn.out_proj`` -> ``attn.proj``; ``attn.norm`` -> ``attn.sr_norm``;
  ``ffn.layers.{0,1,4}`` (1x1 convs around the 3x3 depthwise one) -> ``ffn.{fc1,dwconv,fc2}`` (1x1
  kernels become linear weights); ``layers.I.2`` -> ``stages.I.norm``.
- ``ConvModule.{conv,bn}`` -> ``.{0,1}``; ``DepthwiseSeparableConvModule.{depthwise_conv,pointwise_conv}``
  -> ``.{0,1}``; ``auxiliary_head`` (one head) / ``auxiliary_head.K`` (a list) -> ``auxiliary_heads.K``.
- Heads: PSP ``psp_modules.I.1`` -> ``psp.branches.I``; UPerNet the same and ``bottleneck`` ->
  ``psp_bottleneck``; ASPP ``image_pool`` / ``aspp_modules`` / ``bottleneck`` -> ``aspp.image_pool`` /
  ``aspp.branches`` / ``aspp.bottleneck``; SegFormer ``convs`` / ``fusion_conv`` -> ``projections`` /
  ``fusion``; FCN, FPN head and FPN neck keep their names.

Every checkpoint weight must land on a model weight and every model weight must be given: anything
else is one :class:`CheckpointError` line naming a few keys of each kind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from masklab.errors import CheckpointError, ConfigError

# MMSeg head rules: (pattern on the key inside the head, template), after the ConvModule renames.
_PSP = [(r"psp_modules\.(\d+)\.1\.", r"psp.branches.\1.")]
_HEAD_RULES: dict[str, list[tuple[str, str]]] = {
    "FCNHead": [],
    "FPNHead": [],
    "PSPHead": _PSP,
    "UPerHead": [*_PSP, (r"bottleneck\.", "psp_bottleneck.")],
    "ASPPHead": [
        (r"image_pool\.", "aspp.image_pool."),
        (r"aspp_modules\.", "aspp.branches."),
        (r"bottleneck\.", "aspp.bottleneck."),
    ],
    "SegformerHead": [(r"convs\.", "projections."), (r"fusion_conv\.", "fusion.")],
}
_HEAD_RULES["DepthwiseSeparableASPPHead"] = _HEAD_RULES["ASPPHead"]
# mmcv module attributes -> masklab's nn.Sequential positions (conv, norm).
_CONV_MODULE = {"conv": "0", "bn": "1", "depthwise_conv": "0", "pointwise_conv": "1"}

_RESNET_RULES = [
    (r"backbone\.stem\.([01346])\.", r"backbone.model.conv1.\1."),
    (r"backbone\.stem\.7\.", "backbone.model.bn1."),
    (r"backbone\.(conv1|bn1|layer\d+)\.", r"backbone.model.\1."),
]
_MIT_BLOCK = r"backbone\.layers\.(\d+)\.1\.(\d+)\."
_MIT_RULES = [
    (r"backbone\.layers\.(\d+)\.0\.projection\.", r"backbone.stages.\1.patch_embed.proj."),
    (r"backbone\.layers\.(\d+)\.0\.norm\.", r"backbone.stages.\1.patch_embed.norm."),
    (_MIT_BLOCK + r"(norm1|norm2)\.", r"backbone.stages.\1.blocks.\2.\3."),
    (_MIT_BLOCK + r"attn\.attn\.out_proj\.", r"backbone.stages.\1.blocks.\2.attn.proj."),
    (_MIT_BLOCK + r"attn\.sr\.", r"backbone.stages.\1.blocks.\2.attn.sr."),
    (_MIT_BLOCK + r"attn\.norm\.", r"backbone.stages.\1.blocks.\2.attn.sr_norm."),
    (_MIT_BLOCK + r"ffn\.layers\.0\.", r"backbone.stages.\1.blocks.\2.ffn.fc1."),
    (_MIT_BLOCK + r"ffn\.layers\.1\.", r"backbone.stages.\1.blocks.\2.ffn.dwconv."),
    (_MIT_BLOCK + r"ffn\.layers\.4\.", r"backbone.stages.\1.blocks.\2.ffn.fc2."),
    (r"backbone\.layers\.(\d+)\.2\.", r"backbone.stages.\1.norm."),
]
_MIT_IN_PROJ = re.compile(_MIT_BLOCK + r"attn\.attn\.in_proj_(weight|bias)")
_BACKBONE_RULES = {"TimmBackbone": _RESNET_RULES, "MixVisionTransformer": _MIT_RULES}


def _prefix_rules(rules: Iterable[tuple[str, str]], key: str) -> str | None:
    """The first rule whose pattern matches the start of ``key``, applied once."""
    for pattern, template in rules:
        if m := re.match(pattern, key):
            return m.expand(template) + key[m.end() :]
    return None


def _conv_modules(rest: str) -> str:
    """mmcv ConvModule attribute names -> Sequential indices (every segment but the last)."""
    parts = rest.split(".")
    return ".".join([_CONV_MODULE.get(p, p) for p in parts[:-1]] + parts[-1:])


@dataclass(frozen=True)
class ModelLayout:
    """Which masklab modules the config builds: what decides the renames.

    Attributes:
        backbone: the backbone node's type (``TimmBackbone`` or ``MixVisionTransformer``).
        decode_head: the decode head's type.
        auxiliary_heads: the auxiliary heads' types, in order.
    """

    backbone: str
    decode_head: str
    auxiliary_heads: tuple[str, ...] = ()


def mmseg_key_to_masklab(key: str, layout: ModelLayout) -> str | None:
    """The masklab name of one MMSeg weight (MiT's ``in_proj`` aside), or None when no rule knows it."""
    if key.startswith("backbone."):
        return _prefix_rules(_BACKBONE_RULES.get(layout.backbone, []), key)
    if key.startswith("neck."):
        return _conv_modules(key)
    if key.startswith("decode_head."):
        head, rest, target = layout.decode_head, key[len("decode_head.") :], "decode_head."
    elif m := re.match(r"auxiliary_head\.(?:(\d+)\.)?", key):
        index = int(m[1] or 0)
        if index >= len(layout.auxiliary_heads):
            return None
        head, rest, target = layout.auxiliary_heads[index], key[m.end() :], f"auxiliary_heads.{index}."
    else:
        return None
    rest = _conv_modules(rest)
    return target + (_prefix_rules(_HEAD_RULES.get(head, []), rest) or rest)


def convert_mmseg_state_dict(
    state: Mapping[str, torch.Tensor], layout: ModelLayout
) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    """Rename an MMSeg state dict for masklab; returns (converted weights, MMSeg keys no rule knows,
    masklab key -> the MMSeg key it came from, for messages)."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    origins: dict[str, str] = {}
    for key, value in state.items():
        if layout.backbone == "MixVisionTransformer" and (m := _MIT_IN_PROJ.fullmatch(key)):
            prefix = f"backbone.stages.{m[1]}.blocks.{m[2]}.attn"
            dims = value.shape[0] // 3
            for part, rows in (("q", value[:dims]), ("kv", value[dims:])):
                out[f"{prefix}.{part}.{m[3]}"] = rows.clone()
                origins[f"{prefix}.{part}.{m[3]}"] = key
            continue
        new = mmseg_key_to_masklab(key, layout)
        if new is None:
            unknown.append(key)
            continue
        if re.search(r"\.ffn\.fc[12]\.weight$", new) and value.ndim == 4:
            value = value.flatten(1)  # MMSeg's 1x1 convolutions are masklab's linear layers
        if new in origins:  # no real MMSeg layout does this; never let the later key win silently
            raise CheckpointError(f"MMSeg keys {origins[new]!r} and {key!r} both map to masklab's {new!r}")
        out[new] = value
        origins[new] = key
    _fill_batch_counters(out)
    return out, unknown, origins


def _fill_batch_counters(out: dict[str, torch.Tensor]) -> None:
    """Add ``num_batches_tracked`` where a file left it out (it is only a counter)."""
    for key in [k for k in out if k.endswith(".running_mean")]:
        out.setdefault(key[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))


def model_layout(model_node: Mapping[str, Any], source: str) -> ModelLayout:
    """The :class:`ModelLayout` of a config's ``model`` node.

    Raises:
        ConfigError: a model the MMSeg mapping does not cover.
    """
    supported = "EncoderDecoder with TimmBackbone (ResNet) or MixVisionTransformer and the zoo heads"
    if model_node.get("type") != "EncoderDecoder":
        raise ConfigError(
            f"{source}: model.type: {model_node.get('type')!r} has no MMSeg mapping ({supported})"
        )
    backbone = (model_node.get("backbone") or {}).get("type")
    if backbone not in _BACKBONE_RULES:
        raise ConfigError(f"{source}: model.backbone.type: {backbone!r} has no MMSeg mapping ({supported})")
    if backbone == "TimmBackbone":
        name = str(model_node["backbone"].get("model_name", ""))
        if not name.startswith("resnet"):
            raise ConfigError(
                f"{source}: model.backbone.model_name: {name!r} has no MMSeg mapping (timm resnet* / resnet*c)"
            )
    aux = model_node.get("auxiliary_head") or []
    aux_nodes = [aux] if isinstance(aux, Mapping) else list(aux)
    heads = [("model.decode_head", model_node.get("decode_head") or {})]
    heads += [(f"model.auxiliary_head[{i}]", n) for i, n in enumerate(aux_nodes)]
    for where, node in heads:
        if node.get("type") not in _HEAD_RULES:
            raise ConfigError(
                f"{source}: {where}.type: {node.get('type')!r} has no MMSeg mapping "
                f"(one of {', '.join(sorted(_HEAD_RULES))})"
            )
    return ModelLayout(str(backbone), str(heads[0][1]["type"]), tuple(str(n["type"]) for n in aux_nodes))


# ------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class MMSegCheckpoint:
    """An MMSeg checkpoint as read from disk.

    Attributes:
        state: the weights, MMSeg key names.
        classes: the class names it stores (0.x ``meta.CLASSES``, 1.x ``meta.dataset_meta.classes``), or None.
        palette: its ``PALETTE`` / ``palette`` (one RGB triple per class), or None.
    """

    state: dict[str, torch.Tensor]
    classes: tuple[str, ...] | None
    palette: tuple[tuple[int, int, int], ...] | None


def read_mmseg_checkpoint(src: str | Path) -> MMSegCheckpoint:
    """Load an MMSeg checkpoint with the stub unpickler (:mod:`masklab.engine.foreign_pickle`).

    Raises:
        CheckpointError: missing, not a torch file, or no state dict of tensors in it.
    """
    from masklab.engine.foreign_pickle import load_foreign_checkpoint

    payload = load_foreign_checkpoint(src)
    state = payload.get("state_dict", payload) if isinstance(payload, Mapping) else payload
    if (
        not isinstance(state, Mapping)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise CheckpointError(
            f"{src}: no MMSeg weights found (expected a dict with a 'state_dict' of tensors, or a bare "
            f"state dict; found {type(payload).__name__})"
        )
    state = {str(k): v for k, v in state.items()}
    if all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    meta = payload.get("meta") if isinstance(payload, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}
    classes = _names(meta.get("CLASSES", dataset_meta.get("classes")))
    palette = _colours(meta.get("PALETTE", dataset_meta.get("palette")))
    return MMSegCheckpoint(state, classes, palette)


def _names(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _colours(value: Any) -> tuple[tuple[int, int, int], ...] | None:
    """One RGB triple of ints 0-255 per entry, or None (a palette is decoration, never an error)."""
    try:
        colours = tuple(tuple(int(c) for c in colour) for colour in value)
    except (TypeError, ValueError):
        return None
    if not colours or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colours):
        return None
    return colours  # type: ignore[return-value]


# --------------------------------------------------------------------------------------- converting
@dataclass(frozen=True)
class MMSegConversion:
    """What :func:`convert_mmseg_checkpoint` wrote.

    Attributes:
        state: the masklab state dict saved as the checkpoint's ``model`` entry.
        classes: the class names saved as its ``dataset_meta`` (the file's, else the config's).
        notes: lines worth telling the user (class names that differ from the config's dataset).
    """

    state: dict[str, torch.Tensor]
    classes: tuple[str, ...]
    notes: tuple[str, ...]


def convert_mmseg_checkpoint(
    src: str | Path, dst: str | Path, config: str | Path | Any, overrides: Iterable[str] = ()
) -> MMSegConversion:
    """Convert an MMSeg checkpoint for the model of a masklab ``config`` and write ``dst`` atomically.

    The weights are checked against the model the config builds (every key, every shape, the class
    count against the config's dataset) before anything is written; ``dst`` holds ``model``, ``meta``
    and ``dataset_meta`` (class names and palette), so ``masklab evaluate CFG DST``, ``train.load_from``
    and the Inferencer load it strictly.

    Raises:
        CheckpointError: an unreadable file, weights of another model, or another class count.
        ConfigError: a config whose model has no MMSeg mapping.
    """
    from masklab.config.assemble import build_model, resolve
    from masklab.data.meta import DatasetMeta
    from masklab.engine.checkpoint import save_checkpoint

    src, dst = Path(src), Path(dst)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise CheckpointError(f"{dst}: the output would replace the MMSeg checkpoint; write it elsewhere")
    resolved = hasattr(config, "model") and hasattr(config, "source")
    if resolved and list(overrides):
        raise ValueError("convert_mmseg_checkpoint: overrides apply to a config path, not a resolved config")
    rc = config if resolved else resolve(config, overrides)
    if rc.model is None:
        raise ConfigError(f"{rc.source}: model: missing section (a {{type: ...}} node)")
    layout = model_layout(rc.model, rc.source)
    ckpt = read_mmseg_checkpoint(src)
    cfg_meta = config_dataset_meta(rc)
    _check_class_count(ckpt, cfg_meta, src, rc.source)
    state, unknown, origins = convert_mmseg_state_dict(ckpt.state, layout)
    model = build_model(rc, cfg_meta)
    _check_fit(model.state_dict(), state, unknown, origins, src, rc.source)
    model.load_state_dict(state, strict=True)  # the check above makes this one certain
    classes = ckpt.classes or cfg_meta.classes
    palette = ckpt.palette if ckpt.palette and len(ckpt.palette) == len(classes) else None
    if palette is None and classes == cfg_meta.classes:
        palette = cfg_meta.palette
    saved = DatasetMeta(classes, palette, ignore_index=cfg_meta.ignore_index)
    notes = []
    if classes != cfg_meta.classes:
        first = next(i for i, (a, b) in enumerate(zip(classes, cfg_meta.classes, strict=True)) if a != b)
        notes.append(
            f"note: {src} names its classes {list(classes[:3])}..., the config's dataset "
            f"{list(cfg_meta.classes[:3])}... (first difference: class {first}, {classes[first]!r} vs "
            f"{cfg_meta.classes[first]!r}); the checkpoint keeps its own names, and `masklab evaluate` refuses "
            "a dataset whose names differ: set dataset.val.classes to the checkpoint's names if they mean the same"
        )
    payload = {
        "model": state,
        "meta": {"converted_from": str(src), "format": "mmseg", "config": str(rc.source)},
        "dataset_meta": saved.to_json(),
    }
    save_checkpoint(dst, payload)
    return MMSegConversion(state, classes, tuple(notes))


def config_dataset_meta(rc: Any) -> Any:
    """The class names and palette of a config's dataset, without reading its files when the dataset
    type has built-in classes (``METAINFO``) or the config lists ``classes``.

    Raises:
        ConfigError: the config has no dataset section.
    """
    from masklab.config import registries
    from masklab.config.assemble import build_dataset, dataset_meta
    from masklab.config.build import node_factory
    from masklab.data.meta import DatasetMeta

    if rc.dataset is None or not any(s in rc.dataset for s in ("val", "train")):
        raise ConfigError(f"{rc.source}: dataset: missing section; the class count comes from the dataset")
    split = "val" if "val" in rc.dataset else "train"
    node = rc.dataset[split]
    factory = node_factory(node, path=f"dataset.{split}", source=rc.source, registry=registries.DATASETS)
    base = getattr(factory, "METAINFO", None)
    classes, palette = node.get("classes"), node.get("palette")
    ignore = int(node.get("ignore_index", 255))
    if classes is not None:
        if palette is None and base is not None and base.palette and all(c in base.classes for c in classes):
            palette = [base.palette[base.classes.index(c)] for c in classes]
        return DatasetMeta(tuple(classes), palette, ignore_index=ignore)
    if isinstance(base, DatasetMeta):
        return DatasetMeta(base.classes, palette or base.palette, ignore_index=ignore)
    return dataset_meta(build_dataset(rc, split))  # classes only the data knows (reads the folder)


def _check_class_count(ckpt: MMSegCheckpoint, meta: Any, src: Path, config: str) -> None:
    seg = ckpt.state.get("decode_head.conv_seg.weight")
    if seg is None:
        return  # not a decode head masklab knows: the key check names it
    outputs = int(seg.shape[0])
    if ckpt.classes is not None and len(ckpt.classes) != outputs:
        raise CheckpointError(
            f"{src}: its metadata lists {len(ckpt.classes)} classes but decode_head.conv_seg has {outputs} outputs"
        )
    if outputs != meta.num_classes:
        raise CheckpointError(
            f"{src}: a model for {outputs} classes (decode_head.conv_seg), but the dataset of {config} has "
            f"{meta.num_classes} ({', '.join(meta.classes[:3])}, ...); use a config of a {outputs}-class dataset "
            "or set dataset.val.classes / dataset.train.classes"
        )


def _check_fit(
    own: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    unknown: list[str],
    origins: Mapping[str, str],
    src: Path,
    config: str,
) -> None:
    """One line naming what does not fit: MMSeg weights without a place (by their MMSeg names), then
    model weights not given and wrong shapes (:func:`describe_mismatch`)."""
    from masklab.models.backbones.weight_file import describe_mismatch

    unmatched = unknown + [origins.get(k, k) for k in state if k not in own]
    parts = []
    if unmatched:
        more = f" (+{len(unmatched) - 3} more)" if len(unmatched) > 3 else ""
        parts.append(
            f"{len(unmatched)} checkpoint weights have no place in the model: {', '.join(unmatched[:3])}{more}"
        )
    if mismatch := describe_mismatch(dict(own), {k: v for k, v in state.items() if k in own}):
        parts.append(mismatch)
    if parts:
        raise CheckpointError(
            f"{src}: weights do not fit the model of {config} (a checkpoint of another architecture or "
            f"size?): {'; '.join(parts)}"
        )
