"""Model checks for any model following the contract (``forward(batch, mode)`` returning a loss
dict, ``data_preprocessor``): finite and sane initial losses, gradients reach every trainable
parameter, heads depend on the image, and every loss term falls when overfitting one batch.

Each ``*_findings`` function takes a model and a raw batch, so they test without a config.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from typing import Any

import torch
from torch import nn

from masklab.doctor.context import DoctorContext, Unavailable
from masklab.doctor.finding import Finding, error, ok, skipped, warn
from masklab.doctor.registry import register_check
from masklab.errors import MasklabError


def _losses(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    prepared = model.data_preprocessor(batch, training=True)
    return model(prepared, mode="loss")


def _total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum((v for k, v in losses.items() if k.startswith("loss")), torch.zeros(()))


def loss_findings(model: nn.Module, batch: Any, num_classes: int | None) -> list[Finding]:
    """Losses are finite; cross-entropy-like terms start near ln(C)."""
    model.train()
    with torch.no_grad():
        losses = {k: float(v.detach()) for k, v in _losses(model, batch).items() if k.startswith("loss")}
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        return [
            error(
                "model.finite_loss",
                f"non-finite initial losses {bad}",
                "check the inputs' normalisation, loss weights and log/div ops",
            )
        ]
    out = [ok("model.finite_loss", "initial losses " + ", ".join(f"{k}={v:.3g}" for k, v in losses.items()))]
    if num_classes:
        expect = math.log(num_classes + 1)
        high = {k: v for k, v in losses.items() if ("ce" in k or "cls" in k) and v > 4 * expect}
        negative = {k: v for k, v in losses.items() if v < 0}
        if high or negative:
            out.append(
                warn(
                    "model.initial_loss",
                    f"{high or negative} vs ln(C)~{expect:.2f} for {num_classes} classes",
                    "a classification loss far above ln(C) at init points at bad init, loss weights or labels",
                )
            )
        else:
            out.append(ok("model.initial_loss", f"classification terms within 4 x ln(C+1)={expect:.2f}"))
    return out


def _zero_grad_names(model: nn.Module, batch: Any) -> tuple[list[str], list[str]]:
    """(parameters with no gradient at all, parameters whose gradient is exactly zero)."""
    model.zero_grad(set_to_none=True)
    _total(_losses(model, batch)).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    zero = [n for n, p in params if p.grad is not None and not bool(p.grad.abs().sum() > 0)]
    return missing, zero


def gradient_findings(model: nn.Module, batch: Any) -> list[Finding]:
    """Every trainable parameter gets a non-zero gradient from the total loss.

    A parameter outside the loss graph (no gradient) is an error at once. A parameter whose
    gradient is exactly zero at initialisation may sit behind a zero-initialised gate (timm's
    ResNets zero the last BatchNorm of each block, so a block's convs get no signal until its gate
    moves): those are checked again after one SGD step on a copy of the model.
    """
    model.train()
    missing, zero = _zero_grad_names(model, batch)
    still_zero: list[str] = []
    if zero and not missing:
        trial = copy.deepcopy(model)
        optimizer = torch.optim.SGD([p for p in trial.parameters() if p.requires_grad], lr=1e-2)
        _total(_losses(trial, batch)).backward()
        optimizer.step()
        _, after = _zero_grad_names(trial, batch)
        still_zero = [n for n in zero if n in set(after)]
    bad = missing + (still_zero if not missing else zero)
    trainable = sum(p.requires_grad for p in model.parameters())
    if bad:
        shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        return [
            error(
                "model.gradients",
                f"{len(bad)} of {trainable} trainable parameters get no gradient: {shown}",
                "a head or branch is not part of the loss: wire it in, or freeze it (requires_grad=False)",
            )
        ]
    note = f" ({len(zero)} only after one step: zero-initialised gates)" if zero else ""
    return [ok("model.gradients", f"all {trainable} trainable parameters receive a gradient{note}")]


def _head_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules named ``*head*`` that no other such module contains (the outermost heads)."""
    heads = {n: m for n, m in model.named_modules() if n and "head" in n.split(".")[-1]}
    return {n: m for n, m in heads.items() if not any(n.startswith(o + ".") for o in heads if o != n)}


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out.detach().float()]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flatten(v)]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [t for f in dataclasses.fields(out) for t in _flatten(getattr(out, f.name))]
    return []


def input_dependence_findings(model: nn.Module, batch: Any) -> list[Finding]:
    """Each head's output changes when the image changes (an output from weights alone is a bug)."""
    heads = _head_modules(model) or {"model": model}
    captured: dict[str, list[list[torch.Tensor]]] = {n: [] for n in heads}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, n=n: captured[n].append(_flatten(o)))
        for n, m in heads.items()
    ]
    gen = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 256, batch.images.shape, generator=gen, dtype=torch.uint8)
    # Every view of the images changes (MAL's teacher reads ``teacher_images``, a copy of ``images``).
    views = {
        f.name: noise.to(v.dtype)
        for f in dataclasses.fields(batch)
        if isinstance(v := getattr(batch, f.name), torch.Tensor) and v.shape == batch.images.shape
    }
    other = dataclasses.replace(batch, **views)
    model.eval()
    try:
        with torch.no_grad():
            for b in (batch, other):
                if "model" in heads:
                    prepared = model.data_preprocessor(b, training=False)
                    captured["model"].append(_flatten(model(prepared, mode="predict")))
                else:
                    _losses(model, b)
    finally:
        for h in hooks:
            h.remove()
        model.train()
    constant = []
    for n, runs in captured.items():
        if len(runs) < 2 or not runs[0]:
            continue
        a, b = runs[0], runs[-1]
        if all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b)):
            constant.append(n)
    if constant:
        return [
            error(
                "model.input_dependence",
                f"outputs of {', '.join(constant)} are identical for two different images",
                "the head computes from weights only: check its forward uses the features",
            )
        ]
    seen = [n for n, runs in captured.items() if len(runs) >= 2]
    return [ok("model.input_dependence", f"outputs of {', '.join(seen)} change with the image")]


