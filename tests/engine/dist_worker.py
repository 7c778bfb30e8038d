"""Run by test_distributed.py under torchrun (2 processes, gloo): DDP training, reductions, teardown."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from toy import ToyModel, toy_loader  # noqa: E402

from masklab.engine import CheckpointHook, Trainer, init_distributed, teardown, unwrap, wrap_model  # noqa: E402
from masklab.engine.distributed import all_gather_object, all_reduce_dict, barrier  # noqa: E402


def main(work_dir: str) -> None:
    info = init_distributed(device="cpu")  # gloo even on a machine with GPUs
    assert info.is_distributed and info.world_size == 2
    torch.set_num_threads(1)
    torch.manual_seed(0)  # identical initial weights; DDP also broadcasts rank 0's
    model = ToyModel(dropout=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # Each rank reads its own data stream, as a distributed sampler would give it.
    trainer = Trainer(
        wrap_model(model, "ddp", "cpu"),
        optimizer,
        lambda start: toy_loader(start, seed=10 + info.rank),
        3,
        hooks=[CheckpointHook(interval=3)],
        work_dir=work_dir,
        accumulate_steps=2,
        progress=False,
    )
    trainer.train()
    weights = all_gather_object(float(unwrap(trainer.model).cls.weight.detach().sum()))
    reduced = all_reduce_dict({"rank": float(info.rank)})
    barrier()
    result = {
        "weights": weights,
        "reduced": reduced["rank"],
        "losses": trainer.state.losses["loss"] if trainer.state else None,
    }
    Path(work_dir, f"rank{info.rank}.json").write_text(json.dumps(result))
    del model  # teardown needs the last references to the wrapper and its module gone
    teardown(trainer.release_model())


if __name__ == "__main__":
    main(sys.argv[1])
