"""The speed-ups of issue #6 compute what the plain code computes: caches, batch-first attention, batched matching."""

import torch
from torch import nn

from masklab.models.layers.position_encoding import PositionEmbeddingSine
from masklab.models.mask2former.decoder import downsample_bilinear, multihead_attention
from masklab.models.mask2former.matcher import Mask2FormerMatcher
from masklab.models.mask2former.outputs import Mask2FormerLayerOutput
from masklab.models.mask2former.point_sampling import (
    point_sample,
    point_sample_channels,
    uncertain_point_coords,
)
from masklab.models.mask2former.position_cache import (
    TensorCache,
    level_reference_points,
    sine_position_tokens,
)
from masklab.models.mask2former.targets import Mask2FormerTargets

from .m2f_tiny import build_tiny


def test_cached_position_tokens_equal_a_fresh_computation_per_size() -> None:
    pe = PositionEmbeddingSine(16, normalize=True)
    cache = TensorCache(lambda h, w, dtype, device: sine_position_tokens(pe, h, w, dtype, device))
    for h, w in [(4, 6), (8, 8), (4, 6)]:
        fresh = pe(torch.zeros(2, 3, h, w)).flatten(2).transpose(1, 2)
        cached = cache(h, w, torch.float32, torch.device("cpu"))
        assert cached.shape == (1, h * w, 32)
        assert torch.equal(cached.expand(2, -1, -1), fresh)
    assert list(cache.entries) == [
        (8, 8, torch.float32, torch.device("cpu")),
        (4, 6, torch.float32, torch.device("cpu")),
    ]
    assert cache(4, 6, torch.float32, torch.device("cpu")) is cache(4, 6, torch.float32, torch.device("cpu"))


def test_cache_is_bounded_and_drops_the_oldest() -> None:
    calls = []
    cache = TensorCache(lambda n: calls.append(n) or torch.full((1,), float(n)), max_entries=2)
    for n in (1, 2, 1, 3):
        assert cache(n).item() == n
    assert list(cache.entries) == [(1,), (3,)]  # 2 was least recently used
    assert calls == [1, 2, 3]


def test_entry_made_in_inference_mode_serves_a_training_step() -> None:
    torch.manual_seed(0)
    model = build_tiny()
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.inference_mode():
        model.predict_outputs(x)
    model.train()
    out = model.predict_outputs(x)  # the cached tokens must not be inference tensors
    out.last.mask_logits.sum().backward()
    assert model.pixel_decoder.level_embed.grad is not None


def test_different_input_sizes_get_their_own_entries() -> None:
    torch.manual_seed(0)
    model = build_tiny().eval()
    with torch.no_grad():
        model.predict_outputs(torch.randn(1, 3, 64, 64))
        model.predict_outputs(torch.randn(1, 3, 96, 64))
    sizes = {key[:2] for key in model.pixel_decoder.position_tokens.entries}
    assert sizes == {(2, 2), (4, 4), (8, 8), (3, 2), (6, 4), (12, 8)}
    shapes = {key[0] for key in model.pixel_decoder.reference_points.entries}
    assert shapes == {((2, 2), (4, 4), (8, 8)), ((3, 2), (6, 4), (12, 8))}
    assert {key[:2] for key in model.decoder.position_tokens.entries} == sizes
    ref = model.pixel_decoder.reference_points(((3, 2), (6, 4), (12, 8)), torch.float32, torch.device("cpu"))
    assert torch.equal(
        ref, level_reference_points(((3, 2), (6, 4), (12, 8)), torch.float32, torch.device("cpu"))
    )
    assert ref.shape == (6 + 24 + 96, 2)


def test_cached_model_output_equals_uncached_model_output() -> None:
    torch.manual_seed(0)
    model = build_tiny().eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        first = model.predict_outputs(x).last.mask_logits
        model.pixel_decoder.position_tokens.clear()
        model.pixel_decoder.reference_points.clear()
        model.decoder.position_tokens.clear()
        again = model.predict_outputs(x).last.mask_logits
    assert torch.equal(first, again)


