from collections.abc import Iterator

import pytest
import torch

from masklab.models.mask2former import Mask2Former

from .m2f_tiny import build_tiny


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny tensors on a shared 2-core machine: thread hand-off costs more than it saves.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_model() -> Mask2Former:
    torch.manual_seed(0)
    return build_tiny()
