"""LabelPngFormatter across 2 gloo processes: each rank writes its share, every rank reports the total."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from masklab.evaluation.format_only import LabelPngFormatter
from masklab.structures.predictions import SemanticPrediction
from masklab.structures.sample import SampleMeta
from tests.two_ranks import metrics_per_rank

NAMES = [f"img{i}.png" for i in range(5)]


def _written(rank: int, world: int) -> dict[str, float]:
    """Write images ``rank::world``; the count after ``compute`` (summed over ranks)."""
    with tempfile.TemporaryDirectory() as folder:
        formatter = LabelPngFormatter(Path(folder), NAMES, torch.arange(3), "training labels 0..2")
        preds = [
            SemanticPrediction(
                label_map=torch.full((4, 6), i % 3, dtype=torch.int64),
                meta=SampleMeta(image_id=i, file_name=NAMES[i], ori_shape=(4, 6), img_shape=(4, 6)),
            )
            for i in range(rank, len(NAMES), world)
        ]
        formatter.process(None, preds)
        formatter.compute()
        return {"written": float(formatter.written)}


@pytest.mark.slow
@pytest.mark.distributed
def test_every_rank_reports_the_files_all_ranks_wrote(tmp_path: Path) -> None:
    ranks = metrics_per_rank(_written, tmp_path, 2)
    assert ranks == [{"written": 5.0}, {"written": 5.0}]
    assert _written(0, 1) == {"written": 5.0}
