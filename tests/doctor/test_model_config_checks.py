"""Transform, config and model checks: each planted bug is caught; the tiny config passes."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from masklab.doctor import DoctorContext
from masklab.doctor.checks import config as cfg_checks
from masklab.doctor.checks.model import (
    gradient_findings,
    input_dependence_findings,
    loss_findings,
    overfit_findings,
)
from masklab.doctor.checks.transforms import sample_problems
from masklab.doctor.registry import all_checks
from masklab.doctor.runner import run_checks
from masklab.structures import Batch, Instances, Sample, SampleMeta

Ctx = Callable[..., DoctorContext]


# ------------------------------------------------------------------------- transforms
def _sample(shift: float = 0.0, sem_label: int = 1) -> Sample:
    masks = torch.zeros(1, 16, 16, dtype=torch.bool)
    masks[0, 4:8, 2:10] = True
    semantic = torch.zeros(16, 16, dtype=torch.int64)
    semantic[masks[0]] = sem_label
    inst = Instances(
        masks=masks,
        boxes=torch.tensor([[2.0 + shift, 4.0, 10.0 + shift, 8.0]]),
        labels=torch.tensor([1]),
        attributes={},
        ignore=torch.tensor([False]),
        ids=torch.tensor([1]),
    )
    meta = SampleMeta(image_id=0, file_name="a.png", ori_shape=(16, 16), img_shape=(16, 16))
    return Sample(
        image=torch.zeros(3, 16, 16, dtype=torch.uint8), meta=meta, semantic=semantic, instances=inst
    )


def test_transform_agreement() -> None:
    assert sample_problems(_sample(), 3, 255) == []
    assert "mask box" in sample_problems(_sample(shift=4.0), 3, 255)[0]
    assert "semantic label 2" in sample_problems(_sample(sem_label=2), 3, 255)[0]


# ---------------------------------------------------------------------------- config
def test_config_checks_catch_planted_mistakes(synth_root: Path, make_ctx: Ctx) -> None:
    ctx = make_ctx(
        synth_root,
        "train.optim.base_batch_size=null",
        "model.decode_head.num_classes=5",
        "model.decode_head.norm=syncbn",
        "model.decode_head.loss_decode={type: CrossEntropyLoss, class_weight: [1.0, 2.0]}",
    )
    assert cfg_checks.check_lr_vs_batch(ctx)[0].status == "warn"
    nc = cfg_checks.check_num_classes(ctx)[0]
    assert (
        nc.status == "error"
        and "model.decode_head.num_classes=5" in nc.evidence
        and "7 classes" in nc.evidence
    )
    cw = cfg_checks.check_class_weight(ctx)[0]
    assert cw.status == "error" and "2 entries" in cw.evidence
    assert cfg_checks.check_sync_bn(ctx)[0].status == "warn"
    off = make_ctx(synth_root, "train.optim.base_batch_size=8", "train.optim.auto_scale_lr=warn")
    assert "lr=0.0025" in cfg_checks.check_lr_vs_batch(off)[0].advice


def test_an_auxiliary_heads_class_weight_is_named_under_its_own_key(synth_root: Path, make_ctx: Ctx) -> None:
    """An auxiliary head's errors say model.auxiliary_head[k].<key> (session 10: they said
    decode_head.<key>, the main head's name), and the doctor reports it once."""
    from masklab.config.assemble import build_model
    from masklab.errors import ModelError

    aux = ("model.auxiliary_head={type: FCNHead, in_index: 1, channels: 8, num_convs: 1, norm: gn, "
           "concat_input: false, loss_decode: {type: CrossEntropyLoss, class_weight: [1.0, 2.0]}}")  # fmt: skip
    ctx = make_ctx(synth_root, aux)
    key = "model.auxiliary_head[0].loss_decode[0].class_weight"
    with pytest.raises(ModelError, match=re.escape(f"{key} has 2 entries")):
        build_model(ctx.rc, ctx.meta())
    rows = run_checks(ctx, [c for c in all_checks() if c.family in ("config", "model")])
    assert [f.status for f in rows if f.check == "config.class_weight"] == ["error"]
    model_rows = [f for f in rows if f.check.startswith("model.")]
    assert model_rows and all(f.status == "skip" and "config.class_weight" in f.evidence for f in model_rows)


