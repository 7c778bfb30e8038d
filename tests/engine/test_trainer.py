"""The training step: loss summing, accumulation, clipping, precision, NaN guard, train/eval modes."""

from __future__ import annotations

from itertools import cycle
from pathlib import Path

import pytest
import torch
from torch import nn

from masklab.engine import CheckpointHook, EvalHook, NonFiniteLossHook, Trainer, ValLoop, epochs_to_iters
from masklab.engine.hooks.base import Hook
from masklab.errors import ConfigError, TrainingError
from masklab.structures import Batch, SampleMeta

from .toy import PixelAccuracy, ToyModel, toy_loader


class Record(Hook):
    def __init__(self) -> None:
        self.states: list = []
        self.grad_norms_after: list[float] = []
        self.modes: list[bool] = []

    def after_train_iter(self, trainer: Trainer) -> None:
        self.states.append(trainer.state)
        grads = [p.grad.norm() for p in trainer.model.parameters() if p.grad is not None]
        self.grad_norms_after.append(float(torch.stack(grads).norm()) if grads else 0.0)
        self.modes.append(trainer.model.training)


def sgd(model: nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr)


def test_total_loss_sums_loss_keys_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, rec = ToyModel(), Record()
    Trainer(model, sgd(model), toy_loader(), 2, hooks=[rec], work_dir=tmp_path, progress=False).train()
    for state in rec.states:
        assert state.losses["loss"] == pytest.approx(state.losses["loss_ce"] + state.losses["loss_reg"])
        assert "acc_seg" in state.losses and state.lr == pytest.approx(0.1)
    assert [s.iteration for s in rec.states] == [1, 2]


