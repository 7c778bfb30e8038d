"""Periodic checkpoints with a ``latest`` pointer and a bounded number kept."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from masklab.config.registries import HOOKS
from masklab.engine.checkpoint import CHECKPOINT_DIR, save_checkpoint, write_latest
from masklab.engine.distributed import is_main_process
from masklab.engine.hooks.base import Hook
from masklab.errors import ConfigError

if TYPE_CHECKING:
    from masklab.engine.trainer import Trainer

_NAME = re.compile(r"^iter_(\d+)\.pth$")


@HOOKS.register()
class CheckpointHook(Hook):
    """Saves ``work_dir/checkpoints/iter_<n>.pth`` every ``interval`` iterations and at the end.

    Priority 95: after the NaN guard (a bad step is never saved), EMA and evaluation (the
    checkpoint holds the updated average and best metric) and after the logger, so that
    ``log.jsonl`` holds iteration n before checkpoint n exists (a kill between the two would
    otherwise lose that line for good; a resumed run re-logs, never skips).

    Args:
        interval: iterations between saves.
        max_keep: newest periodic checkpoints to keep (None: all).
    """

    priority = 95

    def __init__(self, interval: int = 1000, max_keep: int | None = None) -> None:
        if interval < 1 or (max_keep is not None and max_keep < 1):
            raise ConfigError(
                f"CheckpointHook: expected interval >= 1 and max_keep >= 1 or null, got {interval}, {max_keep}"
            )
        self.interval = interval
        self.max_keep = max_keep
        self.last_saved: int | None = None

    def folder(self, trainer: Trainer) -> Path:
        """Where checkpoints go."""
        return trainer.work_dir / CHECKPOINT_DIR

    def save(self, trainer: Trainer) -> Path:
        """Save now (every rank builds the payload; only rank 0 writes)."""
        path = self.folder(trainer) / f"iter_{trainer.iter:07d}.pth"
        payload = trainer.checkpoint_payload()
        if is_main_process():
            save_checkpoint(path, payload)
            write_latest(path)
            self._prune(trainer)
        self.last_saved = trainer.iter
        return path

    def _prune(self, trainer: Trainer) -> None:
        """Keep the newest ``max_keep`` checkpoints up to the current iteration.

        Checkpoints numbered beyond it belong to an earlier, longer run in the same work dir (this
        one started from scratch): they are left alone, and never count as "newer" than the one
        just written (which would delete it and leave ``latest`` pointing at nothing).
        """
        if self.max_keep is None:
            return
        found = sorted(
            (n, p)
            for p in self.folder(trainer).iterdir()
            if (m := _NAME.match(p.name)) and (n := int(m.group(1))) <= trainer.iter
        )
        for _, old in found[: -self.max_keep]:
            old.unlink(missing_ok=True)

    def after_train_iter(self, trainer: Trainer) -> None:
        if trainer.iter % self.interval == 0 or trainer.iter == trainer.max_iters:
            self.save(trainer)

    def after_run(self, trainer: Trainer) -> None:
        # A run stopped early by a hook still leaves its final state on disk.
        if self.last_saved != trainer.iter and trainer.iter > 0:
            self.save(trainer)
