"""``softmax_last_dim``: torch's softmax values and gradients, through element-wise passes on the CPU."""

from __future__ import annotations

import pytest
import torch

from masklab.models.layers.small_softmax import softmax_last_dim


@pytest.mark.parametrize("shape", [(2, 5, 3, 12), (7, 1), (4, 16)])
def test_values_and_gradients_equal_torch_softmax(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = (torch.randn(*shape, dtype=torch.float64) * 4).requires_grad_()
    grad = torch.randn(*shape, dtype=torch.float64)
    ours = softmax_last_dim(x)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    ref = x.softmax(-1)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def test_gradcheck_and_large_logits_stay_finite() -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 4, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(softmax_last_dim, (x,))
    big = torch.tensor([[1000.0, 999.0, -1000.0]])  # exp would overflow without the max shift
    out = softmax_last_dim(big)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, big.softmax(-1))


def test_inference_mode_and_input_left_unchanged() -> None:
    x = torch.randn(5, 12)
    before = x.clone()
    with torch.inference_mode():
        out = softmax_last_dim(x)
    torch.testing.assert_close(out, before.softmax(-1))
    assert torch.equal(x, before)
