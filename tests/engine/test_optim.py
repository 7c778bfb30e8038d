"""Param groups (longest-match keys, decay rules), LR scaling and optimiser building."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from masklab.engine.optim import build_optimizer, build_param_groups, match_key, scale_lr
from masklab.errors import ConfigError


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.query_embed = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def group_of(groups: list[dict], name: str) -> dict:
    (found,) = [g for g in groups if name in g["param_keys"]]
    return found


def test_longest_key_wins() -> None:
    assert match_key("backbone.1.weight", ["backbone", "backbone.1"]) == "backbone.1"
    assert match_key("head.weight", ["backbone"]) is None
    # Ties break alphabetically so the result does not depend on dict order.
    assert match_key("ab", ["b", "a"]) == "a"


def test_param_groups_multipliers_and_decay_rules() -> None:
    groups = build_param_groups(
        Net(),
        base_lr=0.1,
        weight_decay=0.01,
        paramwise={"backbone": (0.1, 1.0), "backbone.1": (0.5, 0.0), "head": {"lr_mult": 10.0}},
        norm_decay_mult=0.0,
        bias_decay_mult=0.5,
        embed_decay_mult=0.0,
    )
    all_names = [n for g in groups for n in g["param_keys"]]
    assert "frozen.weight" not in all_names and len(all_names) == len(set(all_names)) == 7
    conv = group_of(groups, "backbone.0.weight")
    assert conv["lr"] == pytest.approx(0.01) and conv["weight_decay"] == pytest.approx(0.01)
    # backbone.1 is the norm layer; its own key is longer than "backbone" and wins.
    norm = group_of(groups, "backbone.1.weight")
    assert norm["lr"] == pytest.approx(0.05) and norm["weight_decay"] == 0.0
    # A matched key overrides the generic bias rule: the conv bias keeps decay_mult 1.
    assert group_of(groups, "backbone.0.bias")["weight_decay"] == pytest.approx(0.01)
    head_w = group_of(groups, "head.weight")
    assert head_w["lr"] == pytest.approx(1.0) and head_w["weight_decay"] == pytest.approx(0.01)
    embed = group_of(groups, "query_embed.weight")
    assert embed["lr"] == pytest.approx(0.1) and embed["weight_decay"] == 0.0


def test_generic_rules_without_keys() -> None:
    groups = build_param_groups(Net(), 0.1, 0.01, norm_decay_mult=0.0, bias_decay_mult=0.0)
    assert group_of(groups, "backbone.1.weight")["weight_decay"] == 0.0
    assert group_of(groups, "head.bias")["weight_decay"] == 0.0
    assert group_of(groups, "head.weight")["weight_decay"] == pytest.approx(0.01)
    # Without embed_decay_mult an embedding decays like any weight.
    assert group_of(groups, "query_embed.weight")["weight_decay"] == pytest.approx(0.01)


def test_bad_paramwise_value() -> None:
    with pytest.raises(ConfigError, match="optim.paramwise.head"):
        build_param_groups(Net(), 0.1, paramwise={"head": {"lr_mul": 2.0}})


def test_scale_lr_policies() -> None:
    lr, msg = scale_lr(0.01, 16, 4, "scale")
    assert lr == pytest.approx(0.01 * 4 / 16)
    assert "0.01 -> 0.0025" in msg and "base_batch_size 16" in msg
    lr, msg = scale_lr(0.01, 16, 4, "warn")
    assert lr == 0.01 and "not scaling" in msg and "0.0025" in msg
    assert scale_lr(0.01, 16, 4, "off") == (0.01, "")
    assert scale_lr(0.01, 16, 16, "scale") == (0.01, "")
    with pytest.raises(ConfigError, match="auto_scale_lr"):
        scale_lr(0.01, 16, 4, "double")  # type: ignore[arg-type]


def test_build_optimizer_kinds() -> None:
    groups = build_param_groups(Net(), 0.1, 0.01)
    opt = build_optimizer("sgd", groups, lr=0.1, momentum=0.9)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    assert isinstance(build_optimizer("AdamW", Net().parameters(), lr=1e-3), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="Lion"):
        build_optimizer("Lion", groups, lr=0.1)


def test_bad_values_are_config_errors_not_torch_tracebacks() -> None:
    groups = build_param_groups(Net(), 0.1, 0.01)
    with pytest.raises(
        ConfigError, match=r"^optim: bad arguments for AdamW: Invalid weight_decay value: -0\.1$"
    ):
        build_optimizer("AdamW", groups, lr=0.1, weight_decay=-0.1)
    with pytest.raises(
        ConfigError, match=r"^optim: bad arguments for Adam: Invalid beta parameter at index 0"
    ):
        build_optimizer("Adam", Net().parameters(), lr=0.1, betas=(1.5, 0.999))
    with pytest.raises(
        ConfigError, match=r"^optim\.paramwise\.head: expected multipliers >= 0, got lr_mult -1"
    ):
        build_param_groups(Net(), 0.1, paramwise={"head": {"lr_mult": -1.0}})
    with pytest.raises(ConfigError, match=r"^optim\.norm_decay_mult: expected >= 0 or null, got -2$"):
        build_param_groups(Net(), 0.1, norm_decay_mult=-2.0)


def test_fused_step_by_default_and_same_update() -> None:
    torch.manual_seed(0)
    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    fused = build_optimizer("AdamW", build_param_groups(a, 1e-2, 0.05), lr=1e-2, weight_decay=0.05)
    loop = build_optimizer(
        "AdamW", build_param_groups(b, 1e-2, 0.05), lr=1e-2, weight_decay=0.05, foreach=False
    )
    assert all(g["fused"] for g in fused.param_groups)
    assert not any(g.get("fused") for g in loop.param_groups)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in a.parameters()]
        for net, opt in ((a, fused), (b, loop)):
            for p, g in zip(net.parameters(), grads, strict=True):
                p.grad = None if not p.requires_grad else g.clone()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    # an explicit choice wins
    assert not build_optimizer("SGD", Net().parameters(), lr=0.1, fused=False).param_groups[0]["fused"]
