"""What the checks share: the resolved config and lazily built datasets, model and one batch.

Each object is built at most once; a build failure is remembered (as the user-facing message) so
that every check depending on it reports the same one line instead of a traceback.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from masklab.config.schema import ResolvedConfig
from masklab.errors import MasklabError


class Unavailable(Exception):
    """A prerequisite (dataset, model, batch) could not be built; ``str`` says why in one line."""


@dataclass
class DoctorContext:
    """Inputs of every check.

    Attributes:
        rc: the resolved config.
        work_dir: where the report and pictures go.
        steps: optimiser steps of the overfit-one-batch check.
        samples: train-pipeline samples drawn for the transforms check (and the picture grid).
        max_files: label/annotation files scanned per split at most (0 = all).
    """

    rc: ResolvedConfig
    work_dir: Path
    steps: int = 20
    samples: int = 8
    max_files: int = 0
    pictures: list[Path] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict)

    def _get(self, key: str, build: Any) -> Any:
        if key not in self._cache:
            try:
                self._cache[key] = build()
            except MasklabError as exc:
                self._cache[key] = Unavailable(str(exc))
        value = self._cache[key]
        if isinstance(value, Unavailable):
            raise value
        return value

    @property
    def splits(self) -> list[str]:
        """Dataset splits the config defines."""
        ds = self.rc.dataset
        return [s for s in ("train", "val", "test") if ds is not None and s in ds]

    def dataset(self, split: str) -> Any:
        """The built ``dataset.<split>`` (raises :class:`Unavailable` when it cannot be built)."""
        from masklab.config.assemble import build_dataset

        return self._get(f"dataset.{split}", lambda: build_dataset(self.rc, split))

    def meta(self) -> Any:
        """The train (else first) split's :class:`~masklab.data.meta.DatasetMeta`."""
        split = "train" if "train" in self.splits else (self.splits or ["train"])[0]
        return getattr(self.dataset(split), "metainfo", None)

    def fresh_model(self) -> nn.Module:
        """A newly built model (a copy of the cached one: checks may train it)."""
        from masklab.config.assemble import apply_eval_settings, build_model

        def build() -> nn.Module:
            torch.manual_seed(self.rc.runtime.seed)
            model = build_model(self.rc, self.meta())
            apply_eval_settings(model, self.rc)
            return model

        return copy.deepcopy(self._get("model", build))

    def batch(self) -> Any:
        """One train batch (``min(batch_size, 2)`` samples through the train pipeline), not preprocessed."""
        from masklab.data.loader import build_dataloader

        def build() -> Any:
            size = min(self.rc.train.batch_size, 2) if self.rc.train is not None else 2
            loader = build_dataloader(self.dataset("train"), batch_size=size, shuffle=False, seed=0)
            return next(iter(loader))

        return self._get("batch", build)
