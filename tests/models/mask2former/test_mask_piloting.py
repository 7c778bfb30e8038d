"""Mask piloting (MP-Former): pilot queries, their masks and self-attention, their losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from masklab.errors import ModelError
from masklab.models.mask2former import Mask2Former
from masklab.models.mask2former.mask_piloting import MaskPiloting, MaskPilotingConfig
from masklab.models.mask2former.targets import Mask2FormerTargets

from .m2f_tiny import build_tiny, make_batch, make_instances


def _targets() -> list[Mask2FormerTargets]:
    inst = [
        make_instances([(0, 0, 20, 20), (30, 30, 60, 50)], [0, 2], 64, color=[1, 3]),
        make_instances([(5, 5, 40, 40)], [1], 64, color=[-1]),
    ]
    return Mask2FormerTargets.from_batch(inst, ("color",))


def _piloted_model(**settings: object) -> Mask2Former:
    torch.manual_seed(0)
    model = build_tiny()
    model.decoder.piloting = MaskPiloting(3, 32, settings)
    return model


def test_pilot_queries_follow_the_ground_truth() -> None:
    torch.manual_seed(0)
    piloting = MaskPiloting(3, 8, {"groups": 2})
    targets = _targets()
    pilots = piloting(targets, [(2, 2), (4, 4), (8, 8)], num_queries=5)
    assert pilots is not None and pilots.num_pilots == 4  # 2 groups x the 2 objects of image 0
    # content: each object's class embedding in both groups; image 1's second slots are padding (zero)
    emb = piloting.label_embed.weight
    for slot, label in ((0, 0), (1, 2), (2, 0), (3, 2)):
        assert torch.equal(pilots.content[0, slot], emb[label])
    assert torch.equal(pilots.content[1, 0], emb[1]) and torch.equal(pilots.content[1, 2], emb[1])
    assert not pilots.content[1, 1].any() and not pilots.content[1, 3].any()
    # attention masks: open exactly where the object touches a level cell; padding blocked everywhere
    for level, size in enumerate([(2, 2), (4, 4), (8, 8)]):
        for image, slot, obj in ((0, 0, 0), (0, 3, 1), (1, 2, 0)):
            touched = F.adaptive_max_pool2d(targets[image].masks[obj][None], size).flatten() > 0
            assert torch.equal(pilots.blocked[level][image, slot], ~touched)
        assert pilots.blocked[level][1, 1].all()
    # supervision: every object once per group
    assert [p.tolist() for p, _ in pilots.indices] == [[0, 1, 2, 3], [0, 2]]
    assert [o.tolist() for _, o in pilots.indices] == [[0, 1, 0, 1], [0, 0]]
    # self-attention: learned queries never see pilots, groups never see each other
    blocked = torch.isinf(pilots.self_attn_bias)
    assert blocked[4:, :4].all() and not blocked[4:, 4:].any() and not blocked[:4, 4:].any()
    assert blocked[:2, 2:4].all() and blocked[2:4, :2].all()
    assert not blocked[:2, :2].any() and not blocked[2:4, 2:4].any()


def test_noise_flips_labels_and_points_only_in_training() -> None:
    torch.manual_seed(0)
    piloting = MaskPiloting(3, 8, {"label_noise": 1.0, "point_noise": 0.5})
    targets = [Mask2FormerTargets(torch.zeros(200, dtype=torch.long), torch.ones(200, 8, 8))]
    pilots = piloting(targets, [(8, 8)], num_queries=1)
    assert pilots is not None
    emb = piloting.label_embed.weight
    changed = (pilots.content[0] - emb[0]).abs().sum(-1) > 0
    assert 0.5 < changed.float().mean() < 0.8  # random among 3 classes: 2/3 differ
    # the object covers the whole map: each cell flips with probability 0.5 x area / cells = 0.5
    assert 0.4 < pilots.blocked[0].float().mean() < 0.6
    grouped = MaskPiloting(3, 8, {"groups": 2, "point_noise": 0.5})(targets[:1], [(8, 8)], num_queries=1)
    assert grouped is not None  # each group draws its own noise
    assert not torch.equal(grouped.blocked[0][0, :200], grouped.blocked[0][0, 200:])
    piloting.eval()
    clean = piloting(targets, [(8, 8)], num_queries=1)
    assert clean is not None
    assert torch.equal(clean.content[0], emb[0].expand(200, -1)) and not clean.blocked[0].any()


def test_learned_queries_do_not_see_the_pilots() -> None:
    """The learned queries' predictions are the plain forward's: piloting changes only training losses."""
    model = _piloted_model(groups=2, label_noise=0.3)
    model.train()
    batch = make_batch([inst for inst in _instances()])
    targets = Mask2FormerTargets.from_batch(batch.instances, ("color",))
    piloted = model.predict_outputs(batch.images, targets=targets)
    plain = model.predict_outputs(batch.images)
    assert piloted.pilots is not None and plain.pilots is None
    assert len(piloted.pilots.layers) == len(piloted.layers) == len(plain.layers)
    for a, b in zip(piloted.layers, plain.layers):
        assert a.class_logits.shape == b.class_logits.shape
        torch.testing.assert_close(a.class_logits, b.class_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.mask_logits, b.mask_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            a.attribute_logits["color"], b.attribute_logits["color"], rtol=1e-5, atol=1e-5
        )
    # ...while the pilots' predictions depend on where their ground truth lies
    moved = [t for t in targets]
    moved[1] = Mask2FormerTargets(moved[1].labels, moved[1].masks.flip(-1), moved[1].attributes)
    torch.manual_seed(1)
    again = model.predict_outputs(batch.images, targets=moved)
    assert again.pilots is not None
    assert not torch.allclose(
        again.pilots.layers[-1].mask_logits[1], piloted.pilots.layers[-1].mask_logits[1]
    )


def _instances() -> list:
    return [
        make_instances([(0, 0, 20, 20), (30, 30, 60, 50)], [0, 2], 64, color=[1, 3]),
        make_instances([(5, 5, 40, 40)], [1], 64, color=[-1]),
    ]


def test_pilot_losses_are_named_weighted_and_reach_the_label_embedding() -> None:
    model = _piloted_model(groups=2, loss_weight=0.5)
    model.train()
    torch.manual_seed(0)
    losses = model(make_batch(_instances()), mode="loss")
    base = {k for k in losses if "_mp" not in k}
    assert {k.replace("_mp", "") for k in losses if "_mp" in k} == base  # every loss, every layer
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grad = model.decoder.piloting.label_embed.weight.grad
    assert grad is not None and grad[:3].abs().sum() > 0
    # loss_weight scales the pilot losses only
    model.zero_grad()
    model.decoder.piloting.loss_weight = 1.0
    torch.manual_seed(0)
    double = model(make_batch(_instances()), mode="loss")
    torch.testing.assert_close(double["loss_cls_mp"], 2 * losses["loss_cls_mp"])
    torch.testing.assert_close(double["loss_cls"], losses["loss_cls"])


def test_batch_without_objects_and_inference_build_no_pilots() -> None:
    model = _piloted_model()
    model.train()
    empty = make_instances([], [], 64, color=[])
    losses = model(make_batch([empty, empty]), mode="loss")
    assert not any("_mp" in k for k in losses) and all(torch.isfinite(v) for v in losses.values())
    model.eval()
    preds = model(make_batch(_instances()), mode="predict")
    assert len(preds) == 2


def test_settings_are_checked() -> None:
    with pytest.raises(ModelError, match="unknown key 'group'"):
        MaskPilotingConfig.of({"group": 2})
    with pytest.raises(ModelError, match="label_noise: expected a value in"):
        MaskPilotingConfig(label_noise=1.5)
    with pytest.raises(ModelError, match="groups: expected an integer >= 1"):
        MaskPilotingConfig(groups=0)
