import pytest
import torch

from masklab.models.layers.ms_deform_attn import (
    MSDeformAttn,
    ms_deform_attn_core,
    ms_deform_attn_core_grid_sample,
    ms_deform_attn_offsets,
)


def _bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Manual bilinear read of (C, H, W) at normalised (x, y), zero outside, align_corners=False."""
    c, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = int(torch.floor(torch.tensor(px))), int(torch.floor(torch.tensor(py)))
    out = torch.zeros(c, dtype=img.dtype)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < h and 0 <= xx < w:
                wgt = (1 - abs(px - xx)) * (1 - abs(py - yy))
                out += wgt * img[:, yy, xx]
    return out


def _slow_reference(value, shapes, locations, weights):
    b, s, m, ch = value.shape
    _, lq, _, levels, points, _ = locations.shape
    out = torch.zeros(b, lq, m, ch, dtype=value.dtype)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    for bi in range(b):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    img = value[bi, starts[lvl] : starts[lvl + 1], head].T.reshape(ch, h, w)
                    for p in range(points):
                        x, y = locations[bi, q, head, lvl, p].tolist()
                        out[bi, q, head] += weights[bi, q, head, lvl, p] * _bilinear(img, x, y)
    return out.reshape(b, lq, m * ch)


def _inputs(dtype: torch.dtype = torch.float64, spread: float = 1.4, seed: int = 0):  # noqa: ANN202
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (2, 3), (5, 2)]
    b, m, ch, lq, p = 2, 2, 3, 4, 3
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, m, ch, generator=g, dtype=dtype)
    # Some locations fall outside [0, 1] to exercise zero padding.
    locations = torch.rand(b, lq, m, len(shapes), p, 2, generator=g, dtype=dtype) * spread + (1 - spread) / 2
    weights = torch.rand(b, lq, m, len(shapes), p, generator=g, dtype=dtype)
    return value, shapes, locations, weights


@pytest.mark.parametrize("core", [ms_deform_attn_core, ms_deform_attn_core_grid_sample])
def test_core_matches_slow_reference(core) -> None:  # noqa: ANN001
    value, shapes, locations, weights = _inputs()
    fast = core(value, shapes, locations, weights)
    slow = _slow_reference(value, shapes, locations, weights)
    assert fast.shape == (2, 4, 2 * 3)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spread", [1.4, 4.0])  # 4.0: many points wholly off the map (clamped)
def test_gather_core_gradients_match_grid_sample(spread: float) -> None:
    value, shapes, locations, weights = _inputs(spread=spread)
    for t in (value, locations, weights):
        t.requires_grad_()
    grad_out = torch.randn(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(
        ms_deform_attn_core(value, shapes, locations, weights), (value, locations, weights), grad_out
    )
    ref = torch.autograd.grad(
        ms_deform_attn_core_grid_sample(value, shapes, locations, weights),
        (value, locations, weights),
        grad_out,
    )
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_gather_core_gradcheck() -> None:
    value, shapes, locations, weights = _inputs(seed=2)
    args = (value.requires_grad_(), shapes, locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(ms_deform_attn_core, args, fast_mode=True)


def test_gather_core_float32_and_inference_mode_match_grid_sample() -> None:
    g = torch.Generator().manual_seed(3)
    shapes = [(4, 4), (8, 8), (16, 16)]
    s = sum(h * w for h, w in shapes)
    value = torch.randn(2, s, 8, 32, generator=g)
    locations = torch.rand(2, 50, 8, 3, 4, 2, generator=g) * 1.2 - 0.1
    weights = torch.rand(2, 50, 8, 3, 4, generator=g).softmax(-1)
    ref = ms_deform_attn_core_grid_sample(value, shapes, locations, weights)
    with torch.inference_mode():
        got = ms_deform_attn_core(value, shapes, locations, weights)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_module_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dim=8, num_heads=2, num_levels=2, num_points=2)
    # Perturb the zero-init weights so the output depends on the query.
    torch.nn.init.normal_(attn.attention_weights.weight)
    shapes = [(4, 4), (2, 2)]
    value = torch.randn(2, 20, 8, requires_grad=True)
    query = torch.randn(2, 5, 8, requires_grad=True)
    ref = torch.rand(5, 2)
    out = attn(query, ref, value, shapes)
    assert out.shape == (2, 5, 8)
    out.square().sum().backward()
    assert value.grad is not None and value.grad.abs().sum() > 0
    assert query.grad is not None and query.grad.abs().sum() > 0


@pytest.mark.parametrize("ref_batch", [2, 1])  # per-image or shared reference points
def test_offsets_entry_equals_core_at_formed_locations(ref_batch: int) -> None:
    value, shapes, _, weights = _inputs()
    g = torch.Generator().manual_seed(4)
    ref = torch.rand(ref_batch, 4, 2, generator=g, dtype=torch.float64)
    offsets = torch.randn(2, 4, 2, 3, 3, 2, generator=g, dtype=torch.float64) * 2
    for t in (value, offsets, weights):
        t.requires_grad_()
    wh = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)
    locations = ref[:, :, None, None, None, :] + offsets / wh[:, None, :]
    got = ms_deform_attn_offsets(value, shapes, ref, offsets, weights)
    ref_out = ms_deform_attn_core_grid_sample(value, shapes, locations, weights)
    torch.testing.assert_close(got, ref_out, atol=1e-10, rtol=1e-10)
    grad_out = torch.randn(got.shape, generator=g, dtype=torch.float64)
    for a, b in zip(
        torch.autograd.grad(got, (value, offsets, weights), grad_out),
        torch.autograd.grad(ref_out, (value, offsets, weights), grad_out),
    ):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
