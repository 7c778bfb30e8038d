"""Distributed helpers: single-process fallbacks, and a 2-process gloo run under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from masklab.engine.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_dict,
    init_distributed,
    is_main_process,
    teardown,
    unwrap,
    wrap_model,
)
from masklab.errors import ConfigError


def test_single_process_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert init_distributed() == DistInfo(0, 1, 0, False)
    assert is_main_process()
    assert all_reduce_dict({"a": 2.0}) == {"a": 2.0}
    assert all_gather_object({"x": 1}) == [{"x": 1}]
    model = nn.Linear(2, 2)
    assert wrap_model(model, "ddp") is model and unwrap(model) is model
    with pytest.raises(ConfigError, match="deepspeed"):
        wrap_model(model, "deepspeed")  # type: ignore[arg-type]
    teardown(None)  # no group: nothing to do, no error


def test_sync_bn_converts_every_batchnorm_under_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """runtime.sync_bn (MMSeg's SyncBN norm_cfg) reaches the model; CPU is refused in one line."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    assert wrap_model(model, "ddp", sync_bn=True) is model  # single process: BatchNorm kept
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    monkeypatch.setattr("masklab.engine.distributed.is_initialized", lambda: True)
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", lambda module, device_ids: module)
    with pytest.raises(ConfigError, match=r"runtime.sync_bn: .*CPU"):
        wrap_model(model, "ddp", "cpu", sync_bn=True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    wrapped = wrap_model(model, "ddp", "cuda", sync_bn=True)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in wrapped.modules()) == 2
    assert not any(type(m) is nn.BatchNorm2d for m in wrapped.modules())


def _torchrun_env(monkeypatch: pytest.MonkeyPatch, local_rank: int) -> list[str]:
    """torchrun's variables for rank ``local_rank`` of 2; ``init_process_group`` records its backend."""
    for key, value in {"WORLD_SIZE": "2", "RANK": str(local_rank), "LOCAL_RANK": str(local_rank)}.items():
        monkeypatch.setenv(key, value)
    seen: list[str] = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: seen.append(backend))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    return seen


