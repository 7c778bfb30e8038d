"""Evaluation over a finite loader: predict every batch, feed the evaluator, compute metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any, Protocol

import torch
from rich.console import Console
from torch import nn

from masklab.engine.distributed import full_parameters, unwrap
from masklab.engine.norm_guard import single_value_norm_guard
from masklab.engine.precision import autocast, check_precision
from masklab.engine.progress import make_progress
from masklab.structures import Batch


class Evaluator(Protocol):
    """The evaluator contract (docs/contracts.md)."""

    def reset(self) -> None: ...
    def process(self, batch: Batch, predictions: list[Any]) -> None: ...
    def compute(self) -> dict[str, float]: ...


class ValLoop:
    """Runs ``model(batch, mode="predict")`` over ``loader`` and returns the evaluator's metrics.

    Args:
        model: the (possibly wrapped) model; DDP's bare module is used (no sync), and an FSDP
            model is evaluated with its parameters gathered (``full_parameters``).
        loader: a finite iterable of :class:`Batch` (each rank its own shard).
        evaluator: reset / process / compute (compute reduces across ranks).
        precision: autocast for evaluation (``fp16`` needs CUDA).
        device: the model's device (defaults to that of its first parameter).
    """

    def __init__(
        self,
        model: nn.Module,
        loader: Iterable[Batch],
        evaluator: Evaluator,
        precision: str = "fp32",
        device: str | torch.device | None = None,
    ) -> None:
        self.model = model
        self.loader = loader
        self.evaluator = evaluator
        self.precision = precision
        if device is None:
            first = next(unwrap(model).parameters(), None)
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)
        check_precision(precision, self.device)

    @torch.no_grad()
    def run(self, progress: bool = True, console: Console | None = None) -> dict[str, float]:
        """Evaluate once; the model is left in eval mode (the trainer switches it back)."""
        self.model.eval()
        self.evaluator.reset()
        how = getattr(unwrap(self.model), "test_description", None)
        if isinstance(how, str) and hasattr(self.evaluator, "test_description"):
            self.evaluator.test_description = how  # the report says how predictions were made
        total = len(self.loader) if hasattr(self.loader, "__len__") else None  # type: ignore[arg-type]
        bar = make_progress(progress, console or Console(highlight=False))
        with full_parameters(self.model) as model, bar if bar is not None else contextlib.nullcontext():
            task = bar.add_task("eval", total=total) if bar is not None else None
            for batch in self.loader:
                batch = model.data_preprocessor(batch, training=False)
                with (
                    autocast(self.precision, self.device),
                    single_value_norm_guard(batch.images, "evaluation"),
                ):
                    predictions = model(batch, mode="predict")
                self.evaluator.process(batch, predictions)
                if bar is not None and task is not None:
                    bar.advance(task)
        return {k: float(v) for k, v in self.evaluator.compute().items()}
