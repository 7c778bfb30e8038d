"""What the checks share: the resolved config and lazily built datasets, model and one batch.

Each object is built at most once; a build failure is remembered (as the user-facing message) so
that the checks depending on it report it once (:meth:`DoctorContext.first_report`) and the others
say they were skipped, instead of each printing a traceback or the same line again. Files a data
check reports as broken are remembered too (:meth:`DoctorContext.report_files`): a sample that
does not load because of one is that check's problem, not the pipeline's nor the model's.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from masklab.config.schema import ResolvedConfig
from masklab.doctor.finding import Finding, error, skipped
from masklab.errors import DataError, MasklabError


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
        max_files: label maps, or COCO images and the masks of their annotations, read per split
            at most (0 = all).
    """

    rc: ResolvedConfig
    work_dir: Path
    steps: int = 20
    samples: int = 8
    max_files: int = 0
    pictures: list[Path] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict)
    _reported: dict[str, str] = field(default_factory=dict)
    _reported_files: dict[str, str] = field(default_factory=dict)

    def first_report(self, problem: str, check: str) -> str:
        """The check that reports ``problem`` (a one-line message): the first one to ask.

        A check that gets its own name back reports the problem; any other says it was skipped
        and names the one returned, so a shared failure is printed once.
        """
        return self._reported.setdefault(problem, check)

    def report_files(self, paths: Iterable[str | Path], check: str) -> None:
        """Record that ``check`` reports these files as broken (as an error row).

        A later check that trips over one of them (a sample that does not load names its file)
        asks :meth:`reporter_of` and says it was skipped, naming ``check``, instead of repeating it.
        """
        for path in paths:
            self._reported_files.setdefault(str(path), check)

    def owner(self, problem: str, check: str) -> str:
        """The row that reports ``problem``: the data row whose file it names, else the first to ask."""
        return self.reporter_of(problem) or self.first_report(problem, check)

    def dataset_failure(self, split: str, check: str, advice: str) -> Finding | None:
        """``check``'s row when ``dataset.<split>`` cannot be built, None when it builds.

        The first check to meet a failure reports it (an error naming ``dataset.<split>`` and the
        builder's message); the others, and every check when a data row reports a file the message
        names, are skipped naming that row. Each split's failure is its own problem, even when
        the same mistake is written in both.
        """
        try:
            self.dataset(split)
        except Unavailable as exc:
            first = self.owner(f"dataset.{split}: {exc}", check)
            if first != check:
                return skipped(check, f"skipped: dataset.{split} cannot be built (see {first})")
            return error(check, f"dataset.{split} cannot be built: {exc}", advice)
        return None

    def reporter_of(self, message: str) -> str | None:
        """The check that reported a file ``message`` names (see :meth:`report_files`), or None."""
        for path, check in self._reported_files.items():
            if path in message and re.search(re.escape(path) + r"(?![\w.])", message):
                return check
        return None

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
            ds = self.dataset("train")
            loader = build_dataloader(ds, batch_size=size, shuffle=False, seed=0)
            try:
                return next(iter(loader))
            except MasklabError:
                raise
            except Exception as exc:  # noqa: BLE001  (a sample that does not load is a data problem)
                raise DataError(f"a train batch cannot be loaded: {_locate(ds, size, exc)}") from exc

        return self._get("batch", build)


def describe_item(ds: Any, split: str, index: int) -> str:
    """``dataset.<split>[i]`` with its image file (and annotation ids for COCO-backed datasets)."""
    here = f"dataset.{split}[{index}]"
    try:
        images, items = getattr(ds, "images", None), getattr(ds, "items", None)
        if images is not None and hasattr(images[index], "file_name"):
            image = images[index]
            path = Path(getattr(ds, "img_dir", "")) / image.file_name
            coco = getattr(ds, "coco", None)
            ids = [a.id for a in coco.annotations if a.image_id == image.id] if coco is not None else []
            return f"{here}: {path}" + (f", annotation ids {ids}" if ids else "")
        if isinstance(items, list) and isinstance(items[index], tuple):
            return f"{here}: {', '.join(str(p) for p in items[index])}"
    except Exception:  # noqa: BLE001  (describing is best effort; the index still says which)
        pass
    return here


def load_sample(ds: Any, split: str, index: int) -> Any:
    """``ds[index]``; an exception that is not a :class:`MasklabError` gets a note naming the item."""
    try:
        return ds[index]
    except MasklabError:
        raise
    except Exception as exc:
        exc.add_note(f"while loading {describe_item(ds, split, index)}")
        raise


def crash_text(exc: BaseException) -> str:
    """``Type: message`` plus what the exception says about where (notes, a file name)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
    where = [" ".join(str(n).split()) for n in getattr(exc, "__notes__", [])]
    filename = getattr(exc, "filename", None)
    if filename and str(filename) not in text:
        where.append(f"file {filename}")
    return text + (f" ({'; '.join(where)})" if where else "")


def _locate(ds: Any, size: int, exc: BaseException) -> str:
    """Which of the first ``size`` samples fails (the batch is loaded in order); else the bare error."""
    for i in range(min(size, len(ds))):
        try:
            load_sample(ds, "train", i)
        except Exception as located:  # noqa: BLE001
            return crash_text(located)
    return crash_text(exc)
