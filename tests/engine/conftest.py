"""Engine tests run tiny models: one intra-op thread avoids oversubscribing the shared CPU cores,
where thread hand-offs cost more than the ops themselves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
