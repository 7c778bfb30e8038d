"""``linear_relu``: same values and gradients as ``relu(linear(x))``, without view-rebasing nodes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from masklab.models.layers.linear_relu import linear_relu
from masklab.models.mask2former.heads import MLP


def _graph_names(t: torch.Tensor) -> set[str]:
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return names


def test_values_and_gradients_equal_the_plain_form() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 5).double()
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    y = linear_relu(lin, x)
    ref = F.relu(lin(x))
    assert y.shape == (2, 3, 4, 5) and torch.equal(y, ref)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(y, [x, lin.weight, lin.bias], g)
    grads_ref = torch.autograd.grad(ref, [x, lin.weight, lin.bias], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)


def test_no_copy_slices_in_the_graph() -> None:
    lin = nn.Linear(8, 16)
    x = torch.randn(2, 7, 8, requires_grad=True)
    # The in-place ReLU on F.linear's 3-D output (a view) is what this helper avoids.
    naive = F.relu(lin(x), inplace=True)
    assert "CopySlices" in _graph_names(naive)
    assert not {"CopySlices", "AsStridedBackward0"} & _graph_names(linear_relu(lin, x))
    assert not {"CopySlices", "AsStridedBackward0"} & _graph_names(MLP(8, 8, 4, 3)(x))
