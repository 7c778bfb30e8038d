"""Resume across world sizes: 2 processes x batch 1 to iteration 2, then 1 process x batch 2 to
iteration 4, equals one process x batch 2 all the way (GroupNorm tiny config, CPU/gloo). The
sampler's global order maps data positions across layouts with the same effective batch; the
optimizer state carries over. A different effective batch still resumes, with a warning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.engine.test_fsdp import TINY, torchrun, train_records


def test_sampler_positions_map_across_world_sizes() -> None:
    """Step k of (W ranks x batch b) covers the same global positions as step k of (1 x W*b)."""
    from itertools import islice

    from masklab.data.samplers import InfiniteSampler

    n, start = 6, 2  # 6 items: steps cross epoch boundaries at uneven places
    one = list(islice(InfiniteSampler(n, seed=3, start_iter=start, batch_size=4), 8))
    ranks = [list(islice(InfiniteSampler(n, seed=3, rank=r, world_size=2, start_iter=start, batch_size=2), 4))
             for r in (0, 1)]  # fmt: skip
    for step in range(2):
        two = {*ranks[0][2 * step : 2 * step + 2], *ranks[1][2 * step : 2 * step + 2]}
        assert sorted(two) == sorted(one[4 * step : 4 * step + 4])


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_run_resumes_in_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from masklab.cli.main import main
    from masklab.data.synthetic import synthesize
    from masklab.engine.checkpoint import load_checkpoint

    root = tmp_path / "data"
    synthesize(root, num_train=6, num_val=2, size=64, seed=0, max_objects=2)
    common = [str(TINY), f"dataset.root={root}", "train.max_iters=4", "train.checkpoint_interval=2",
              "train.val_interval=1000", "--no-progress"]  # fmt: skip
    two = tmp_path / "two"
    torchrun(["train", *common, "train.batch_size=1", "--work-dir", str(two)])
    ckpt2 = two / "checkpoints" / "iter_0000002.pth"
    assert load_checkpoint(ckpt2)["meta"]["world_size"] == 2

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main(["train", *common, "train.batch_size=2", "--work-dir", str(whole)]) == 0
    capsys.readouterr()
    assert (
        main(["train", *common, "train.batch_size=2", "--work-dir", str(resumed), "--resume", str(ckpt2)])
        == 0
    )
    assert "warning" not in capsys.readouterr().out  # same effective batch: nothing to warn about

    a, b = train_records(whole), train_records(resumed)
    assert b.keys() == {3, 4}
    assert all(abs(a[k]["loss"] - b[k]["loss"]) < 1e-5 for k in (3, 4)), (a, b)
    wa = load_checkpoint(whole / "checkpoints" / "iter_0000004.pth")
    wb = load_checkpoint(resumed / "checkpoints" / "iter_0000004.pth")
    assert all(torch.allclose(wa["model"][k], wb["model"][k], atol=1e-5) for k in wa["model"])
    for i, s in wa["optimizer"]["state"].items():  # momentum carried over from the 2-process run
        assert torch.allclose(s["momentum_buffer"], wb["optimizer"]["state"][i]["momentum_buffer"], atol=1e-5)
    # The 2-process run itself agrees too (its iterations 3, 4 after the same checkpoint).
    c = train_records(two)
    assert all(abs(a[k]["loss"] - c[k]["loss"]) < 1e-5 for k in (1, 2, 3, 4)), (a, c)

    # Another effective batch (1 x 1 instead of 2 x 1): resumes, with one warning line.
    other = tmp_path / "other"
    assert (
        main(["train", *common, "train.batch_size=1", "--work-dir", str(other), "--resume", str(ckpt2)]) == 0
    )
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "effective batch from 2" in warnings[0] and "to 1" in warnings[0], warnings
    assert train_records(other).keys() == {3, 4}
