"""Config checks: LR vs effective batch, queries vs instances, maxDets vs top-k, class weights,
SyncBN without a process group, ``num_classes`` vs the dataset metadata."""

from __future__ import annotations

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
    from masklab.config.assemble import effective_batch

    name = "config.lr_batch"
    t = ctx.rc.train
    if t is None:
        return []
    eff, base, opt = effective_batch(ctx.rc), t.optim.base_batch_size, t.optim
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


@register_check("config", "max_dets")
def check_max_dets(ctx: DoctorContext) -> list[Finding]:
    """COCO maxDets and the model's inference top-k should be the same number."""
    found = list(find_keys(_model_data(ctx), "test_topk"))
    if not found:
        return []
    max_dets = ctx.rc.evaluate.max_dets
    out = []
    for path, k in found:
        if isinstance(k, int) and k < max_dets:
            out.append(
                warn(
                    "config.max_dets",
                    f"{path}={k} < evaluate.max_dets={max_dets}: AP@{max_dets} sees only {k} detections",
                    f"set {path}={max_dets} (one setting for both)",
                )
            )
        elif isinstance(k, int) and k > max_dets:
            out.append(
                warn(
                    "config.max_dets",
                    f"{path}={k} > evaluate.max_dets={max_dets}: {k - max_dets} detections are never scored",
                    f"set evaluate.max_dets={k} or {path}={max_dets}",
                )
            )
        else:
            out.append(ok("config.max_dets", f"{path}={k} = evaluate.max_dets"))
    return out


def _num_classes(ctx: DoctorContext) -> int | None:
    try:
        meta = ctx.meta()
    except Unavailable:
        return None
    return None if meta is None else meta.num_classes


@register_check("config", "class_weight")
def check_class_weight(ctx: DoctorContext) -> list[Finding]:
    """A loss's ``class_weight`` has one entry per class (or per class + no-object)."""
    n = _num_classes(ctx)
    out = []
    for path, w in find_keys(_model_data(ctx), "class_weight"):
        if not isinstance(w, list) or n is None:
            continue
        if len(w) in (n, n + 1):
            out.append(ok("config.class_weight", f"{path} has {len(w)} entries for {n} classes"))
        else:
            out.append(
                error(
                    "config.class_weight",
                    f"{path} has {len(w)} entries; the dataset has {n} classes",
                    f"give {n} weights ({n + 1} with a no-object slot)",
                )
            )
    return out


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