@pytest.mark.parametrize("count", [8, 2])
def test_semantic_class_weight_is_one_per_channel_as_training_checks(
    synth_root: Path, make_ctx: Ctx, count: int
) -> None:
    """A semantic head has no no-object slot: C+1 weights fail its build like any other count; the
    row spells the key as the head's own error does, and the model rows name the row."""
    from masklab.config.assemble import build_model
    from masklab.errors import ModelError

    weights = "[" + ", ".join(["1.0"] * count) + "]"
    ctx = make_ctx(
        synth_root, f"model.decode_head.loss_decode=[{{type: CrossEntropyLoss, class_weight: {weights}}}]"
    )
    rows = run_checks(ctx, [c for c in all_checks() if c.family in ("config", "model")])
    (cw,) = [f for f in rows if f.check == "config.class_weight"]
    key = "decode_head.loss_decode[0].class_weight"
    assert cw.status == "error"
    assert cw.evidence.startswith(f"model.{key} has {count} entries but the head predicts 7 channels")
    assert cw.advice.startswith("give 7 weights") and "no-object" not in cw.advice
    with pytest.raises(
        ModelError, match="^" + re.escape(f"model.{key} has {count} entries but the head predicts 7 channels")
    ):
        build_model(ctx.rc, ctx.meta())  # training's own words: the same key
    model_rows = [f for f in rows if f.check.startswith("model.")]
    assert len(model_rows) == 4 and all(
        f.status == "skip" and "config.class_weight" in f.evidence for f in model_rows
    )
    good = make_ctx(
        synth_root,
        "model.decode_head.loss_decode={type: CrossEntropyLoss, class_weight: [1, 1, 1, 1, 1, 1, 1]}",
    )
    assert [f.status for f in cfg_checks.check_class_weight(good)] == ["ok"]


def test_queries_and_max_dets(synth_root: Path, make_ctx: Ctx) -> None:
    node = f"{{type: CocoInstanceDataset, ann_file: {synth_root / 'annotations/train.json'}, img_dir: {synth_root / 'images/train'}}}"
    ctx = make_ctx(
        synth_root,
        f"dataset.train={node}",
        "model.decoder={num_queries: 1}",
        "model.test_topk=50",
        "evaluate.max_dets=100",
        nodes=False,
    )
    q = cfg_checks.check_num_queries(ctx)[0]
    assert q.status == "error" and "model.decoder.num_queries=1" in q.evidence
    d = cfg_checks.check_max_dets(ctx)[0]
    assert d.status == "error" and "model.test_topk=50" in d.evidence and "max_dets=100" in d.evidence
    assert "remove model.test_topk" in d.advice
    # A test_topk deeper in the model is not derived by the builder: a different value only skews AP.
    nested = make_ctx(synth_root, "model.decoder={test_topk: 50}", "evaluate.max_dets=100", nodes=False)
    d = cfg_checks.check_max_dets(nested)[0]
    assert d.status == "warn" and "AP@100 sees only 50" in d.evidence


# ----------------------------------------------------------------------------- model
class _Pre(nn.Module):
    def forward(self, batch: Batch, training: bool = False) -> Batch:
        return Batch(images=batch.images.float() / 255, metas=batch.metas)


class ToyModel(nn.Module):
    """Follows the model contract; flags plant one classic bug each."""

    def __init__(
        self, const_head: bool = False, unused: bool = False, nan: bool = False, dead_term: bool = False
    ):
        super().__init__()
        self.data_preprocessor = _Pre()
        self.backbone = nn.Conv2d(3, 4, 3, padding=1)
        self.decode_head = nn.Conv2d(4, 3, 1)
        self.bias_map = nn.Parameter(torch.randn(1, 3, 8, 8))
        self.extra_head = nn.Linear(4, 4) if unused else None
        self.const_head, self.nan, self.dead_term = const_head, nan, dead_term

    def forward(self, batch: Batch, mode: str = "loss") -> dict[str, torch.Tensor]:
        feats = self.backbone(batch.images)
        out = self.decode_head(feats * (0 if self.const_head else 1)) + self.bias_map
        target = torch.arange(3).view(1, 3, 1, 1).float().expand_as(out)
        losses = {"loss_seg": ((out - target) ** 2).mean()}
        if self.nan:
            losses["loss_seg"] = losses["loss_seg"] * float("nan")
        if self.dead_term:
            losses["loss_dead"] = torch.tensor(1.0)
        return losses


