"""All prediction points matched and supervised in one pass equal one prediction point at a time."""

import pytest
import torch

from masklab.errors import TrainingError
from masklab.models.mask2former import AttributeSpec, Mask2FormerCriterion, Mask2FormerMatcher
from masklab.models.mask2former.outputs import Mask2FormerLayerOutput, Mask2FormerOutput
from masklab.models.mask2former.targets import Mask2FormerTargets

SPEC = AttributeSpec("color", 2)


def _layers(n: int, b: int = 3, q: int = 6, seed: int = 0) -> list[Mask2FormerLayerOutput]:
    g = torch.Generator().manual_seed(seed)
    return [
        Mask2FormerLayerOutput(
            torch.randn(b, q, 4, generator=g, requires_grad=True),
            (3 * torch.randn(b, q, 16, 16, generator=g)).requires_grad_(),
            {"color": torch.randn(b, q, 3, generator=g, requires_grad=True)},
        )
        for _ in range(n)
    ]


def _targets() -> list[Mask2FormerTargets]:
    """Three images: two objects (one attribute unlabelled), none, three objects."""
    made = []
    for i, (labels, colors) in enumerate([([0, 2], [1, -1]), ([], []), ([2, 1, 0], [0, 1, 1])]):
        masks = torch.rand(len(labels), 64, 64, generator=torch.Generator().manual_seed(10 + i)) > 0.5
        made.append(
            Mask2FormerTargets(
                torch.tensor(labels, dtype=torch.long),
                masks.float(),
                {"color": torch.tensor(colors, dtype=torch.long)},
            )
        )
    return made


def test_matching_every_prediction_point_at_once_equals_one_at_a_time() -> None:
    matcher = Mask2FormerMatcher(class_weight=2.0, attributes=(SPEC,), num_points=40)
    layers, targets = _layers(3), _targets()
    torch.manual_seed(5)
    together = matcher.match_layers(layers, targets)
    after_together = torch.rand(4)
    torch.manual_seed(5)
    alone = [matcher(layer, targets) for layer in layers]  # draws points in the same order
    assert torch.equal(after_together, torch.rand(4))
    assert len(together) == 3
    for got, ref in zip(together, alone):
        assert [(q.tolist(), g.tolist()) for q, g in got] == [(q.tolist(), g.tolist()) for q, g in ref]
    # The costs themselves, rows (prediction point l, image i) against each prediction point's own pass.
    present = [0, 2]
    coords = [matcher.draw_points(2) for _ in layers]
    terms, sizes = matcher.stacked_cost_terms(layers, present, [targets[0], targets[2]], torch.cat(coords))
    assert sizes == [2, 3] and terms["mask"].shape == (6, 6, 3)
    for layer_index, layer in enumerate(layers):
        own, _ = matcher.stacked_cost_terms([layer], present, [targets[0], targets[2]], coords[layer_index])
        for name, value in own.items():
            torch.testing.assert_close(value, terms[name][2 * layer_index : 2 * layer_index + 2], msg=name)


