"""Checkpoint files: atomic save, ``latest`` pointer, safe load, fine-tuning weights, safetensors.

A checkpoint is one ``.pth`` file holding a dict with the keys of docs/contracts.md (``model``,
``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``iteration``, ``rng``, ``config``, ``meta``).
Files are written to a temporary file in the same folder, fsynced, then renamed over the target,
so a crash mid-write never leaves a torn checkpoint and the previous one stays valid.
Loading always uses ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from masklab.atomic_files import atomic_path, atomic_write
from masklab.engine.distributed import unwrap
from masklab.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
LATEST_NAME = "latest"
PAYLOAD_KEYS = ("model", "optimizer", "scheduler", "scaler", "ema", "iteration", "rng", "config", "meta")


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically; returns the path.

    Raises:
        CheckpointError: the file could not be written (the previous file at ``path`` is intact).
    """
    path = Path(path)
    try:
        atomic_write(path, lambda f: torch.save(dict(payload), f))
    except OSError as exc:
        raise CheckpointError(f"{path}: could not write checkpoint ({exc})") from exc
    except Exception as exc:  # torch.save raises RuntimeError/PicklingError on bad payloads
        raise CheckpointError(f"{path}: could not write checkpoint ({type(exc).__name__}: {exc})") from exc
    return path


def write_latest(checkpoint_path: str | Path) -> Path:
    """Point ``<folder>/latest`` at ``checkpoint_path`` (a text file holding its name, replaced atomically)."""
    checkpoint_path = Path(checkpoint_path)
    pointer = checkpoint_path.parent / LATEST_NAME
    atomic_write(pointer, lambda f: f.write(checkpoint_path.name.encode() + b"\n"))
    return pointer