def _batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 8, 8), generator=g, dtype=torch.uint8)
    return Batch(
        images=images,
        metas=[SampleMeta(image_id=i, file_name="", ori_shape=(8, 8), img_shape=(8, 8)) for i in range(2)],
    )


def test_healthy_toy_model_passes() -> None:
    torch.manual_seed(0)
    m, b = ToyModel(), _batch()
    found = (
        loss_findings(m, b, None)
        + gradient_findings(m, b)
        + input_dependence_findings(m, b)
        + overfit_findings(m, b, 30, lr=0.05)
    )
    assert [f.status for f in found] == ["ok"] * 4, found


@pytest.mark.parametrize(
    ("flag", "fn", "needle"),
    [
        ("const_head", input_dependence_findings, "decode_head"),
        ("unused", gradient_findings, "extra_head.weight"),
        ("nan", lambda m, b: loss_findings(m, b, 3), "non-finite"),
        ("dead_term", lambda m, b: overfit_findings(m, b, 5, lr=0.05), "loss_dead"),
    ],
)
def test_planted_model_bug_is_caught(flag: str, fn: Callable, needle: str) -> None:
    torch.manual_seed(0)
    found = fn(ToyModel(**{flag: True}), _batch())
    assert found[0].status == "error" and needle in found[0].evidence, found


def test_one_overfit_step_is_measured_after_the_step() -> None:
    """``--steps 1``: the loss after the one update is compared with the loss before it."""
    torch.manual_seed(0)
    (f,) = overfit_findings(ToyModel(), _batch(), 1, lr=0.05)
    assert f.status == "ok" and f.evidence.startswith("1 steps on one batch: loss_seg "), f


def test_tiny_config_passes_every_check(synth_root: Path, make_ctx: Ctx) -> None:
    ctx = make_ctx(synth_root, steps=8)
    found = run_checks(ctx)
    assert [f for f in found if f.status != "ok"] == []
    assert (ctx.work_dir / "train_pipeline.png").is_file()


class _Gated(nn.Module):
    """``gate * conv(x)``: with ``gate`` zero at init the conv gets no signal until the gate moves
    (timm ResNets zero their last BatchNorm per block the same way); with ``dead`` the gate is a
    constant buffer and the conv never learns."""

    def __init__(self, dead: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        if dead:
            self.register_buffer("gate", torch.zeros(()))
        else:
            self.gate = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(2))

    def data_preprocessor(self, batch: Batch, training: bool = False) -> Batch:
        return batch

    def forward(self, batch: Batch, mode: str = "loss") -> dict[str, torch.Tensor]:
        out = self.gate * self.conv(batch.images) + self.bias[None, :, None, None]
        return {"loss_fit": ((out - 1.0) ** 2).mean()}


def test_zero_initialised_gate_is_not_a_missing_gradient() -> None:
    batch = Batch(images=torch.rand(2, 3, 4, 4), metas=[SampleMeta(), SampleMeta()])
    assert gradient_findings(_Gated(dead=False), batch)[0].status == "ok"
    dead = gradient_findings(_Gated(dead=True), batch)[0]
    assert dead.status == "error" and "conv.weight" in dead.evidence


def test_zero_no_object_weight_is_a_warning(synth_root: Path, make_ctx: Ctx) -> None:
    """eos_coef 0 on the class head or on one attribute head is named; written positive values pass."""
    ctx = make_ctx(
        synth_root,
        "model.eos_coef=0",
        "model.attributes=[{name: color, num_values: 4, eos_coef: 0.1}, {name: pattern, num_values: 3, eos_coef: 0}]",
        nodes=False,
    )
    rows = {f.evidence.split("=")[0]: f for f in cfg_checks.check_no_object_weight(ctx)}
    assert (
        rows["model.eos_coef"].status == "warn" and "set model.eos_coef > 0" in rows["model.eos_coef"].advice
    )
    assert rows["model.attributes.1.eos_coef"].status == "warn"
    assert rows["model.attributes.0.eos_coef"].status == "ok"
    assert cfg_checks.check_no_object_weight(make_ctx(synth_root, nodes=False)) == []