class Linear(nn.Module):
    """A linear regression on the mean colour: the gradient of a mean loss is linear in the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.data_preprocessor = lambda batch, training: batch  # noqa: E731 - the contract only needs a callable
        self.fc = nn.Linear(3, 1)

    def forward(self, batch: Batch, mode: str = "loss") -> dict[str, torch.Tensor]:
        x = batch.images.mean(dim=(2, 3))
        assert batch.semantic is not None
        y = batch.semantic.float().mean(dim=(1, 2))
        return {"loss_mse": ((self.fc(x).squeeze(1) - y) ** 2).mean()}


def linear_batches(n: int, per: int) -> list[Batch]:
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(n * per, 3, 4, 4, generator=gen)
    semantic = torch.randint(0, 3, (n * per, 4, 4), generator=gen)
    return [
        Batch(
            images=images[i * per : (i + 1) * per],
            metas=[SampleMeta()] * per,
            semantic=semantic[i * per : (i + 1) * per],
        )
        for i in range(n)
    ]


def test_accumulation_equals_larger_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    big, small = Linear(), Linear()
    small.load_state_dict(big.state_dict())
    Trainer(big, sgd(big), cycle(linear_batches(1, 4)), 3, work_dir=tmp_path / "a", progress=False).train()
    Trainer(
        small,
        sgd(small),
        cycle(linear_batches(2, 2)),
        3,
        work_dir=tmp_path / "b",
        accumulate_steps=2,
        progress=False,
    ).train()
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.equal(big.fc.weight, Linear().fc.weight)  # it did train


def test_clip_grad_limits_norm_and_logs_unclipped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, rec = ToyModel(dropout=0.0), Record()
    Trainer(
        model, sgd(model), toy_loader(), 2, hooks=[rec], work_dir=tmp_path, clip_grad=1e-3, progress=False
    ).train()
    for state, after in zip(rec.states, rec.grad_norms_after):
        assert state.grad_norm is not None and state.grad_norm > 1e-3
        assert after == pytest.approx(1e-3, rel=1e-3)


def test_bf16_autocast_on_cpu(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, rec = ToyModel(), Record()
    Trainer(
        model, sgd(model), toy_loader(), 2, hooks=[rec], work_dir=tmp_path, precision="bf16", progress=False
    ).train()
    assert model.logits_dtype == torch.bfloat16
    assert all(torch.isfinite(torch.tensor(s.losses["loss"])) for s in rec.states)
    assert model.conv.weight.dtype == torch.float32  # master weights stay fp32


def test_fp16_on_cpu_is_a_clear_error(tmp_path: Path) -> None:
    model = ToyModel()
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Trainer(model, sgd(model), toy_loader(), 1, work_dir=tmp_path, precision="fp16")


def test_nan_stops_with_iteration_and_terms(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ToyModel()
    model.nan_at_calls = {3}
    hooks = [NonFiniteLossHook(max_skips=0), CheckpointHook(interval=2)]
    trainer = Trainer(model, sgd(model), toy_loader(), 5, hooks=hooks, work_dir=tmp_path, progress=False)
    with pytest.raises(
        TrainingError, match=r"iteration 3: loss=nan, loss_ce=nan, loss_reg=\d.*iter_0000002\.pth"
    ):
        trainer.train()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "iter_0000002.pth"


def test_nan_without_guard_hook_still_stops(tmp_path: Path) -> None:
    model = ToyModel()
    model.nan_at_calls = {1}
    with pytest.raises(TrainingError, match="iteration 1"):
        Trainer(model, sgd(model), toy_loader(), 3, work_dir=tmp_path, progress=False).train()


def test_nan_skip_mode_does_not_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ToyModel(dropout=0.0)
    model.nan_at_calls = {2}
    snapshots: list[torch.Tensor] = []

    class Snap(Hook):
        def after_train_iter(self, trainer: Trainer) -> None:
            snapshots.append(model.cls.weight.detach().clone())

    guard = NonFiniteLossHook(max_skips=1)
    trainer = Trainer(
        model, sgd(model), toy_loader(), 4, hooks=[guard, Snap()], work_dir=tmp_path, progress=False
    )
    trainer.train()
    assert trainer.iter == 4 and guard.skips == 1
    assert torch.equal(snapshots[0], snapshots[1])  # the NaN step changed nothing
    assert not torch.equal(snapshots[1], snapshots[2])  # training went on
    model.nan_at_calls = {5}
    trainer.max_iters = 6
    with pytest.raises(TrainingError, match="skipped 1 of max 1"):
        trainer.train()


def test_validation_uses_eval_mode_and_returns_to_train(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, rec = ToyModel(dropout=0.5), Record()
    evaluator = PixelAccuracy()
    val_loader = [b for b, _ in zip(toy_loader(seed=9), range(2))]
    seen_modes: list[bool] = []
    original_process = evaluator.process

    def process(batch, predictions):  # type: ignore[no-untyped-def]
        seen_modes.append(model.training)
        original_process(batch, predictions)

    evaluator.process = process  # type: ignore[method-assign]
    val = ValLoop(model, val_loader, evaluator)
    trainer = Trainer(
        model,
        sgd(model),
        toy_loader(),
        2,
        hooks=[rec, EvalHook(interval=1)],
        work_dir=tmp_path,
        val_loop=val,
        progress=True,
    )
    trainer.train()
    assert seen_modes == [False] * 4 and rec.modes == [True, True]
    assert model.training
    first = val.run(progress=False)
    assert first == val.run(progress=False)  # eval mode: dropout off, deterministic
    assert 0.0 <= first["aAcc"] <= 1.0


def test_epochs_to_iters() -> None:
    assert epochs_to_iters(2, dataset_size=100, batch_size=4, world_size=2) == 24
    assert epochs_to_iters(1, dataset_size=100, batch_size=8, drop_last=False) == 13
    assert epochs_to_iters(1, dataset_size=100, batch_size=4, accumulate_steps=5) == 5
    with pytest.raises(ConfigError):
        epochs_to_iters(1, dataset_size=0, batch_size=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with GradScaler needs CUDA")
def test_fp16_with_grad_scaler_on_cuda(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, rec = ToyModel().cuda(), Record()
    model.data_preprocessor.anchor = model.data_preprocessor.anchor.cuda()
    trainer = Trainer(
        model,
        sgd(model),
        toy_loader(),
        3,
        hooks=[rec],
        work_dir=tmp_path,
        precision="fp16",
        device="cuda",
        progress=False,
    )
    trainer.train()
    assert model.logits_dtype == torch.float16 and trainer.scaler is not None
    assert "scale" in trainer.checkpoint_payload()["scaler"]


def test_channels_last_trains_like_nchw_and_feeds_nhwc(tmp_path: Path) -> None:
    """``channels_last``: the model sees NHWC images and the run equals the NCHW one up to float order."""
    seen: list[bool] = []

    def run(channels_last: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model, rec = ToyModel(dropout=0.0), Record()
        if channels_last:
            model.to(memory_format=torch.channels_last)
            original = model.logits

            def logits(images: torch.Tensor) -> torch.Tensor:
                seen.append(images.is_contiguous(memory_format=torch.channels_last))
                return original(images)

            model.logits = logits  # type: ignore[method-assign]
        trainer = Trainer(
            model,
            sgd(model),
            toy_loader(),
            4,
            hooks=[rec],
            work_dir=tmp_path / str(channels_last),
            progress=False,
            channels_last=channels_last,
        )
        trainer.train()
        return [s.losses["loss"] for s in rec.states], {
            k: v.detach().clone() for k, v in model.state_dict().items()
        }

    losses_ref, weights_ref = run(False)
    losses_cl, weights_cl = run(True)
    assert seen and all(seen)
    assert losses_cl == pytest.approx(losses_ref, rel=1e-5, abs=1e-6)
    for name, ref in weights_ref.items():
        torch.testing.assert_close(weights_cl[name], ref, rtol=1e-5, atol=1e-6)
    assert weights_cl["conv.weight"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_instance_batches_pin_and_move_without_blocking_on_cuda() -> None:
    from masklab.structures import Batch, Instances, SampleMeta

    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 1:4, 1:4] = True
    inst = Instances(
        masks=masks,
        boxes=torch.tensor([[1.0, 1, 4, 4], [0, 0, 0, 0]]),
        labels=torch.tensor([3, 1]),
        attributes={"color": torch.tensor([1, -1])},
    )
    meta = SampleMeta(image_id=0, file_name="a.png", ori_shape=(8, 8), img_shape=(8, 8))
    batch = Batch(images=torch.rand(1, 3, 8, 8), metas=[meta], instances=[inst])
    pinned = batch.pin_memory()
    assert pinned.images.is_pinned() and pinned.instances[0].masks.is_pinned()
    assert pinned.instances[0].attributes["color"].is_pinned()
    moved = pinned.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert moved.instances[0].labels.device.type == "cuda"
    assert torch.equal(moved.instances[0].masks.cpu(), masks) and torch.equal(
        moved.images.cpu(), batch.images
    )


def test_log_lines_are_never_wrapped_into_several(tmp_path: Path) -> None:
    """A console that is not a terminal is 80 columns wide; rich wrapped long loss lines there, so a
    redirected log (and a one-line message) came out as several lines."""
    import io

    from rich.console import Console

    model = ToyModel()
    out = io.StringIO()
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), toy_loader(), 1, work_dir=tmp_path,
        console=Console(file=out, width=80, highlight=False),
    )  # fmt: skip
    message = "iter 10/100  " + "  ".join(f"loss_part_{i} 0.{i:04d}" for i in range(20))
    trainer.log(message)
    assert out.getvalue() == message + "\n"


def test_validation_takes_rank_zeros_buffers_after_the_before_val_hooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate() syncs the buffers after ``before_val`` (where EMA swaps its average in) and before
    the val loop runs."""
    import masklab.engine.trainer as trainer_module

    events: list[str] = []

    class Swap(Hook):
        def before_val(self, trainer: Trainer) -> None:
            events.append("before_val")

    monkeypatch.setattr(trainer_module, "broadcast_buffers", lambda model: events.append("broadcast"))
    model = ToyModel(dropout=0.0)
    evaluator = PixelAccuracy()
    original_process = evaluator.process

    def process(batch, predictions):  # type: ignore[no-untyped-def]
        events.append("val")
        original_process(batch, predictions)

    evaluator.process = process  # type: ignore[method-assign]
    val = ValLoop(model, [next(toy_loader(seed=9))], evaluator)
    trainer = Trainer(model, sgd(model), toy_loader(), 1, hooks=[Swap()], work_dir=tmp_path, val_loop=val)
    trainer.validate()
    assert events == ["before_val", "broadcast", "val"]
