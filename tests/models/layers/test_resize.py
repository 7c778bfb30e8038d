"""resize_bilinear: the matmul path equals F.interpolate (values and gradients); export keeps Resize."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from masklab.errors import ModelError
from masklab.models.layers.resize import BilinearUpsample, resize_bilinear


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((2, 5, 4, 4), (32, 32)),
        ((2, 3, 5, 7), (11, 13)),
        ((2, 3, 12, 9), (5, 4)),
        ((1, 1, 3, 3), (7, 2)),
        ((2, 16, 5, 4), (9, 11)),
    ],
    ids=["up8", "odd", "down", "one-channel", "wide"],
)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_values_and_gradients_equal_interpolate(
    shape, size, align_corners: bool, channels_last: bool
) -> None:
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ref = F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
    out = resize_bilinear(x, size, align_corners)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(ref)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    (out_grad,) = torch.autograd.grad(out, x, grad)
    torch.testing.assert_close(out_grad, ref_grad, rtol=0, atol=1e-12)
    if channels_last and shape[1] >= 16:  # the NHWC path keeps the layout (no copy, no slow strided adds)
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_the_matmul_path_is_taken_only_when_training_on_cpu() -> None:
    """Under autograd on the CPU the graph holds matrix products, not upsample_bilinear2d."""
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    assert "Upsample" not in type(resize_bilinear(x, (8, 8)).grad_fn).__name__
    with torch.no_grad():
        assert resize_bilinear(x, (8, 8)).grad_fn is None
    big = torch.randn(1, 2, 65, 65, requires_grad=True)  # past 64 a side the kernel is cheaper
    assert "Upsample" in type(resize_bilinear(big, (130, 130)).grad_fn).__name__


def test_tracing_keeps_the_interpolate_op() -> None:
    """ONNX export and tracing must see a Resize with dynamic sizes, not baked matrices."""

    class Up(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return resize_bilinear(x * self.w, (x.shape[-2] * 2, x.shape[-1] * 2))

    traced = torch.jit.trace(Up(), torch.randn(1, 2, 4, 4))
    assert "upsample_bilinear2d" in str(traced.graph)
    assert "matmul" not in str(traced.graph)


def test_same_size_returns_the_input_when_training() -> None:
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    assert resize_bilinear(x, (4, 4)) is x
    with torch.no_grad():
        torch.testing.assert_close(resize_bilinear(x, (4, 4)), x)


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_upsample_equals_nn_upsample(align_corners: bool) -> None:
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=align_corners)(x)
    torch.testing.assert_close(BilinearUpsample(2, align_corners)(x), ref, rtol=0, atol=1e-12)
    with pytest.raises(ModelError, match="positive integer"):
        BilinearUpsample(1.5)  # type: ignore[arg-type]
