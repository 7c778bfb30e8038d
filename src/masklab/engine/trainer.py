"""The iteration-based training loop shared by every family.

Typical use (no config needed)::

    trainer = Trainer(model, optimizer, loader_factory, max_iters=1000, work_dir="runs/x",
                      scheduler=sched, hooks=[TimerHook(), LoggerHook(), CheckpointHook(500)])
    trainer.resume()          # optional: continue from work_dir/checkpoints/latest
    trainer.train()

Resume and the data position: pass ``train_loader`` as a factory ``start -> iterable of Batch``.
The trainer calls it once, at the start of :meth:`train`, with the number of batches already
consumed (``iteration * accumulate_steps``, 0 for a fresh run); the factory must build an
``InfiniteSampler(..., start_iter=start)`` loader whose order depends only on seed and position,
and whose samples do too: ``build_dataloader(infinite=True)`` seeds each sample's random
transforms from ``(seed, global position of the sample)``, never from a worker's running RNG, so
the batch at a position is the same with any ``num_workers`` and whether the loader was created at
iteration 0 or at a resume point. That is what makes a resumed run equal the uninterrupted one
(the main process's RNGs, which dropout and the like draw from, travel in the checkpoint's
``rng``). A plain iterable is accepted too, but then a resumed run restarts the data stream from
its beginning.

The work dir is created when :meth:`train` starts, so a failed :meth:`resume` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from masklab.engine.checkpoint import check_weights_fit, find_latest, load_checkpoint
from masklab.engine.distributed import (
    broadcast_buffers,
    get_info,
    is_initialized,
    is_main_process,
    load_model_state_dict,
    load_optimizer_state_dict,
    model_state_dict,
    optimizer_state_dict,
    unwrap,
)
from masklab.engine.hooks.base import Hook
from masklab.engine.norm_guard import single_value_norm_guard
from masklab.engine.optim_resume import check_same_groups, group_settings, settings_changes
from masklab.engine.precision import autocast, check_precision, make_scaler
from masklab.engine.progress import make_progress
from masklab.engine.rng import capture_rng, restore_rng, seed_everything
from masklab.engine.schedules import IterScheduler
from masklab.engine.state import TrainState
from masklab.engine.val_loop import ValLoop
from masklab.errors import CheckpointError, ConfigError, TrainingError
from masklab.structures import Batch

LoaderFactory = Callable[[int], Iterable[Batch]]


def epochs_to_iters(
    epochs: float,
    dataset_size: int,
    batch_size: int,
    world_size: int = 1,
    accumulate_steps: int = 1,
    drop_last: bool = True,
) -> int:
    """Optimiser steps in ``epochs`` passes over ``dataset_size`` samples (at least 1)."""
    per_step = batch_size * world_size * accumulate_steps
    if per_step <= 0 or dataset_size <= 0:
        raise ConfigError(
            f"cannot convert epochs to iterations with dataset size {dataset_size} and batch {per_step}"
        )
    per_epoch = dataset_size // per_step if drop_last else math.ceil(dataset_size / per_step)
    return max(1, round(epochs * max(1, per_epoch)))


class Trainer:
    """Runs ``max_iters`` optimiser steps, calling hooks around each.

    Args:
        model: the model (possibly DDP/FSDP-wrapped) following the model contract.
        optimizer: built over the model's parameters.
        train_loader: an infinite iterable of :class:`Batch`, or a factory ``start -> iterable``
            (see the module docstring for resume).
        max_iters: optimiser steps in the whole run.
        scheduler: per-iteration LR scheduler (stepped after every iteration), or None.
        hooks: hooks, run in ascending ``priority``.
        work_dir: run folder (checkpoints, logs); created on rank 0 when :meth:`train` starts.
        precision: ``fp32``, ``bf16`` (CPU or CUDA) or ``fp16`` (CUDA, with a GradScaler).
        channels_last: feed the model NHWC images (pair it with a model moved to
            ``torch.channels_last``, as the config builder does for ``runtime.channels_last``).
        accumulate_steps: micro-batches per optimiser step; each loss is divided by it.
        clip_grad: max global gradient norm, or None for no clipping.
        device: where the model runs.
        val_loop: evaluation run by :meth:`validate` (the eval hook calls it).
        seed: seeds Python, NumPy and torch before the run when given.
        config: the resolved config, saved into every checkpoint (plain data only).
        progress: show a rich progress bar on rank 0.
        console: where console lines go (default: a rich console on stdout).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_loader: Iterable[Batch] | LoaderFactory,
        max_iters: int,
        *,
        scheduler: IterScheduler | None = None,
        hooks: Sequence[Hook] = (),
        work_dir: str | Path,
        precision: str = "fp32",
        channels_last: bool = False,
        accumulate_steps: int = 1,
        clip_grad: float | None = None,
        device: str | torch.device = "cpu",
        val_loop: ValLoop | None = None,
        seed: int | None = None,
        config: dict[str, Any] | None = None,
        progress: bool = True,
        console: Console | None = None,
    ) -> None:
        self.device = torch.device(device)
        check_precision(precision, self.device)
        if max_iters <= 0 or accumulate_steps <= 0:
            raise ConfigError(
                f"train: max_iters and accumulate_steps must be positive, got {max_iters}, {accumulate_steps}"
            )
        if clip_grad is not None and clip_grad <= 0:
            raise ConfigError(f"train.clip_grad: expected a positive max norm or null, got {clip_grad}")
        if seed is not None:
            seed_everything(seed)
        self.model = model
        self.optimizer = optimizer
        self.train_loader = train_loader
        self.max_iters = int(max_iters)
        self.scheduler = scheduler
        # sorted() is stable, so equal priorities keep the order they were given in.
        self.hooks: list[Hook] = sorted(hooks, key=lambda h: h.priority)
        self.work_dir = Path(work_dir)
        self.precision = precision
        self.channels_last = channels_last
        self.accumulate_steps = int(accumulate_steps)
        self.clip_grad = clip_grad
        self.val_loop = val_loop
        self.config = config
        self.scaler = make_scaler(precision, self.device)
        self.console = console or Console(highlight=False)
        self.show_progress = progress
        self.iter = 0
        self.resumed_from: Path | None = None  # the checkpoint :meth:`resume` restored, if any
        self.state: TrainState | None = None
        self.should_stop = False
        self.nonfinite_tolerated = False
        self.dist = get_info()

    # ------------------------------------------------------------------ helpers
    def find_hook(self, cls: type[Hook]) -> Hook | None:
        """The first hook of type ``cls``, or None."""
        return next((h for h in self.hooks if isinstance(h, cls)), None)

    def call_hooks(self, event: str, *args: Any) -> None:
        """Call ``event`` on every hook in priority order."""
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    def log(self, message: str) -> None:
        """Print one console line on rank 0 (through the progress bar when one is live)."""
        if is_main_process():
            self.console.print(
                message, markup=False, highlight=False, soft_wrap=True
            )  # one line, also in a log file

    def current_lr(self) -> float:
        """LR of the first param group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def _batches(self) -> Iterator[Batch]:
        loader = self.train_loader
        if callable(loader) and not hasattr(loader, "__iter__"):
            loader = loader(self.iter * self.accumulate_steps)
        return iter(loader)

    # ------------------------------------------------------------------ loop
    def train(self) -> None:
        """Run from ``self.iter`` to ``max_iters`` (or until a hook sets ``should_stop``)."""
        if is_main_process():
            self.work_dir.mkdir(parents=True, exist_ok=True)
        batches = self._batches()
        self.model.train()
        self.call_hooks("before_run")
        progress = make_progress(self.show_progress, self.console)
        with progress if progress is not None else contextlib.nullcontext():
            task = progress.add_task("train", total=self.max_iters, completed=self.iter) if progress else None
            while self.iter < self.max_iters and not self.should_stop:
                self.call_hooks("before_train_iter")
                self.state = self.run_step(batches)
                self.iter = self.state.iteration
                self.nonfinite_tolerated = False
                self.call_hooks("after_train_iter")
                if self.state.skipped and not self.nonfinite_tolerated:
                    # Loud by default: without a NonFiniteLossHook allowing skips, a NaN stops the run.
                    raise TrainingError(self.state.describe_nonfinite())
                if progress is not None and task is not None:
                    progress.update(task, completed=self.iter)
        self.call_hooks("after_run")

    def run_step(self, batches: Iterator[Batch]) -> TrainState:
        """One optimiser step over ``accumulate_steps`` micro-batches."""
        start = time.perf_counter()
        data_time, lr = 0.0, self.current_lr()
        sums: dict[str, float] = {}
        finite = True
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(self.accumulate_steps):
            t = time.perf_counter()
            batch = next(batches)
            data_time += time.perf_counter() - t
            batch = unwrap(self.model).data_preprocessor(batch, training=True)
            if self.channels_last:
                batch = replace(batch, images=batch.images.contiguous(memory_format=torch.channels_last))
            # DDP: only the last micro-step all-reduces gradients.
            last = micro == self.accumulate_steps - 1
            sync = (
                contextlib.nullcontext()
                if last or not hasattr(self.model, "no_sync")
                else self.model.no_sync()
            )
            with sync:
                with autocast(self.precision, self.device), single_value_norm_guard(batch.images, "train"):
                    losses = self.model(batch, mode="loss")
                total = sum(
                    (v for k, v in losses.items() if k.startswith("loss")),
                    torch.zeros((), device=self.device),
                )
                # One device-to-host copy for every logged value (a float() each would synchronise
                # a CUDA stream once per loss: 40+ per Mask2Former step).
                named = {"loss": total, **losses}
                values = torch.stack(
                    [v.detach().float().reshape(()).to(total.device) for v in named.values()]
                ).tolist()
                for k, v in zip(named, values):
                    sums[k] = sums.get(k, 0.0) + v / self.accumulate_steps
                finite = finite and self._all_finite(total, values[0])
                # Keep drawing the remaining micro-batches after a NaN so the data position stays exact.
                if finite:
                    scaled = total.float() / self.accumulate_steps
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        grad_norm = self._optimizer_step() if finite else None
        if grad_norm is not None and not math.isfinite(grad_norm) and self.scaler is None:
            finite = False
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        return TrainState(
            iteration=self.iter + 1,
            losses=sums,
            lr=lr,
            grad_norm=grad_norm,
            data_time=data_time,
            iter_time=time.perf_counter() - start,
            skipped=not finite,
        )

    def _all_finite(self, total: torch.Tensor, value: float) -> bool:
        """Whether the step's total loss is finite on every rank (``value``: its float on this one)."""
        if not is_initialized():
            return math.isfinite(value)
        # Every rank must agree, or one would skip backward while the others wait in all-reduce.
        ok = torch.isfinite(total.detach()).float()
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        return bool(ok.item())

    def _optimizer_step(self) -> float | None:
        """Unscale, clip, step. Returns the pre-clip global grad norm when clipping."""
        grad_norm = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
            # FSDP: the norm of sharded gradients is a DTensor; its full value is the global norm.
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            if not math.isfinite(grad_norm) and self.scaler is None:
                return grad_norm  # caller skips the step
        if self.scaler is not None:
            # The scaler skips the step itself on inf/NaN gradients and lowers its scale.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return grad_norm

    # ------------------------------------------------------------------ evaluation
    def validate(self) -> dict[str, float]:
        """Run the val loop between ``before_val``/``after_val`` hooks; returns its metrics."""
        if self.val_loop is None:
            raise ConfigError("evaluate: no validation loop is configured for this run")
        self.call_hooks("before_val")  # (the EMA hook swaps its average in here)
        broadcast_buffers(self.model)
        metrics = self.val_loop.run(progress=self.show_progress, console=self.console)
        self.call_hooks("after_val", metrics)
        self.model.train()
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything needed to resume (payload keys of docs/contracts.md)."""
        hooks_state: dict[str, Any] = {}
        payload: dict[str, Any] = {"ema": None}
        for hook in self.hooks:
            state = hook.state_dict()
            if state is None:
                continue
            if hook.payload_key:
                payload[hook.payload_key] = state
            else:
                hooks_state[type(hook).__name__] = state
        payload.update(
            # Full, bare-model layout whatever the strategy (FSDP gathers it; rank 0 holds it).
            model=model_state_dict(self.model),
            optimizer=optimizer_state_dict(self.model, self.optimizer),
            scheduler=self.scheduler.state_dict() if self.scheduler else None,
            scaler=self.scaler.state_dict() if self.scaler else None,
            iteration=self.iter,
            rng=capture_rng(),
            config=self.config,
            meta={
                "hooks": hooks_state,
                "torch": str(torch.__version__),
                "world_size": self.dist.world_size,
                "batch_size": self._per_rank_batch(self.config),
                "accumulate_steps": self.accumulate_steps,
                "time": time.time(),
            },
        )
        return payload

    def resume(self, path: str | Path | None = None) -> Path | None:
        """Restore a checkpoint (default: ``work_dir``'s latest). Returns the file used, or None.

        Call before :meth:`train`. Restores model, optimizer state (moments, momentum buffers),
        the schedule position, scaler, hook states (EMA, best metric), the iteration and every RNG;
        the data position follows from the iteration. The optimizer's hyper-parameters and the
        schedule's base LRs stay this run's (its config's ``lr``, multipliers, weight decay, ...,
        scaled for its effective batch): a changed one applies, named in one log line.
        """
        if path is None:
            path = find_latest(self.work_dir)
            if path is None:
                return None
        path = Path(path)
        # CPU first: RNG states must stay CPU tensors; load_state_dict moves weights and optimizer state.
        payload = load_checkpoint(path, map_location="cpu")
        if isinstance(payload.get("model"), dict):
            # A checkpoint of another model is one line naming the keys, not torch's paragraph.
            check_weights_fit(self.model, payload["model"], str(path), strict=True)
        missing = [k for k in ("model", "optimizer", "iteration", "rng") if k not in payload]
        if missing:
            raise CheckpointError(f"{path}: cannot resume, missing {', '.join(missing)}")
        load_model_state_dict(self.model, payload["model"])
        # This run's hyper-parameters (LR, multipliers, weight decay, momentum, betas): torch's
        # load_state_dict would put the checkpoint's back in every group.
        settings = group_settings(self.optimizer)
        check_same_groups(payload["optimizer"], settings, str(path))
        try:
            load_optimizer_state_dict(self.model, self.optimizer, payload["optimizer"])
        except (ValueError, KeyError, IndexError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path}: optimizer state does not fit this run's optimizer ({type(exc).__name__}: {exc}); "
                "resume with the optimizer and paramwise settings the checkpoint was trained with"
            ) from exc
        self._layout_change(payload)
        changes = settings_changes(payload, self.config, settings)
        if changes:
            self.log(changes)
        for group, own in zip(self.optimizer.param_groups, settings):
            group.update(own)
        if self.scheduler is not None and payload.get("scheduler") is not None:
            fresh = list(getattr(self.scheduler, "base_lrs", []))
            self.scheduler.load_state_dict(payload["scheduler"])
            if fresh and hasattr(self.scheduler, "base_lrs"):
                # The checkpoint gives the position on the curve; this run's config gives the base
                # LRs (a changed lr, lr_mult or effective batch applies, as in a fresh run).
                self.scheduler.base_lrs = fresh
                self.scheduler.load_state_dict(self.scheduler.state_dict())
        if self.scaler is not None and payload.get("scaler") is not None:
            self.scaler.load_state_dict(payload["scaler"])
        hooks_state = (payload.get("meta") or {}).get("hooks", {})
        for hook in self.hooks:
            state = (
                payload.get(hook.payload_key) if hook.payload_key else hooks_state.get(type(hook).__name__)
            )
            if state is not None:
                hook.load_state_dict(state)
        self.iter = int(payload["iteration"])
        restore_rng(payload["rng"])
        self.log(f"resumed from {path} at iteration {self.iter}")
        self.resumed_from = Path(path)
        return path

    @staticmethod
    def _per_rank_batch(config: dict[str, Any] | None) -> int | None:
        train = (config or {}).get("train") or {}
        value = train.get("batch_size") if isinstance(train, dict) else None
        return int(value) if isinstance(value, int) else None

    def _layout_change(self, payload: dict[str, Any]) -> str | None:
        """Compare the checkpoint's process layout with this run's; warn when the effective batch
        differs (returns the message then). Equal effective batches resume with the same math: the
        sampler's global order maps positions across world sizes (docs/distributed.md)."""
        meta = payload.get("meta") or {}
        old_world = int(meta.get("world_size", 1))
        old_batch = meta.get("batch_size") or self._per_rank_batch(payload.get("config"))
        old_accum = int(
            meta.get("accumulate_steps")
            or ((payload.get("config") or {}).get("train") or {}).get("accumulate_steps")
            or 1
        )
        new_batch = self._per_rank_batch(self.config)
        if old_batch is None or new_batch is None:
            return None
        old = old_world * int(old_batch) * old_accum
        new = self.dist.world_size * new_batch * self.accumulate_steps
        if old == new:
            return None
        message = (
            f"warning: resume changes the effective batch from {old} ({old_world} proc x {old_batch} x "
            f"{old_accum} accum) to {new} ({self.dist.world_size} x {new_batch} x {self.accumulate_steps}): "
            f"the LR follows this run's scaling and the data order differs from an uninterrupted run"
        )
        self.log(message)
        return message

    def release_model(self) -> nn.Module:
        """Hand over the (wrapped) model and drop the trainer's references, for ``teardown``."""
        model = self.model
        del self.model
        self.optimizer = None  # type: ignore[assignment]
        return model