def overfit_findings(model: nn.Module, batch: Any, steps: int, lr: float = 1e-3) -> list[Finding]:
    """Adam on one batch for ``steps`` steps: every loss term should fall (below 99 % of its start).

    The losses are measured before every step and once more after the last, so ``steps`` steps
    give ``steps`` chances to fall (the value a step computes is the one before it updates).
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or steps < 1:
        return []
    opt = torch.optim.Adam(params, lr=lr)
    first: dict[str, float] = {}
    best: dict[str, float] = {}
    for step in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        if step == steps:  # after the last update: measure only
            with torch.no_grad():
                losses = _losses(model, batch)
        else:
            losses = _losses(model, batch)
        values = {k: float(v.detach()) for k, v in losses.items() if k.startswith("loss")}
        if not all(math.isfinite(v) for v in values.values()):
            return [
                error(
                    "model.overfit",
                    f"losses became non-finite while overfitting one batch: {values}",
                    "lower the LR, add gradient clipping, or check the loss for log(0)/division",
                )
            ]
        first = first or values
        best = {k: min(v, best.get(k, v)) for k, v in values.items()}
        if step < steps:
            _total(losses).backward()
            opt.step()
    stuck = {k: (first[k], best[k]) for k in first if first[k] > 1e-6 and best[k] > 0.99 * first[k]}
    if stuck:
        shown = ", ".join(f"{k} {a:.3g} -> {b:.3g}" for k, (a, b) in stuck.items())
        return [
            error(
                "model.overfit",
                f"after {steps} steps on one batch these terms did not fall: {shown}",
                "the term is not connected to trainable weights, or its targets are wrong",
            )
        ]
    shown = ", ".join(f"{k} {first[k]:.3g} -> {best[k]:.3g}" for k in first)
    return [ok("model.overfit", f"{steps} steps on one batch: {shown}")]


def _prepared(ctx: DoctorContext, name: str) -> tuple[nn.Module, Any] | Finding:
    try:
        return ctx.fresh_model(), ctx.batch()
    except Unavailable as exc:
        return not_run(ctx, name, str(exc))


def not_run(ctx: DoctorContext, name: str, why: str) -> Finding:
    """The row of a model check whose model or batch cannot be built (``why``, the build error).

    The problem is printed once: when config rows already report every error of the build (the
    builder joins them with "; "; a model constructor raises one error that names its key first),
    dataset.train does not build, or a train sample does not load because of a file a data row
    reports, the check is skipped naming that row; otherwise the first check to meet the problem
    reports it (a model check, or the transforms row for a sample that does not load) and the
    others are skipped naming that one.
    """
    from masklab.doctor.checks.config import model_blockers

    blockers = model_blockers(ctx)
    # The builder joins its errors with "; ", each ``[file: ]key: what``; a "; " inside one error
    # ("...: config says 5 but the model derives 7 (...); remove the key, ...") continues that error.
    parts: list[str] = []
    for part in why.split("; "):
        if parts and not re.match(r"[^\s:]+: ", part):
            parts[-1] += "; " + part
        else:
            parts.append(part)
    rows = [
        {row for key, row in blockers.items() if f"{key}: " in part or part.startswith(f"{key}:")}
        for part in parts
    ]
    named_first = {row for key, row in blockers.items() if why.startswith(f"{key} ")}
    if all(rows) or named_first:
        shown = " and ".join(sorted(named_first or set().union(*rows)))
        return skipped(name, f"skipped: the model cannot be built until {shown} is fixed")
    failure = ctx.dataset_failure("train", name, "fix the dataset key, file or path named here")
    if failure is not None:
        return failure
    reporter = ctx.reporter_of(why)
    if reporter is not None:
        return skipped(name, f"skipped: a train sample does not load (see {reporter})")
    first = ctx.first_report(why, name)
    if first != name:
        return skipped(name, f"skipped: the model or a train batch cannot be built (see {first})")
    return error(
        name, f"cannot build the model or a batch: {why}", "fix the config key or data file named here"
    )


def _run(ctx: DoctorContext, name: str, fn: Any, *args: Any) -> list[Finding]:
    got = _prepared(ctx, name)
    if isinstance(got, Finding):
        return [got]
    model, batch = got
    torch.manual_seed(ctx.rc.runtime.seed)
    try:
        return fn(model, batch, *args)
    except MasklabError as exc:
        return [error(name, str(exc), "fix the model or data named above")]


@register_check("model", "losses")
def check_losses(ctx: DoctorContext) -> list[Finding]:
    """Finite and sane initial losses."""
    try:
        n = ctx.meta().num_classes
    except (Unavailable, AttributeError):
        n = None
    return _run(ctx, "model.finite_loss", loss_findings, n)


@register_check("model", "gradients")
def check_gradients(ctx: DoctorContext) -> list[Finding]:
    """Gradients reach every trainable parameter."""
    return _run(ctx, "model.gradients", gradient_findings)


@register_check("model", "input_dependence")
def check_input_dependence(ctx: DoctorContext) -> list[Finding]:
    """Heads depend on the image."""
    return _run(ctx, "model.input_dependence", input_dependence_findings)


@register_check("model", "overfit")
def check_overfit(ctx: DoctorContext) -> list[Finding]:
    """Loss terms fall when overfitting one batch."""
    return _run(ctx, "model.overfit", overfit_findings, ctx.steps)
