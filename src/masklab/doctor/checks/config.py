"""Config checks: LR vs effective batch, queries vs instances, no-object weights, maxDets vs top-k,
class weights, SyncBN without a process group, ``num_classes`` and ``attributes`` vs the dataset
metadata.

:func:`model_blockers` tells the model checks which of these errors also stop the model from
building, so they report "skipped" naming the row instead of repeating its message."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from masklab.doctor.context import DoctorContext, Unavailable
from masklab.doctor.finding import Finding, error, ok, warn
from masklab.doctor.registry import register_check


def find_keys(node: Any, key: str, path: str = "model") -> Iterator[tuple[str, Any]]:
    """Every ``(dotted path, value)`` of ``key`` anywhere inside plain config data."""
    if isinstance(node, dict):
        for k, v in node.items():
            here = f"{path}.{k}"
            if k == key:
                yield here, v
            yield from find_keys(v, key, here)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from find_keys(v, key, f"{path}.{i}")


def _model_data(ctx: DoctorContext) -> dict[str, Any]:
    return ctx.rc.model.to_dict() if ctx.rc.model is not None else {}


@register_check("config", "lr_batch")
def check_lr_vs_batch(ctx: DoctorContext) -> list[Finding]:
    """The LR is stated for a batch size, and the effective batch either matches or is scaled for."""
    from masklab.config.assemble import effective_batch, world_size

    name = "config.lr_batch"
    t = ctx.rc.train
    if t is None:
        return []
    eff, base, opt = effective_batch(ctx.rc), t.optim.base_batch_size, t.optim
    if ctx.rc.task == "mal":  # TAO's train.lr is per sample: the run multiplies it by the batch
        total = t.batch_size * world_size()
        return [ok(name, f"train.lr={opt.lr} per sample x batch {total}: optimizer lr {opt.lr * total:g}")]
    if base is None:
        return [
            warn(
                name,
                f"train.optim.lr={opt.lr} with effective batch {eff} but no train.optim.base_batch_size",
                f"set train.optim.base_batch_size: {eff} (the batch the LR was tuned for) so other batch sizes scale",
            )
        ]
    if eff == base:
        return [ok(name, f"effective batch {eff} = base_batch_size; lr {opt.lr}")]
    if opt.auto_scale_lr == "scale":
        return [
            ok(name, f"effective batch {eff} vs base {base}: lr scaled {opt.lr} -> {opt.lr * eff / base:g}")
        ]
    return [
        warn(
            name,
            f"effective batch {eff} (batch_size x processes x accumulate) vs base_batch_size {base} with "
            f"auto_scale_lr={opt.auto_scale_lr}: lr {opt.lr} is not adjusted",
            f"set train.optim.lr={opt.lr * eff / base:g} or train.optim.auto_scale_lr=scale",
        )
    ]


def max_instances(ds: Any) -> int | None:
    """Most instances in one image of a COCO-backed dataset (None when unknown)."""
    coco = getattr(ds, "coco", None)
    if coco is None:
        return None
    by_image = coco.annotations_by_image()
    return max((sum(not a.iscrowd for a in anns) for anns in by_image.values()), default=0)


@register_check("config", "num_queries")
def check_num_queries(ctx: DoctorContext) -> list[Finding]:
    """Queries must outnumber the instances of the busiest image, or some can never be matched."""
    found = list(find_keys(_model_data(ctx), "num_queries"))
    if not found:
        return []
    try:
        most = max_instances(ctx.dataset("train"))
    except Unavailable:
        return []
    if most is None:
        return []
    out = []
    for path, q in found:
        if isinstance(q, int) and q < most:
            out.append(
                error(
                    "config.num_queries",
                    f"{path}={q} but an image of dataset.train has {most} instances",
                    f"set {path} >= {most} (usually several times more)",
                )
            )
        elif isinstance(q, int) and q < 2 * most:
            out.append(
                warn(
                    "config.num_queries",
                    f"{path}={q} vs up to {most} instances per image",
                    "Mask2Former works best with queries well above the instance count",
                )
            )
        else:
            out.append(ok("config.num_queries", f"{path}={q} vs up to {most} instances per image"))
    return out


@register_check("config", "no_object_weight")
def check_no_object_weight(ctx: DoctorContext) -> list[Finding]:
    """An ``eos_coef`` of 0 (the class head's or an attribute head's) takes the "no object" slot out
    of its cross-entropy: unmatched queries never learn to say "no object", so every query scores as
    an object (class) or the "no object wins" attribute filter never fires (attribute)."""
    out = []
    for path, value in find_keys(_model_data(ctx), "eos_coef"):
        if isinstance(value, (int, float)) and value == 0:
            out.append(
                warn(
                    "config.no_object_weight",
                    f"{path}=0: the no-object slot gets no loss, so unmatched queries never learn it",
                    f"set {path} > 0 (the paper uses 0.1)",
                )
            )
        else:
            out.append(ok("config.no_object_weight", f"{path}={value}"))
    return out


def topk_conflicts(ctx: DoctorContext) -> list[tuple[str, Any]]:
    """``(path, value)`` of every ``test_topk`` in the model that differs from ``evaluate.max_dets``."""
    max_dets = ctx.rc.evaluate.max_dets
    return [(p, k) for p, k in find_keys(_model_data(ctx), "test_topk") if k != max_dets]


@register_check("config", "max_dets")
def check_max_dets(ctx: DoctorContext) -> list[Finding]:
    """COCO maxDets and the model's inference top-k are one setting, ``evaluate.max_dets``.

    The builder passes ``evaluate.max_dets`` as ``model.test_topk``, so a different
    ``model.test_topk`` stops the model from building; a ``test_topk`` deeper in the model is not
    derived, and a different value only skews AP.
    """
    found = list(find_keys(_model_data(ctx), "test_topk"))
    max_dets = ctx.rc.evaluate.max_dets
    conflicts = dict(topk_conflicts(ctx))
    out = []
    for path, k in found:
        if path not in conflicts:
            out.append(ok("config.max_dets", f"{path}={k} = evaluate.max_dets"))
        elif path == "model.test_topk":
            out.append(
                error(
                    "config.max_dets",
                    f"{path}={k!r} but evaluate.max_dets={max_dets}: the model does not build (top-k per "
                    "image and COCO maxDets are one setting)",
                    f"remove {path}: it is derived from evaluate.max_dets (set evaluate.max_dets={k!r} "
                    f"to keep {k!r} detections per image)",
                )
            )
        elif isinstance(k, int) and k < max_dets:
            out.append(
                warn(
                    "config.max_dets",
                    f"{path}={k} < evaluate.max_dets={max_dets}: AP@{max_dets} sees only {k} detections",
                    f"set {path}={max_dets} (one setting for both)",
                )
            )
        else:
            out.append(
                warn(
                    "config.max_dets",
                    f"{path}={k!r} > evaluate.max_dets={max_dets}: detections beyond {max_dets} are never scored",
                    f"set evaluate.max_dets={k!r} or {path}={max_dets}",
                )
            )
    return out


def _num_classes(ctx: DoctorContext) -> int | None:
    try:
        meta = ctx.meta()
    except Unavailable:
        return None
    return None if meta is None else meta.num_classes


_HEAD_LOSS_WEIGHT = re.compile(
    r"^model\.(?P<head>[\w.]*head(?:\.\d+)?)\.loss_decode(?:\.(?P<i>\d+))?\.class_weight$"
)


def class_weight_problems(ctx: DoctorContext) -> list[tuple[str, str, Finding]]:
    """``(key as training spells it, its dotted config path, finding)`` for every list ``class_weight``.

    A semantic head's loss (``<head>.loss_decode``) takes one weight per output channel, as the
    head checks when it is built: C, or 1 with ``binary: true`` (no no-object slot). Other losses
    (query-based models) take C, or C+1 with the no-object slot.
    """
    n = _num_classes(ctx)
    model = _model_data(ctx)
    out = []
    for path, w in find_keys(model, "class_weight"):
        if not isinstance(w, list) or n is None:
            continue
        semantic = _HEAD_LOSS_WEIGHT.match(path)
        if semantic is None:
            spelled = path
            if len(w) in (n, n + 1):
                finding = ok("config.class_weight", f"{path} has {len(w)} entries for {n} classes")
            else:
                finding = error(
                    "config.class_weight",
                    f"{path} has {len(w)} entries; the dataset has {n} classes",
                    f"give {n} weights ({n + 1} with a no-object slot)",
                )
            out.append((spelled, path, finding))
            continue
        head_path = semantic.group("head")
        head = _lookup(model, head_path.split("."))
        binary = isinstance(head, dict) and head.get("binary") is True
        channels = 1 if binary else n
        spelled = f"model.{head_path}.loss_decode[{semantic.group('i') or 0}].class_weight"
        if len(w) == channels:
            finding = ok(
                "config.class_weight", f"{spelled} has {len(w)} entries for {channels} output channels"
            )
        else:
            what = "binary: true predicts 1 channel" if binary else f"{n} classes, no no-object slot"
            finding = error(
                "config.class_weight",
                f"{spelled} has {len(w)} entries but the head predicts {channels} channels ({what}); "
                "the model does not build",
                f"give {channels} weights, one per class in the order of the dataset's classes",
            )
        out.append((spelled, path, finding))
    return out


def _lookup(node: Any, keys: list[str]) -> Any:
    for key in keys:
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


@register_check("config", "class_weight")
def check_class_weight(ctx: DoctorContext) -> list[Finding]:
    """A loss's ``class_weight`` has one entry per output channel (as the head checks when built)."""
    return [finding for _, _, finding in class_weight_problems(ctx)]


