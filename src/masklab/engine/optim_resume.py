"""Resuming an optimizer: its state from the checkpoint, its hyper-parameters from this run.

``torch.optim.Optimizer.load_state_dict`` restores the saved param groups whole, so a resumed
run would train with the checkpoint's ``lr``, ``weight_decay``, ``betas``, ... whatever its config
says (MMEngine and detectron2 behave so). :class:`~masklab.engine.trainer.Trainer` instead keeps
this run's settings (:func:`group_settings` before the load, put back after it), names what
changed in one log line (:func:`settings_changes`), and refuses a checkpoint whose groups hold
other parameters (:func:`check_same_groups`), whose moments would land on the wrong tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from masklab.errors import CheckpointError

_SHOWN = 6  # changes named in the log line; the rest are counted


def group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each param group's hyper-parameters (everything but its tensors), to put back after a load."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def check_same_groups(saved: Any, settings: list[dict[str, Any]], where: str) -> None:
    """Raise unless the checkpoint's groups hold the same parameters as this run's.

    A changed ``paramwise`` key moves parameters between groups; where the group sizes still
    agree, torch would load the moments onto other parameters without a word.

    Raises:
        CheckpointError: a group's parameter names (``param_keys``) differ.
    """
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or len(groups) != len(settings):
        return  # a count mismatch is the optimizer load's error
    for i, (old, new) in enumerate(zip(groups, settings)):
        if old.get("param_keys") is None or new.get("param_keys") is None:
            continue
        # Names from a DDP-wrapped model carry "module.": a checkpoint of another layout fits.
        a, b = ([k.removeprefix("module.") for k in g["param_keys"]] for g in (old, new))
        if a != b:
            moved = next((k for k in [*a, *b] if (k in a) != (k in b)), a[0] if a else "")
            raise CheckpointError(
                f"{where}: parameter group {i} holds other parameters than in the checkpoint (e.g. "
                f"{moved}): train.optim.paramwise regroups the parameters; resume with the "
                "checkpoint's paramwise keys (their lr_mult / decay_mult values may change)"
            )


def settings_changes(
    payload: dict[str, Any], config: dict[str, Any] | None, settings: list[dict[str, Any]]
) -> str:
    """One log line naming the optimizer settings this run changes against the checkpoint's, or "".

    Named as ``train.optim`` keys when both configs are known (``masklab train``), else per param
    group. A base LR that moves with the effective batch alone is not named here: the trainer's
    batch warning says so (``train.optim`` is unchanged then).
    """
    old_cfg = ((payload.get("config") or {}).get("train") or {}).get("optim")
    new_cfg = ((config or {}).get("train") or {}).get("optim")
    if isinstance(old_cfg, dict) and isinstance(new_cfg, dict):
        diffs = [f"train.optim.{k} {_short(a)} -> {_short(b)}" for k, a, b in _flat_diff(old_cfg, new_cfg)]
    else:
        diffs = []
        saved = (payload.get("optimizer") or {}).get("param_groups") or []
        for i, (old, new) in enumerate(zip(saved, settings)):
            for key in ("initial_lr", "weight_decay", "momentum", "betas", "eps"):
                if key in old and key in new and _short(old[key]) != _short(new[key]):
                    name = key.removeprefix("initial_")
                    diffs.append(f"group {i} {name} {_short(old[key])} -> {_short(new[key])}")
    if not diffs:
        return ""
    more = f" (+{len(diffs) - _SHOWN} more)" if len(diffs) > _SHOWN else ""
    return (
        "resume: this run's optimizer settings replace the checkpoint's: "
        f"{', '.join(diffs[:_SHOWN])}{more} (optimizer state and schedule position from the checkpoint)"
    )


def _flat_diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every leaf that differs between two nested mappings."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in [*old, *(k for k in new if k not in old)]:
            out += _flat_diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if _short(old) == _short(new) else [(prefix, old, new)]


def _short(value: Any) -> str:
    """A value as the log line shows it (lists and tuples alike, floats with ``g``)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return "unset" if value is None else str(value)
