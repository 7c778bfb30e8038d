"""Run a metrics function in 2 gloo processes and compare with one process (tests of evaluators
that reduce across ranks)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

Metrics = Callable[[int, int], dict[str, float]]  # (rank, world) -> metrics of that rank


def _worker(rank: int, metrics: Metrics, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(metrics(rank, world)))
    finally:
        dist.destroy_process_group()


def metrics_per_rank(metrics: Metrics, tmp_path: Path, world: int = 2) -> list[dict[str, float]]:
    """``metrics(rank, world)`` of each of ``world`` spawned processes (a module-level function)."""
    mp.spawn(_worker, args=(metrics, world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]


def same_metrics(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal keys and values, NaN equal to NaN."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)