@register_check("config", "sync_bn")
def check_sync_bn(ctx: DoctorContext) -> list[Finding]:
    """SyncBN needs a process group; in one process it cannot synchronise anything."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    uses = [p for p, v in find_keys(_model_data(ctx), "norm") if v == "syncbn"]
    if ctx.rc.runtime.sync_bn:
        uses.append("runtime.sync_bn")
    if not uses or world > 1:
        return []
    return [
        warn(
            "config.sync_bn",
            f"{', '.join(uses)} asks for SyncBN but this is a single process (no process group)",
            "use norm: bn (or gn for small per-GPU batches) when training on one device; keep syncbn for torchrun",
        )
    ]


@register_check("config", "num_classes")
def check_num_classes(ctx: DoctorContext) -> list[Finding]:
    """Every ``num_classes`` written in the model agrees with the dataset metadata."""
    n = _num_classes(ctx)
    found = list(find_keys(_model_data(ctx), "num_classes"))
    if n is None or not found:
        return []
    out = []
    for path, v in found:
        if v == n or v is None:
            out.append(ok("config.num_classes", f"{path}={v}; the dataset has {n} classes"))
        else:
            out.append(
                error(
                    "config.num_classes",
                    f"{path}={v} but the dataset metadata has {n} classes",
                    f"remove {path} (it is derived from the dataset) or fix the dataset's classes",
                )
            )
    return out


def _pairs_text(pairs: list[tuple[Any, Any]]) -> str:
    return "[" + ", ".join(f"{n}:{v}" for n, v in pairs) + "]"


def attribute_mismatch(ctx: DoctorContext) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any]]] | None:
    """``(config, data)`` attributes as ``(name, num_values)`` in order when ``model.attributes`` is
    written and disagrees with the dataset metadata (the builder refuses the model then); else None."""
    declared = _model_data(ctx).get("attributes")
    try:
        meta = ctx.meta()
    except Unavailable:
        return None
    if not isinstance(declared, list) or meta is None or not hasattr(meta, "attributes"):
        return None
    config = [(d.get("name"), d.get("num_values")) if isinstance(d, dict) else (d, None) for d in declared]
    data = [(a.name, len(a.values)) for a in meta.attributes]
    return None if config == data else (config, data)


def _attribute_differences(config: list[tuple[Any, Any]], data: list[tuple[Any, Any]]) -> str:
    if sorted(config, key=str) == sorted(data, key=str):
        return "the same attributes in another order (the heads would learn each other's values)"
    have, want = dict(config), dict(data)
    parts = [
        f"{n} has {have[n]} values in the config, {want[n]} in the data"
        for n in have
        if n in want and have[n] != want[n]
    ]
    parts += [f"{n} is not in the data" for n in have if n not in want]
    parts += [f"{n} is missing from the config" for n in want if n not in have]
    return ", ".join(parts) or "the order differs"


@register_check("config", "attributes")
def check_attributes(ctx: DoctorContext) -> list[Finding]:
    """A written ``model.attributes`` lists the dataset's attributes: names, order, value counts."""
    declared = _model_data(ctx).get("attributes")
    if declared is None:
        return []
    found = attribute_mismatch(ctx)
    if found is None:
        try:
            data = [(a.name, len(a.values)) for a in ctx.meta().attributes]
        except (Unavailable, AttributeError):
            return []
        return [ok("config.attributes", f"model.attributes {_pairs_text(data)} match the dataset metadata")]
    config, data = found
    return [
        error(
            "config.attributes",
            f"model.attributes {_pairs_text(config)} vs the dataset metadata {_pairs_text(data)} "
            f"(name:num_values, in order): {_attribute_differences(config, data)}; the model does not build",
            f"remove model.attributes (derived from the dataset metadata) or declare {_pairs_text(data)} in that order",
        )
    ]


