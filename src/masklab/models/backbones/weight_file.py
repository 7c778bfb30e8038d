"""Reading local weight files for backbones (never from the network) and explaining misfits."""

from __future__ import annotations

from pathlib import Path

import torch

from masklab.errors import CheckpointError

# Wrapper keys under which training scripts commonly nest the weights.
_NESTED_KEYS = ("state_dict", "model", "module")


def read_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file or a torch state dict (``weights_only=True``) as a flat tensor dict.

    A checkpoint nesting its weights under ``state_dict`` / ``model`` is unwrapped, and DDP's
    ``module.`` prefix is removed.

    Raises:
        CheckpointError: the file is missing, unreadable or holds no tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: weight file not found (pretrained must be a local file path)")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{p}: cannot read weights ({reason})") from None
    for key in _NESTED_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def describe_mismatch(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], ignore_prefixes: tuple[str, ...] = ()
) -> str:
    """One line naming missing, unexpected and wrongly shaped keys (first three of each), or "" if they fit."""

    def first(keys: list[str]) -> str:
        more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
        return ", ".join(keys[:3]) + more

    given = {k: v for k, v in given.items() if not k.startswith(ignore_prefixes)}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and tuple(given[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {first(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: {first(shapes)}")
    return "; ".join(parts)
