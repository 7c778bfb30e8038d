import pytest
import torch

from masklab.errors import ModelError, TrainingError
from masklab.models.mask2former import AttributeSpec, Mask2FormerCriterion, Mask2FormerMatcher
from masklab.models.mask2former.outputs import Mask2FormerLayerOutput, Mask2FormerOutput
from masklab.models.mask2former.targets import Mask2FormerTargets


def _square_masks(n: int, size: int = 16) -> torch.Tensor:
    masks = torch.zeros(n, size, size)
    masks[:, 4:12, 4:12] = 1
    return masks


def _identical_queries(attr_logits: torch.Tensor) -> Mask2FormerLayerOutput:
    """Two queries equal in class and mask; only their attribute logits differ."""
    q = attr_logits.shape[0]
    class_logits = torch.zeros(1, q, 3)
    mask_logits = (_square_masks(q, 8)[None] * 2 - 1) * 5
    return Mask2FormerLayerOutput(class_logits, mask_logits, {"color": attr_logits[None]})


def test_attribute_cost_alone_decides_the_assignment() -> None:
    spec = AttributeSpec("color", 2)
    matcher = Mask2FormerMatcher(attributes=[spec], num_points=32)
    out = _identical_queries(torch.tensor([[-5.0, 5.0, -5.0], [5.0, -5.0, -5.0]]))  # q0 says 1, q1 says 0
    masks = _square_masks(2, 32)
    a = Mask2FormerTargets(torch.tensor([0, 0]), masks, {"color": torch.tensor([0, 1])})
    b = Mask2FormerTargets(torch.tensor([0, 0]), masks, {"color": torch.tensor([1, 0])})
    ((qa, ga),) = matcher(out, [a])
    ((qb, gb),) = matcher(out, [b])
    assert dict(zip(qa.tolist(), ga.tolist())) == {0: 1, 1: 0}
    assert dict(zip(qb.tolist(), gb.tolist())) == {0: 0, 1: 1}


def test_unlabelled_attribute_adds_no_cost() -> None:
    spec = AttributeSpec("color", 2, cost_weight=3.0)
    matcher = Mask2FormerMatcher(attributes=[spec], num_points=16)
    out = _identical_queries(torch.randn(2, 3))
    target = Mask2FormerTargets(torch.tensor([0, 1]), _square_masks(2, 32), {"color": torch.tensor([-1, 1])})
    term = matcher.cost_terms(out, 0, target)["attr_color"]
    assert term.shape == (2, 2)
    assert torch.all(term[:, 0] == 0) and torch.all(term[:, 1] < 0)


def test_non_finite_cost_is_training_error() -> None:
    matcher = Mask2FormerMatcher(num_points=16)
    out = _identical_queries(torch.randn(2, 3))
    out.class_logits[0, 0, 0] = float("nan")
    target = Mask2FormerTargets(torch.tensor([0]), _square_masks(1, 32), {})
    with pytest.raises(TrainingError, match=r"matching step \(decoder output 4, image 0\).*class=non-finite"):
        matcher(out, [target], layer=4)


def _criterion(**kwargs: object) -> Mask2FormerCriterion:
    return Mask2FormerCriterion(2, [AttributeSpec("color", 2)], num_points=32, **kwargs)  # type: ignore[arg-type]


def test_unlabelled_attribute_of_matched_object_adds_no_loss() -> None:
    torch.manual_seed(0)
    crit = _criterion()
    class_logits = torch.tensor([[[8.0, -8.0, -8.0], [-8.0, -8.0, 8.0]]])  # query 0 clearly matches
    mask_logits = (_square_masks(2, 8)[None] * 2 - 1) * 5
    attr = torch.zeros(1, 2, 3)
    target = Mask2FormerTargets(torch.tensor([0]), _square_masks(1, 32), {"color": torch.tensor([-1])})

    def attr_loss(logits: torch.Tensor) -> float:
        out = Mask2FormerOutput([Mask2FormerLayerOutput(class_logits, mask_logits, {"color": logits})])
        return float(crit(out, [target])["loss_attr_color"])

    changed = attr.clone()
    changed[0, 0] = torch.tensor([9.0, -9.0, 0.0])  # only the matched (unlabelled) query changes
    assert attr_loss(attr) == pytest.approx(attr_loss(changed))
    labelled = Mask2FormerTargets(torch.tensor([0]), _square_masks(1, 32), {"color": torch.tensor([1])})
    out = Mask2FormerOutput([Mask2FormerLayerOutput(class_logits, mask_logits, {"color": changed})])
    assert float(crit(out, [labelled])["loss_attr_color"]) > attr_loss(changed)