def model_blockers(ctx: DoctorContext) -> dict[str, str]:
    """Config keys that a config row reports as an error and that stop the model from building:
    dotted key -> the row (the model checks then say they were skipped instead of repeating it)."""
    keys = {"model.attributes": "config.attributes"} if attribute_mismatch(ctx) else {}
    keys.update({p: "config.max_dets" for p, _ in topk_conflicts(ctx) if p == "model.test_topk"})
    for spelled, _, finding in class_weight_problems(ctx):
        if finding.status == "error" and spelled.endswith("].class_weight"):
            # The model raises ``model.decode_head.loss_decode[i].class_weight has ...`` (the head's
            # own ``decode_head.`` spelling, put under its config key).
            keys[spelled] = "config.class_weight"
            keys[spelled.split(".", 1)[1]] = "config.class_weight"
            keys["decode_head" + spelled[spelled.index(".loss_decode[") :]] = "config.class_weight"
            aux = re.match(r"model\.auxiliary_head(?:\.(\d+))?(\.loss_decode\[.*)", spelled)
            if aux:  # the model names an auxiliary head's keys model.auxiliary_head[k].<key>
                keys[f"model.auxiliary_head[{aux.group(1) or 0}]{aux.group(2)}"] = "config.class_weight"
    n = _num_classes(ctx)
    if n is not None:
        keys.update(
            {
                p: "config.num_classes"
                for p, v in find_keys(_model_data(ctx), "num_classes")
                if v not in (n, None)
            }
        )
    return keys
