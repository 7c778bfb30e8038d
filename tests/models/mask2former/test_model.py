import math

import pytest
import torch

from masklab.errors import ModelError
from masklab.models.mask2former import AttributeSpec, Mask2Former
from masklab.structures import InstancePrediction, Instances, SemanticPrediction

from .m2f_tiny import build_tiny, make_batch, make_instances


def _two_images() -> list[Instances]:
    return [
        make_instances([(4, 4, 20, 24), (30, 30, 60, 50)], [0, 2], 64, color=[1, 3]),
        make_instances([(10, 8, 40, 40)], [1], 64, color=[-1]),
    ]


def test_output_shapes_have_no_object_slots(tiny_model: Mask2Former) -> None:
    out = tiny_model.predict_outputs(torch.randn(2, 3, 64, 64))
    assert len(out.layers) == 3  # query input + 2 decoder layers
    for layer in out.layers:
        assert layer.class_logits.shape == (2, 6, 3 + 1)
        assert layer.mask_logits.shape == (2, 6, 16, 16)
        assert set(layer.attribute_logits) == {"color"}
        assert layer.attribute_logits["color"].shape == (2, 6, 4 + 1)


def test_loss_names_finite_and_every_layer_supervised(tiny_model: Mask2Former) -> None:
    losses = tiny_model(make_batch(_two_images()), mode="loss")
    base = ["loss_cls", "loss_mask", "loss_dice", "loss_attr_color"]
    expected = set(base) | {f"{n}_d{i}" for n in base for i in range(2)}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in tiny_model.decoder.heads.attribute_embed.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_empty_image_batch_gives_finite_losses_and_gradients(tiny_model: Mask2Former) -> None:
    batch = make_batch([Instances.empty(64, 64), Instances.empty(64, 64, ("color",))])
    losses = tiny_model(batch, mode="loss")
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grad = tiny_model.decoder.heads.class_embed.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # All queries are "no object": the class loss is positive and finite.
    assert losses["loss_cls"] > 0


@pytest.mark.parametrize(
    ("instances", "pattern"),
    [
        (make_instances([(0, 0, 8, 8)], [3], 64, color=[0]), r"class label 3 outside \[0, 3\)"),
        (make_instances([(0, 0, 8, 8)], [0], 64, color=[4]), r"attribute 'color' value 4 outside \[0, 4\)"),
        (make_instances([(0, 0, 8, 8)], [0], 64, color=[-2]), r"attribute 'color' value -2"),
        (make_instances([(0, 0, 8, 8)], [0], 64), r"lack attribute 'color'"),
        (make_instances([(0, 0, 8, 8)], [0], 64, color=[0], shade=[1]), r"'shade' is not declared"),
    ],
)
def test_bad_labels_fail_before_forward(tiny_model: Mask2Former, instances: Instances, pattern: str) -> None:
    calls = []
    tiny_model.backbone.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ModelError, match=pattern) as err:
        tiny_model(make_batch([instances]), mode="loss")
    assert "\n" not in str(err.value)
    assert not calls  # raised before any forward


def test_backbone_without_required_strides_is_rejected() -> None:
    model_backbone = build_tiny().backbone
    model_backbone.feature_info.strides = [2, 4, 8, 16]
    with pytest.raises(ModelError, match="strides"):
        Mask2Former(model_backbone, num_classes=2, data_preprocessor=torch.nn.Identity())


def test_predict_instance_topk_and_original_resolution() -> None:
    torch.manual_seed(0)
    model = build_tiny(test_topk=5).eval()
    batch = make_batch(_two_images())
    batch.metas[0].img_shape = (60, 48)
    batch.metas[0].ori_shape = (30, 24)
    preds = model(batch, mode="predict")
    assert len(preds) == 2 and all(isinstance(p, InstancePrediction) for p in preds)
    assert len(preds[0]) == 5 == model.test_topk
    assert preds[0].masks.shape == (5, 30, 24) and preds[1].masks.shape == (5, 64, 64)
    assert preds[0].attributes["color"].labels.shape == (5,)
    assert (preds[0].scores[:-1] >= preds[0].scores[1:]).all()


def test_decoder_attends_the_configured_strides() -> None:
    torch.manual_seed(0)
    model = build_tiny(pixel_kwargs={"out_strides": (16, 8, 4)})
    batch = make_batch(_two_images())
    pixel = model.pixel_decoder(model.backbone(batch.images))
    assert [tuple(f.shape[-2:]) for f in pixel.multi_scale_features] == [(4, 4), (8, 8), (16, 16)]
    assert model.decoder.num_levels == 3
    losses = model(batch, mode="loss")
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():  # the inference shortcut (attention masks from resized features) still agrees
        full = model.predict_outputs(batch.images, all_layers=True).last
        fast = model.predict_outputs(batch.images, all_layers=False).last
    torch.testing.assert_close(fast.mask_logits, full.mask_logits, rtol=1e-4, atol=1e-4)
    for bad in ((8, 16, 32), (32, 2), ()):
        with pytest.raises(ModelError, match="pixel_decoder.out_strides"):
            build_tiny(pixel_kwargs={"out_strides": bad})


def test_predict_semantic_and_panoptic_modes() -> None:
    torch.manual_seed(0)
    sem = build_tiny(test_mode="semantic").eval()(make_batch(_two_images()), mode="predict")
    assert isinstance(sem[0], SemanticPrediction) and sem[0].label_map.shape == (64, 64)
    assert sem[0].logits is not None and sem[0].logits.shape == (3, 64, 64)
    torch.manual_seed(0)
    pan = build_tiny(test_mode="panoptic", object_mask_threshold=0.0, overlap_threshold=0.0).eval()
    pred = pan(make_batch(_two_images()), mode="predict")[0]
    # Panoptic segments never overlap.
    assert pred.masks.sum(0).max() <= 1 if len(pred) else True


def test_bad_test_mode_is_model_error() -> None:
    with pytest.raises(ModelError, match="test_mode"):
        build_tiny(test_mode="boxes")


def test_attribute_head_learns_and_depends_on_input() -> None:
    torch.manual_seed(0)
    model = build_tiny(attributes=(AttributeSpec("color", 3),), num_queries=4, num_layers=1)
    # Same geometry, different attribute per image: only the image content tells them apart.
    inst = [
        make_instances([(4, 4, 20, 20)], [0], 32, color=[0]),
        make_instances([(4, 4, 20, 20)], [0], 32, color=[2]),
    ]
    batch = make_batch(inst, size=32)
    batch.images[0] += 2.0
    batch.images[1] -= 2.0
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = math.inf
    for step in range(30):
        losses = model(batch, mode="loss")
        if step == 0:
            first = float(losses["loss_attr_color"].detach())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert float(losses["loss_attr_color"].detach()) < 0.5 * first
    model.eval()
    preds = model(batch, mode="predict")
    top = [int(p.attributes["color"].labels[0]) for p in preds]
    assert top == [0, 2]