def test_weight_without_loss_is_rejected() -> None:
    with pytest.raises(ModelError, match="'loss_attr_shade' names no loss"):
        _criterion(loss_weights={"loss_attr_shade": 1.0})
    assert _criterion(loss_weights={"loss_attr_color": 4.0}).weights["loss_attr_color"] == 4.0


def test_num_masks_is_clamped_to_one() -> None:
    crit = _criterion()
    empty = Mask2FormerTargets(torch.zeros(0, dtype=torch.long), torch.zeros(0, 8, 8), {})
    assert float(crit.num_masks([empty], torch.device("cpu"))) == 1.0
    two = Mask2FormerTargets(torch.tensor([0, 1]), _square_masks(2, 8), {})
    assert float(crit.num_masks([two, two], torch.device("cpu"))) == 4.0


def test_pairwise_bce_matches_elementwise_definition() -> None:
    from masklab.models.mask2former.matcher import pairwise_sigmoid_bce

    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(3, 7, generator=g) * 4, torch.rand(2, 7, generator=g)
    slow = torch.stack(
        [
            torch.stack([torch.nn.functional.binary_cross_entropy_with_logits(logit, t) for t in targets])
            for logit in logits
        ]
    )
    torch.testing.assert_close(pairwise_sigmoid_bce(logits, targets), slow)


@pytest.mark.parametrize("scale", [4.0, 60.0, 400.0])
def test_pairwise_costs_match_their_definitions_on_wide_logits(scale: float) -> None:
    """The costs' overflow-safe forms (|x| capped at 80 inside exp / sigmoid) equal the float64
    definitions also for the large logits of an untrained model."""
    from masklab.models.mask2former.matcher import pairwise_dice, pairwise_sigmoid_bce

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 300, generator=g) * scale
    targets = (torch.rand(2, 3, 300, generator=g) > 0.5).float()
    x, t = logits.double(), targets.double()
    bce = (torch.nn.functional.softplus(x).unsqueeze(2) - x.unsqueeze(2) * t.unsqueeze(1)).mean(-1)
    p = x.sigmoid()
    dice = 1 - (2 * p @ t.transpose(1, 2) + 1) / (p.sum(-1)[..., None] + t.sum(-1)[:, None, :] + 1)
    torch.testing.assert_close(pairwise_sigmoid_bce(logits, targets).double(), bce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pairwise_dice(logits, targets).double(), dice, rtol=1e-5, atol=1e-6)


def test_crowd_instances_are_not_targets() -> None:
    from masklab.structures import Instances

    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    inst = Instances(
        masks=masks,
        boxes=torch.zeros(2, 4),
        labels=torch.tensor([0, 1]),
        attributes={"color": torch.tensor([1, 0])},
        ignore=torch.tensor([False, True]),
    )
    target = Mask2FormerTargets.from_instances(inst, ("color",))
    assert target.labels.tolist() == [0] and target.attributes["color"].tolist() == [1]


def test_batch_targets_drop_crowd_objects_only_where_they_are() -> None:
    from masklab.structures import Instances

    def inst(ignore: list[bool]) -> Instances:
        n = len(ignore)
        return Instances(
            masks=torch.ones(n, 8, 8, dtype=torch.bool),
            boxes=torch.zeros(n, 4),
            labels=torch.arange(n),
            attributes={"color": torch.arange(n) % 2},
            ignore=torch.tensor(ignore, dtype=torch.bool),
        )

    clean, crowded, empty = inst([False, False]), inst([True, False, False]), inst([])
    targets = Mask2FormerTargets.from_batch([clean, crowded, empty], ("color",))
    assert [t.labels.tolist() for t in targets] == [[0, 1], [1, 2], []]
    assert targets[1].attributes["color"].tolist() == [1, 0]
    # Without any crowd object in the batch every image is taken whole.
    whole = Mask2FormerTargets.from_batch([clean, empty], ("color",))
    assert [len(t) for t in whole] == [2, 0]


def test_attribute_loss_is_zero_not_nan_when_every_query_is_matched_to_an_unlabelled_object() -> None:
    crit = _criterion()
    logits = torch.randn(2, 3, requires_grad=True)
    out = _identical_queries(logits)
    # Two queries, two objects, both unlabelled: no query has an attribute target (not even no-object).
    target = Mask2FormerTargets(torch.tensor([0, 1]), _square_masks(2, 32), {"color": torch.tensor([-1, -1])})
    losses = crit(Mask2FormerOutput(layers=[out]), [target])
    attr = losses["loss_attr_color"]
    assert torch.isfinite(attr) and float(attr.detach()) == 0.0
    attr.backward()  # the graph is kept: reaches the attribute logits
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0