def test_batch_first_attention_equals_multihead_attention_module() -> None:
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(32, 4, batch_first=True)
    q = torch.randn(2, 5, 32, requires_grad=True)
    k = torch.randn(2, 7, 32)
    v = torch.randn(2, 7, 32)
    blocked = torch.rand(2, 5, 7) > 0.5
    blocked[:, :, 0] = False  # no fully blocked row
    ref = attn(q, k, v, attn_mask=blocked.repeat_interleave(4, 0), need_weights=False)[0]
    (grad_ref,) = torch.autograd.grad(ref.square().sum(), q)
    bias = torch.zeros(2, 1, 5, 7).masked_fill_(blocked.unsqueeze(1), float("-inf"))
    out = multihead_attention(attn, q, k, v, bias)
    (grad,) = torch.autograd.grad(out.square().sum(), q)
    assert torch.equal(out, ref)
    torch.testing.assert_close(grad, grad_ref)


def _layer_output(b: int, q: int) -> Mask2FormerLayerOutput:
    g = torch.Generator().manual_seed(3)
    return Mask2FormerLayerOutput(
        torch.randn(b, q, 4, generator=g),
        torch.randn(b, q, 16, 16, generator=g),
        {"color": torch.randn(b, q, 3, generator=g)},
    )


def test_batched_cost_terms_equal_per_image_cost_terms() -> None:
    from masklab.models.mask2former.attribute_spec import AttributeSpec

    out = _layer_output(3, 6)
    targets = [
        Mask2FormerTargets(
            labels=torch.tensor(labels),
            masks=(torch.rand(len(labels), 64, 64, generator=torch.Generator().manual_seed(i)) > 0.5).float(),
            attributes={"color": torch.tensor(colors)},
        )
        for i, (labels, colors) in enumerate([([0, 2], [1, -1]), ([1], [0]), ([2, 1, 0], [0, 1, 1])])
    ]
    matcher = Mask2FormerMatcher(attributes=(AttributeSpec("color", 2),), num_points=50)
    torch.manual_seed(7)
    one_by_one = [matcher.cost_terms(out, i, t) for i, t in enumerate(targets)]
    torch.manual_seed(7)
    batched, sizes = matcher.padded_cost_terms(out, [0, 1, 2], targets)
    torch.manual_seed(7)
    subset, _ = matcher.padded_cost_terms(out, [2], targets[2:])
    assert sizes == [2, 1, 3]
    for i, a in enumerate(one_by_one):
        assert a.keys() == batched.keys() == {"class", "mask", "dice", "attr_color"}
        for name in a:  # sums over points may group differently with the batch size: float tolerance
            torch.testing.assert_close(
                a[name], batched[name][i, :, : sizes[i]], rtol=1e-6, atol=1e-6, msg=name
            )
    torch.manual_seed(7)
    first = matcher.cost_terms(out, 2, targets[2])
    for name in first:
        torch.testing.assert_close(first[name], subset[name][0], rtol=1e-6, atol=1e-6, msg=name)


def test_padded_cost_terms_equal_a_per_image_reference() -> None:
    """The batched, padded costs against the definitions written out per image (explicit (Q, G, P) BCE)."""
    import torch.nn.functional as F

    from masklab.models.mask2former.attribute_spec import AttributeSpec

    out = _layer_output(3, 6)
    sizes = [2, 0, 3]
    targets = [
        Mask2FormerTargets(
            labels=torch.arange(g) % 4,
            masks=(torch.rand(g, 64, 64, generator=torch.Generator().manual_seed(i)) > 0.5).float(),
            attributes={"color": torch.tensor([-1, 0, 1][:g], dtype=torch.long)},
        )
        for i, g in enumerate(sizes)
    ]
    matcher = Mask2FormerMatcher(
        class_weight=2.0,
        mask_weight=5.0,
        dice_weight=3.0,
        attributes=(AttributeSpec("color", 2, cost_weight=1.5),),
        num_points=40,
    )
    torch.manual_seed(11)
    terms, got_sizes = matcher.padded_cost_terms(out, [0, 1, 2], targets)
    assert got_sizes == sizes and terms["mask"].shape == (3, 6, 3)
    torch.manual_seed(11)
    coords = [torch.empty(40, 2).uniform_() for _ in sizes]  # one draw per image, in image order
    for i, (t, g) in enumerate(zip(targets, sizes)):
        pred = point_sample(out.mask_logits[i : i + 1], coords[i][None])[0]  # (Q, P)
        tgt = point_sample(t.masks[None], coords[i][None])[0]  # (G, P)
        bce = F.binary_cross_entropy_with_logits(
            pred[:, None].expand(-1, g, -1), tgt[None].expand(6, -1, -1), reduction="none"
        ).mean(-1)
        p = pred.sigmoid()
        dice = 1 - (2 * (p[:, None] * tgt[None]).sum(-1) + 1) / (p.sum(-1)[:, None] + tgt.sum(-1)[None] + 1)
        cls = -2.0 * out.class_logits[i].softmax(-1)[:, t.labels]
        values = t.attributes["color"]
        attr = -1.5 * out.attribute_logits["color"][i].softmax(-1)[:, values.clamp(min=0)] * (values >= 0)
        expected = {"class": cls, "mask": 5.0 * bce, "dice": 3.0 * dice, "attr_color": attr}
        for name, ref in expected.items():
            torch.testing.assert_close(terms[name][i, :, :g], ref, rtol=1e-5, atol=1e-5, msg=name)