def test_backend_follows_the_run_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU run on a machine with GPUs joins over gloo; nccl only for a CUDA run."""
    seen = _torchrun_env(monkeypatch, 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: seen.append(f"cuda:{index}"))
    monkeypatch.setattr("masklab.engine.distributed.get_info", lambda: DistInfo(0, 2, 0, True))
    init_distributed(device="cpu")
    init_distributed(device=torch.device("cuda"))
    init_distributed()  # no device given: CUDA when available
    assert seen == ["gloo", "cuda:0", "nccl", "cuda:0", "nccl"]


def test_more_nccl_processes_than_gpus_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _torchrun_env(monkeypatch, 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        ConfigError, match=r"LOCAL_RANK 1 needs a GPU.*1 CUDA device.*nproc-per-node 1.*device=cpu"
    ):
        init_distributed(device="cuda")
    assert seen == []  # refused before joining any group


@pytest.mark.slow
@pytest.mark.distributed
def _run_job(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Run a torchrun job in a session of its own; (exit code, stderr), or (None, stderr) when it
    hung past ``timeout`` and was ended (SIGTERM first: torchrun then ends its workers, which run in
    sessions of their own; SIGKILL if that does not end it)."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
        return None, err


def test_two_process_ddp_training(tmp_path: Path) -> None:
    worker = Path(__file__).with_name("dist_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(worker),
        str(tmp_path),
    ]
    code, err = _run_job(cmd, env, timeout=240)
    assert code is not None, "the 2-process job hung"
    assert code == 0, err[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # DDP kept the replicas identical although each rank saw different data.
    assert results[0]["weights"][0] == results[0]["weights"][1] == results[1]["weights"][0]
    assert results[0]["reduced"] == results[1]["reduced"] == 0.5
    assert results[0]["losses"] != results[1]["losses"]
    # Only rank 0 wrote the checkpoint, and it holds the shared weights.
    ckpt = torch.load(tmp_path / "checkpoints" / "iter_0000003.pth", weights_only=True)
    assert float(ckpt["model"]["cls.weight"].sum()) == pytest.approx(results[0]["weights"][0])


def _cli_losses(work: Path) -> dict[int, float]:
    return {
        r["iteration"]: r["loss"]
        for r in map(json.loads, (work / "log.jsonl").read_text().splitlines())
        if r.get("mode") == "train"
    }


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_batch_b_equal_one_process_batch_2b(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 -m masklab train`` with batch 1 per rank follows the same math as
    one process with batch 2 (GroupNorm model, no random transforms): same logged (rank-mean) losses,
    same final weights; only rank 0 wrote the log and checkpoints."""
    from masklab.cli.main import main
    from masklab.data.synthetic import synthesize
    from masklab.engine.checkpoint import find_latest, load_checkpoint

    tiny = Path(__file__).resolve().parents[1] / "cli" / "configs" / "tiny_fcn.yaml"
    root = tmp_path / "data"
    synthesize(root, num_train=4, num_val=2, size=64, seed=0, max_objects=2)
    common = [
        str(tiny),
        f"dataset.root={root}",
        "train.max_iters=3",
        "train.checkpoint_interval=3",
        "--no-progress",
    ]
    one = tmp_path / "one"
    assert main(["train", *common, "train.batch_size=2", "--work-dir", str(one)]) == 0
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "masklab",
           "train", *common, "train.batch_size=1", "--work-dir", str(two)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (two / "log.jsonl").read_text().splitlines()
    assert len([ln for ln in lines if '"mode": "train"' in ln]) == 3  # rank 0 only: no duplicates
    a, b = _cli_losses(one), _cli_losses(two)
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a), (a, b)
    wa, wb = load_checkpoint(find_latest(one))["model"], load_checkpoint(find_latest(two))["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert load_checkpoint(find_latest(two))["meta"]["world_size"] == 2


@pytest.mark.slow
@pytest.mark.distributed
def test_evaluate_and_infer_shard_across_two_processes(tmp_path: Path) -> None:
    """Under torchrun, evaluate and infer split the images between ranks without repeats and write
    what one process writes: the same metrics and the same prediction files."""
    from masklab.cli.main import main
    from masklab.data.synthetic import synthesize
    from masklab.engine.checkpoint import find_latest

    tiny = Path(__file__).resolve().parents[1] / "cli" / "configs" / "tiny_fcn.yaml"
    root = tmp_path / "data"
    synthesize(root, num_train=2, num_val=3, size=64, seed=1, max_objects=2)  # 3 images: uneven shards
    common = [str(tiny), f"dataset.root={root}"]
    assert (
        main(["train", *common, "train.max_iters=1", "--work-dir", str(tmp_path / "run"), "--no-progress"])
        == 0
    )
    ckpt = str(find_latest(tmp_path / "run"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "masklab",
    ]
    images = str(root / "images" / "val")
    runs = {
        "one": [sys.executable, "-m", "masklab"],
        "two": torchrun,
    }
    for name, prefix in runs.items():
        cmd = [
            *prefix,
            "evaluate",
            common[0],
            ckpt,
            *common[1:],
            "--out",
            str(tmp_path / f"{name}.json"),
            "--no-progress",
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        cmd = [
            *prefix,
            "infer",
            *common[:1],
            ckpt,
            *common[1:],
            "--input",
            images,
            "--out",
            str(tmp_path / f"pred_{name}"),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        # One summary line: only rank 0 reports, and it says the two processes shared the images.
        summary = [ln for ln in proc.stdout.splitlines() if " images" in ln and " -> " in ln]
        expected = "3 images (shared by 2 processes) -> " if name == "two" else "3 images -> "
        assert len(summary) == 1 and summary[0].startswith(expected), proc.stdout
    one = json.loads((tmp_path / "one.json").read_text())["metrics"]
    two = json.loads((tmp_path / "two.json").read_text())["metrics"]
    assert one == pytest.approx(two, abs=1e-9)
    files_one = sorted(p.relative_to(tmp_path / "pred_one") for p in (tmp_path / "pred_one").rglob("*.png"))
    files_two = sorted(p.relative_to(tmp_path / "pred_two") for p in (tmp_path / "pred_two").rglob("*.png"))
    assert files_one == files_two and len(files_one) == 6  # 3 label PNGs + 3 overlays
    for rel in files_one:
        assert (tmp_path / "pred_one" / rel).read_bytes() == (tmp_path / "pred_two" / rel).read_bytes()


def test_cuda_index_beyond_the_visible_devices_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from masklab.config.assemble import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(
        ConfigError, match=r"runtime.device: 'cuda:2' asked for but 2 CUDA device\(s\) are visible"
    ):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        resolve_device("cuda")


def test_nproc_relaunches_this_interpreter_with_the_parsed_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--nproc`` starts torchrun as ``python -m torch.distributed.run`` of this interpreter (a
    ``torchrun`` on PATH may be another environment's) with the command ``main`` was given, not
    ``sys.argv`` (another program's when ``main()`` is called from Python)."""
    import masklab.cli.train as train_cli
    from masklab.cli.main import main

    seen: list[list[str]] = []
    monkeypatch.setattr(train_cli.subprocess, "call", lambda cmd: seen.append(cmd) or 0)
    monkeypatch.setattr(sys, "argv", ["pytest", "-q"])
    tiny = str(Path(__file__).resolve().parents[1] / "cli" / "configs" / "tiny_fcn.yaml")
    work = str(tmp_path / "run")
    argv = ["train", tiny, "train.max_iters=2", "--work-dir", work, "--nproc", "2", "--no-progress"]
    assert main([*argv, "--resume"]) == 0
    assert seen == [
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "masklab",
         "train", tiny, "train.max_iters=2", "--work-dir", work, "--no-progress", "--resume"]
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
def test_an_error_in_one_rank_ends_the_job_and_leaves_no_run_folder(tmp_path: Path) -> None:
    """Rank 1 alone reads corrupt images: it prints its one error line and leaves at once (before,
    it waited in teardown's barrier while rank 0 waited in DDP's first collective, until gloo's
    30-minute timeout), and the ``--nproc`` launcher removes the run folder rank 0 had created."""
    from masklab.data.samplers import InfiniteSampler
    from masklab.data.synthetic import synthesize

    tiny = Path(__file__).resolve().parents[1] / "cli" / "configs" / "tiny_fcn.yaml"
    root = tmp_path / "data"
    synthesize(root, num_train=4, num_val=2, size=64, seed=0, max_objects=2)
    # Rank 0's first image (runtime.seed 0, batch 1) stays readable; every other one is truncated.
    keep = next(iter(InfiniteSampler(4, seed=0, rank=0, world_size=2)))
    for i, image in enumerate(sorted((root / "images" / "train").iterdir())):
        if i != keep:
            image.write_bytes(image.read_bytes()[:100])
    work = tmp_path / "run"
    cmd = [sys.executable, "-m", "masklab", "train", str(tiny), f"dataset.root={root}", "train.batch_size=1",
           "train.max_iters=4", "--work-dir", str(work), "--nproc", "2", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code, err = _run_job(cmd, env, timeout=120)
    assert code is not None, "the job hung after one rank's error"
    assert code != 0
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "corrupt or truncated image" in errors[0], err[-3000:]
    assert not work.exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["runtime.sync_bn=true"], "error: runtime.sync_bn: SyncBatchNorm runs on GPUs only"),
        (
            ["runtime.strategy=fsdp", "runtime.channels_last=true"],
            "runtime.channels_last: not supported with",
        ),
        (["runtime.strategy=fsdp", "train.ema={momentum: 0.01}"], "train.ema: not supported with"),
    ],
)
def test_nproc_refuses_what_every_rank_would_refuse_in_one_line_before_torchrun(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    overrides: list[str],
    expected: str,
) -> None:
    """Settings a multi-process run refuses are known from the config: ``--nproc`` refuses them
    before torchrun starts (before, each rank printed the error, then torchrun its traceback)."""
    import masklab.cli.train as train_cli
    from masklab.cli.main import main

    monkeypatch.setattr(train_cli.subprocess, "call", lambda cmd: pytest.fail(f"torchrun started: {cmd}"))
    tiny = str(Path(__file__).resolve().parents[1] / "cli" / "configs" / "tiny_fcn.yaml")
    argv = ["train", tiny, *overrides, "--work-dir", str(tmp_path / "run"), "--nproc", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and expected in err[0]
    assert not (tmp_path / "run").exists()


def test_fsdp_with_channels_last_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FSDP2 refuses non-contiguous (NHWC) parameters: runtime.channels_last with fsdp is a
    ConfigError naming both keys, not torch's NotImplementedError from every rank."""
    import masklab.engine.distributed as distributed
    from masklab.config.assemble import build_trainer, resolve
    from masklab.data.synthetic import synthesize

    root = tmp_path / "data"
    synthesize(root, num_train=2, num_val=1, size=64, seed=0, max_objects=1)
    tiny = Path(__file__).resolve().parents[1] / "cli" / "configs" / "tiny_fcn.yaml"
    rc = resolve(tiny, [f"dataset.root={root}", "runtime.strategy=fsdp", "runtime.channels_last=true"])
    monkeypatch.setattr(distributed, "get_info", lambda: DistInfo(0, 2, 0, True))
    with pytest.raises(
        ConfigError, match=r"runtime.channels_last: not supported with runtime.strategy: fsdp"
    ):
        build_trainer(rc, work_dir=tmp_path / "run", progress=False)


def test_fsdp_shards_a_model_with_a_module_list_child(tmp_path: Path) -> None:
    """fully_shard refuses a ModuleList (no forward): such a direct child goes to the root unit
    instead of failing every rank with torch's ValueError (the FPN configs have one)."""
    import torch.distributed as dist

    class WithList(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for conv in self.convs:
                x = conv(x)
            return self.head(x)

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = wrap_model(WithList(), "fsdp", "cpu")
        model(torch.ones(2, 4)).sum().backward()
        assert all(p.grad is not None for p in model.parameters())
    finally:
        dist.destroy_process_group()


def _buffers_rank(rank: int, store_path: str) -> None:
    import torch.distributed as dist

    from masklab.engine.distributed import broadcast_buffers

    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
        model[1].running_mean.fill_(float(rank + 1))  # each rank's own statistics
        model[1].num_batches_tracked.fill_(10 * (rank + 1))
        weight = model[0].weight.detach().clone()
        broadcast_buffers(model)
        assert torch.equal(model[1].running_mean, torch.ones(2))  # rank 0's, on both ranks
        assert int(model[1].num_batches_tracked) == 10
        assert torch.equal(model[0].weight, weight)  # parameters are not buffers: untouched
    finally:
        dist.destroy_process_group()


def test_validation_buffers_are_rank_zeros(tmp_path: Path) -> None:
    """Before validation every rank takes rank 0's BatchNorm statistics (those its checkpoint saves):
    under FSDP each rank kept its own and the in-training metrics differed from the checkpoint's."""
    import torch.multiprocessing as mp

    mp.spawn(_buffers_rank, args=(str(tmp_path / "store"),), nprocs=2, join=True)
