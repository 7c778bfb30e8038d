"""FSDP (``runtime.strategy: fsdp``, FSDP2 ``fully_shard``) on CPU/gloo with 2 processes: the same
math as DDP, full checkpoints a plain model loads, evaluation on gathered parameters, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TINY = Path(__file__).resolve().parents[1] / "cli" / "configs" / "tiny_fcn.yaml"


def torchrun(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node 2 -m masklab ARGS`` with one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "masklab", *args]  # fmt: skip
    # A session of its own, so a hang can be ended together with the workers torchrun started.
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, (out[-2000:], err[-3000:])
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def train_records(work: Path, mode: str = "train") -> dict[int, dict]:
    """Last record per iteration of ``log.jsonl`` (a resumed run re-logs nothing here)."""
    out: dict[int, dict] = {}
    for r in map(json.loads, (work / "log.jsonl").read_text().splitlines()):
        if r.get("mode") == mode:
            out[r["iteration"]] = r
    return out


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_matches_ddp_checkpoints_load_plain_and_resume(tmp_path: Path) -> None:
    from masklab.cli.main import main
    from masklab.config.assemble import build_model, resolve
    from masklab.data.synthetic import synthesize
    from masklab.engine.checkpoint import load_checkpoint

    root = tmp_path / "data"
    # 3 val images: rank 0 evaluates 2, rank 1 evaluates 1 (uneven: no collective may run per batch).
    synthesize(root, num_train=4, num_val=3, size=64, seed=0, max_objects=2)
    common = [str(TINY), f"dataset.root={root}", "train.max_iters=3", "train.checkpoint_interval=2",
              "train.val_interval=2", "train.batch_size=1", "--no-progress"]  # fmt: skip
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    torchrun(["train", *common, "--work-dir", str(ddp)])
    proc = torchrun(["train", *common, "runtime.strategy=fsdp", "--work-dir", str(fsdp)])
    assert proc.stdout.count("done:") == 1  # rank 0 only

    # Same losses and the same evaluation metrics as DDP (evaluation on the gathered parameters).
    a, b = train_records(ddp), train_records(fsdp)
    assert a.keys() == b.keys() == {1, 2, 3}
    assert all(abs(a[k]["loss"] - b[k]["loss"]) < 1e-5 for k in a), (a, b)
    va, vb = train_records(ddp, "val"), train_records(fsdp, "val")
    assert va.keys() == vb.keys() and va, (va, vb)
    for k in va:
        assert va[k]["mIoU"] == pytest.approx(vb[k]["mIoU"], abs=1e-6)

    # The FSDP checkpoint is a full, bare-model checkpoint: same keys and values as DDP's
    # (unwrapped), optimizer state in the usual integer-keyed layout, loadable by a plain model.
    ca = load_checkpoint(ddp / "checkpoints" / "iter_0000003.pth")
    cb = load_checkpoint(fsdp / "checkpoints" / "iter_0000003.pth")
    assert ca["model"].keys() == cb["model"].keys()
    assert all(torch.allclose(ca["model"][k], cb["model"][k], atol=1e-5) for k in ca["model"])
    assert not any(type(v).__name__ == "DTensor" for v in cb["model"].values())
    assert sorted(cb["optimizer"]["state"]) == sorted(ca["optimizer"]["state"])
    for i, s in ca["optimizer"]["state"].items():
        assert torch.allclose(s["momentum_buffer"], cb["optimizer"]["state"][i]["momentum_buffer"], atol=1e-5)
    from masklab.config import registries
    from masklab.config.assemble import build_dataset, dataset_meta

    registries.populate()
    rc = resolve(str(TINY), [f"dataset.root={root}"])
    plain = build_model(rc, dataset_meta(build_dataset(rc, "train")))
    plain.load_state_dict(cb["model"], strict=True)

    # Resume under FSDP from iteration 2 continues exactly: iteration 3 as in the uninterrupted run.
    resumed = tmp_path / "resumed"
    torchrun(["train", *common, "runtime.strategy=fsdp", "--work-dir", str(resumed),
              "--resume", str(fsdp / "checkpoints" / "iter_0000002.pth")])  # fmt: skip
    r = train_records(resumed)
    assert r.keys() == {3} and abs(r[3]["loss"] - b[3]["loss"]) < 1e-5
    cr = load_checkpoint(resumed / "checkpoints" / "iter_0000003.pth")
    assert all(torch.allclose(cr["model"][k], cb["model"][k], atol=1e-5) for k in cb["model"])

    # And a single process resumes the FSDP checkpoint (batch 2 = 2 x 1): same iteration 3.
    single = tmp_path / "single"
    assert main(["train", *common, "train.batch_size=2", "--work-dir", str(single),
                 "--resume", str(fsdp / "checkpoints" / "iter_0000002.pth")]) == 0  # fmt: skip
    s = train_records(single)
    assert abs(s[3]["loss"] - b[3]["loss"]) < 1e-5


def test_fsdp_helpers_without_a_process_group() -> None:
    """Without a process group, strategy fsdp is a no-op (one process trains unwrapped)."""
    from masklab.engine.distributed import full_parameters, is_fsdp, wrap_model

    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, "fsdp") is model and not is_fsdp(model)
    with full_parameters(model) as m:
        assert m is model