def test_gathered_point_sample_equals_grid_sample() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 5, 7, 9, generator=g, dtype=torch.float64)
    coords = torch.rand(3, 40, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3  # some off the map
    edges = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.5, 1.0], [4.0, -3.0]], dtype=torch.float64)
    coords[:, :5] = edges
    got = point_sample_channels(maps, coords)
    assert got.shape == (3, 5, 40)
    torch.testing.assert_close(got, point_sample(maps, coords), atol=1e-12, rtol=1e-12)


def test_uncertain_points_are_the_most_uncertain_candidates() -> None:
    logits = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    got = uncertain_point_coords(logits, 20, 3.0, 0.75, generator=g)
    g = torch.Generator().manual_seed(1)
    candidates = torch.rand(4, 60, 2, generator=g)
    uncertainty = -point_sample(logits, candidates).abs().squeeze(1)
    top = torch.gather(candidates, 1, uncertainty.topk(15, dim=1).indices.unsqueeze(-1).expand(-1, -1, 2))
    random = torch.rand(4, 5, 2, generator=g)
    assert torch.equal(got[:, 15:], random)
    for i in range(4):  # the same set of points, in any order
        assert torch.equal(got[i, :15].unique(dim=0), top[i].unique(dim=0))


def test_strided_resize_equals_bilinear_interpolation() -> None:
    g = torch.Generator().manual_seed(0)
    cases = [
        ((2, 5, 64, 64), (8, 8)),
        ((2, 5, 64, 96), (32, 24)),
        ((1, 3, 24, 36), (8, 12)),
        ((1, 2, 8, 8), (16, 16)),
    ]
    for shape, size in cases:  # even factors take the strided path; odd factors and upsampling fall back
        x = torch.randn(shape, generator=g) * 5
        ref = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(downsample_bilinear(x, size), ref, rtol=1e-6, atol=1e-6)


def test_inference_decoder_path_equals_the_all_layers_final_prediction() -> None:
    """``all_layers=False`` (predict) forms the attention masks from resized mask features instead of
    resized full-resolution logits: equal by linearity, so the final prediction is the same."""
    torch.manual_seed(0)
    model = build_tiny(num_layers=4, num_queries=8).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = model.predict_outputs(images)
        fast = model.predict_outputs(images, all_layers=False)
    assert len(full.layers) == 5 and len(fast.layers) == 1
    torch.testing.assert_close(fast.last.class_logits, full.last.class_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.last.mask_logits, full.last.mask_logits, rtol=1e-4, atol=1e-4)
    for name, logits in full.last.attribute_logits.items():
        torch.testing.assert_close(fast.last.attribute_logits[name], logits, rtol=1e-4, atol=1e-5)


def test_mask_logits_of_resized_features_equal_resized_mask_logits() -> None:
    torch.manual_seed(1)
    embed = torch.randn(2, 10, 16)
    features = torch.randn(2, 16, 32, 32)
    for size in [(16, 16), (8, 8), (4, 4), (12, 12)]:  # even factors (strided views) and the kernel
        logits = torch.bmm(embed, features.flatten(2)).view(2, 10, 32, 32)
        a = downsample_bilinear(logits, size).flatten(2)
        b = torch.bmm(embed, downsample_bilinear(features, size).flatten(2))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