def find_latest(work_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run: the file ``work_dir/checkpoints/latest`` names, or None.

    Raises:
        CheckpointError: the pointer names a file that does not exist.
    """
    folder = Path(work_dir) / CHECKPOINT_DIR
    pointer = folder / LATEST_NAME
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    target = folder / name
    if not name or not target.is_file():
        raise CheckpointError(f"{pointer}: points at {name!r}, which does not exist in {folder}")
    return target


def follow_latest(path: Path) -> Path:
    """``path`` itself, or for a run's ``checkpoints/latest`` pointer (a one-line text file) the
    checkpoint it names, so ``masklab evaluate CFG work_dir/checkpoints/latest`` works."""
    if path.name != LATEST_NAME or path.suffix or not path.is_file() or path.stat().st_size > 4096:
        return path
    target = find_latest(path.parent.parent) if path.parent.name == CHECKPOINT_DIR else None
    if target is None:
        name = path.read_text().strip()
        target = path.parent / name
        if not name or not target.is_file():
            raise CheckpointError(f"{path}: points at {name!r}, which does not exist in {path.parent}")
    return target


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, torn, holds arbitrary objects, or is not a dict.
    """
    path = follow_latest(Path(path))
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a paragraph; keep only the part naming the refused global.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found is None:  # not a pickle of ours at all (a text or JSON file named .pth)
            raise CheckpointError(f"{path}: not a readable checkpoint (not a torch file)") from exc
        raise CheckpointError(
            f"{path}: refused to load, it holds objects beyond tensors and plain data "
            f"(unsupported global {found.group(1)})"
        ) from exc
    except (EOFError, zipfile.BadZipFile, RuntimeError, ValueError, KeyError, IndexError) as exc:
        # KeyError/IndexError: the safe unpickler reading bytes that are not a pickle (a text file).
        raise CheckpointError(
            f"{path}: not a readable checkpoint (torn or not a torch file: {type(exc).__name__})"
        ) from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a checkpoint, expected a dict but found {type(payload).__name__}")
    return payload


def stored_task(checkpoint: str | Path) -> str | None:
    """The ``task`` of the config a training checkpoint stores (payload key ``config``), or None.

    Memory-mapped, so the weights are not read. A run's ``checkpoints/latest`` pointer is followed.
    None for a safetensors file, a plain state dict, or a file that cannot be read: the loader that
    follows reports those.
    """
    try:
        path = follow_latest(Path(checkpoint))
    except CheckpointError:  # a dangling pointer: the loader names it
        return None
    if path.suffix == ".safetensors" or not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - only a hint; the real load raises its own one-line error
        return None
    config = payload.get("config") if isinstance(payload, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    return task if isinstance(task, str) else None


def check_checkpoint_task(checkpoint: str | Path, task: str, config: str) -> None:
    """One line naming both tasks when ``checkpoint`` was trained with a config of another task."""
    stored = stored_task(checkpoint)
    if stored is None or stored == task:
        return
    if stored == "mal":
        hint = (
            f"a MAL checkpoint labels boxes: masklab infer MAL_CFG {checkpoint} --boxes BOXES.json "
            "--images DIR --out LABELS.json"
        )
    else:
        hint = (
            f"use a checkpoint trained with a 'task: {task}' config, or infer with a 'task: {stored}' config"
        )
    raise CheckpointError(
        f"{checkpoint}: a 'task: {stored}' checkpoint (its stored config), but {config} is a "
        f"'task: {task}' config; {hint}"
    )


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_model_weights` did.

    Attributes:
        missing: model keys the checkpoint lacked (left at their initial values).
        unexpected: checkpoint keys the model does not have (ignored).
        ema: the weights were a training checkpoint's exponential moving average.
    """

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    ema: bool = False

    def message(self, source: str = "") -> str:
        """One line for the log."""
        what = "EMA weights" if self.ema else "weights"
        head = f"loaded {what} from {source}" if source else f"loaded {what}"

        def show(keys: tuple[str, ...]) -> str:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            return ", ".join(keys[:5]) + more

        parts = [head]
        parts.append(f"missing {len(self.missing)}: {show(self.missing)}" if self.missing else "missing 0")
        parts.append(
            f"unexpected {len(self.unexpected)}: {show(self.unexpected)}"
            if self.unexpected
            else "unexpected 0"
        )
        return "; ".join(parts)


def _read_state_dict(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str, bool]:
    """(state dict, name for messages, whether it is a checkpoint's EMA weights)."""
    from_ema = False
    if isinstance(source, Mapping):
        state = dict(source)
        name = "<state dict>"
    else:
        name = str(source)
        if str(source).endswith(".safetensors"):
            if not Path(source).is_file():
                raise CheckpointError(f"{source}: weights file not found")
            from safetensors.torch import load_file

            state = load_file(str(source))
        else:
            state = load_checkpoint(source)
    # A training checkpoint with an EMA of the weights deploys the average (what its validation
    # scored, as MMEngine's EMAHook does); resume reads the raw "model" entry itself.
    ema = state.get("ema")
    if isinstance(ema, Mapping) and isinstance(ema.get("state"), Mapping):
        state = dict(ema["state"])
        name = f"{name} (EMA weights)"
        from_ema = True
    elif "model" in state and isinstance(state["model"], Mapping):
        state = dict(state["model"])
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{name}: no model weights found (expected a 'model' entry or a flat state dict)"
        )
    # Checkpoints written from a DDP wrapper carry a 'module.' prefix; the bare model has none.
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, name, from_ema


def load_model_weights(
    model: nn.Module, source: str | Path | Mapping[str, Any], strict: bool = False
) -> LoadReport:
    """Load weights for fine-tuning (``load_from``) from a checkpoint, safetensors file or state dict.

    Args:
        model: the (possibly wrapped) model to fill.
        source: a checkpoint path, ``.safetensors`` path, or a state dict.
        strict: raise when any key is missing or unexpected.

    Raises:
        CheckpointError: shapes disagree (a checkpoint for another model), or ``strict`` and keys differ.
    """
    state, name, from_ema = _read_state_dict(source)
    target = unwrap(model)
    missing, unexpected = check_weights_fit(target, state, name, strict=strict)
    report = LoadReport(missing=missing, unexpected=unexpected, ema=from_ema)
    target.load_state_dict(state, strict=False)
    return report


def check_weights_fit(
    model: nn.Module, state: Mapping[str, Any], name: str, strict: bool = False
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Check a state dict against the (possibly wrapped) model before loading it.

    Returns:
        ``(missing, unexpected)`` keys.

    Raises:
        CheckpointError: ``{name}: weights do not fit this model (...)`` when shapes disagree, or
            when ``strict`` (resume) and keys are missing or unexpected.
    """
    own = unwrap(model).state_dict()

    def shape(value: Any) -> tuple[int, ...]:
        return tuple(getattr(value, "shape", ()))

    mismatched = [k for k, v in state.items() if k in own and shape(own[k]) != shape(v)]
    if mismatched:
        shown = ", ".join(f"{k} {shape(state[k])} vs model {shape(own[k])}" for k in mismatched[:3])
        raise CheckpointError(
            f"{name}: weights do not fit this model ({len(mismatched)} shape mismatches: {shown})"
        )
    missing = tuple(k for k in own if k not in state)
    unexpected = tuple(k for k in state if k not in own)
    if strict and (missing or unexpected):
        report = LoadReport(missing=missing, unexpected=unexpected)
        details = report.message().split("; ", 1)[1]
        raise CheckpointError(f"{name}: weights do not fit this model ({details})")
    return missing, unexpected


def export_safetensors(model: nn.Module, path: str | Path) -> Path:
    """Write the model's weights as a safetensors file (atomically); returns the path.

    Raises:
        CheckpointError: the file cannot be written (one line naming it and why).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_model

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            # save_model de-duplicates shared tensors, which save_file refuses.
            save_model(unwrap(model), str(tmp))
    except OSError as exc:
        raise CheckpointError(f"{path}: could not write the weights ({exc.strerror or exc})") from None
    except SafetensorError as exc:  # the Rust writer's I/O errors
        reason = str(exc).split("I/O error: ")[-1]
        raise CheckpointError(f"{path}: could not write the weights ({reason})") from None
    return path