def test_matching_in_stacks_of_any_size_gives_the_same_assignments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large prediction points are matched one at a time (``stack_elements``), small ones together."""
    matcher = Mask2FormerMatcher(attributes=(SPEC,), num_points=40)
    layers, targets = _layers(5), _targets()
    torch.manual_seed(2)
    together = matcher.match_layers(layers, targets)
    for limit in (1, 2 * 6 * 40 * 2):  # one prediction point per stack; two per stack
        monkeypatch.setattr(Mask2FormerMatcher, "stack_elements", limit)
        torch.manual_seed(2)
        got = matcher.match_layers(layers, targets)
        for a, b in zip(got, together):
            assert [(q.tolist(), g.tolist()) for q, g in a] == [(q.tolist(), g.tolist()) for q, g in b]
    monkeypatch.setattr(Mask2FormerMatcher, "stack_elements", 1)
    with torch.no_grad():
        layers[3].class_logits[0, 1, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"decoder output 3, image 0\).*class=non-finite"):
        matcher.match_layers(layers, targets)


def test_non_finite_cost_names_the_prediction_point_of_a_stacked_match() -> None:
    matcher = Mask2FormerMatcher(num_points=16)
    layers, targets = _layers(3), _targets()
    with torch.no_grad():
        layers[1].mask_logits[2, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"decoder output 6, image 2\).*mask=non-finite"):
        matcher.match_layers(layers, targets, first_layer=5)


def test_criterion_over_all_prediction_points_equals_each_prediction_point_alone() -> None:
    """Losses and gradients: the one-pass criterion against single-prediction-point calls, which draw
    the same random points when run in order (matching points, then loss points, point after point)."""
    crit = Mask2FormerCriterion(3, [SPEC], num_points=32, dice_weight=3.0)
    layers, targets = _layers(3), _targets()
    torch.manual_seed(9)
    together = crit(Mask2FormerOutput(layers), targets)
    after_together = torch.rand(4)
    grads_together = torch.autograd.grad(
        sum(together.values()), [layers[0].mask_logits, layers[2].class_logits]
    )
    torch.manual_seed(9)
    alone = [crit(Mask2FormerOutput([layer]), targets) for layer in layers]
    assert torch.equal(after_together, torch.rand(4))
    base = ["loss_cls", "loss_mask", "loss_dice", "loss_attr_color"]
    assert list(together) == [n + s for s in ("_d0", "_d1", "") for n in base]
    for suffix, losses in zip(("_d0", "_d1", ""), alone):
        for name in base:
            torch.testing.assert_close(together[name + suffix], losses[name], msg=name + suffix)
    grads_alone = (
        torch.autograd.grad(sum(alone[0].values()), layers[0].mask_logits)[0],
        torch.autograd.grad(sum(alone[2].values()), layers[2].class_logits)[0],
    )
    for got, ref in zip(grads_together, grads_alone):
        assert ref.abs().sum() > 0
        torch.testing.assert_close(got, ref)


def test_stacked_losses_with_fixed_targets_equal_each_prediction_point_alone() -> None:
    """The pilots' path (fixed (query, object) pairs, normaliser objects x groups): together vs alone."""
    crit = Mask2FormerCriterion(3, [SPEC], num_points=32)
    layers, targets = _layers(2, q=5, seed=1), _targets()
    from masklab.models.mask2former.criterion import _BatchTargets

    flat = _BatchTargets.of(targets, torch.device("cpu"))
    pairs = [
        (torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 1])),  # two groups of image 0's two objects
        (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)),
        (torch.tensor([4, 0, 2]), torch.tensor([2, 0, 1])),
    ]
    torch.manual_seed(3)
    points = [crit._draw_loss_points(7, torch.device("cpu")) for _ in layers]
    normaliser = torch.tensor(10.0)
    together = crit._stacked_losses(layers, flat, [pairs, pairs], normaliser, points)
    for layer, got, drawn in zip(layers, together, points):
        (ref,) = crit._stacked_losses([layer], flat, [pairs], normaliser, [drawn])
        assert got.keys() == ref.keys() == {"loss_cls", "loss_mask", "loss_dice", "loss_attr_color"}
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], msg=name)
    assert float(together[0]["loss_mask"].detach()) > 0


def test_a_batch_without_objects_gives_zero_mask_losses_that_reach_every_prediction_point() -> None:
    crit = Mask2FormerCriterion(3, [SPEC], num_points=16)
    layers = _layers(2)
    empty = [
        Mask2FormerTargets(
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, 64, 64),
            {"color": torch.zeros(0, dtype=torch.long)},
        )
    ] * 3
    losses = crit(Mask2FormerOutput(layers), empty)
    assert float(losses["loss_mask"].detach()) == 0.0 and float(losses["loss_dice_d0"].detach()) == 0.0
    assert float(losses["loss_cls"].detach()) > 0  # every query is pushed to "no object"
    grads = torch.autograd.grad(sum(losses.values()), [layer.mask_logits for layer in layers])
    assert all(g is not None and float(g.abs().sum()) == 0.0 for g in grads)


def test_point_sets_drawn_for_another_match_count_are_a_model_error() -> None:
    from masklab.errors import ModelError
    from masklab.models.mask2former.criterion import _BatchTargets

    crit = Mask2FormerCriterion(3, [SPEC], num_points=16)
    layers, targets = _layers(2), _targets()
    flat = _BatchTargets.of(targets, torch.device("cpu"))
    pairs = [
        (torch.tensor([0, 1]), torch.tensor([0, 1])),
        (torch.zeros(0, dtype=torch.long),) * 2,
        (torch.tensor([3]), torch.tensor([2])),
    ]
    points = [crit._draw_loss_points(4, torch.device("cpu")) for _ in layers]  # 3 matches, 4 point sets
    with pytest.raises(ModelError, match="8 pre-drawn point sets for 6 matched masks"):
        crit._stacked_losses(layers, flat, [pairs, pairs], torch.tensor(3.0), points)
