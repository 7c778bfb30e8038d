"""Time one config's training step and count what it asks of the host (CUDA: synchronisations, copies,
kernel launches, GPU busy time).

Builds the trainer exactly as ``masklab train`` does (dataset, model, optimiser, hooks; no validation),
runs ``--warmup`` steps, times ``--steps`` more (the mean, the device synchronised before and after),
then profiles ``--profile-steps`` steps with ``torch.profiler`` and prints per-step counts of
``cudaStreamSynchronize`` / ``cudaDeviceSynchronize`` (host waits), ``cudaMemcpyAsync`` (host-device
copies), ``cudaLaunchKernel`` (launches) and the summed device time of the kernels. On CPU the time is
printed, and with ``--cpu-table N`` the profiler's N most expensive operators (self CPU time). Data loading is inside the timed steps, as in training (``train.num_workers``).

    python benchmarks/train_step_profile.py CONFIG dataset.root=D [overrides] --steps 30
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _profile_counts(trainer, batches, steps: int) -> dict[str, float]:  # noqa: ANN001 - script helper
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.iter = trainer.run_step(batches).iteration
        _sync(trainer.device)
    names: Counter[str] = Counter()
    device_us = 0.0
    for event in prof.events():
        names[event.name] += 1
        if event.device_type == torch.autograd.DeviceType.CUDA:
            device_us += event.device_time
    syncs = names["cudaStreamSynchronize"] + names["cudaDeviceSynchronize"]
    launches = sum(n for name, n in names.items() if name.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
    return {
        "host syncs": syncs / steps,
        "memcpy": names["cudaMemcpyAsync"] / steps,
        "launches": launches / steps,
        "GPU busy ms": device_us / 1000.0 / steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. dataset.root=D")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--cpu-table", type=int, default=0, help="CPU: print the N costliest operators")
    parser.add_argument("--by-shape", action="store_true", help="with --cpu-table: one row per input shape")
    args = parser.parse_args(argv)

    from masklab.cli.common import resolve_for_cli
    from masklab.config.assemble import build_trainer

    rc = resolve_for_cli(args.config, args.overrides)
    with tempfile.TemporaryDirectory() as work_dir:
        trainer = build_trainer(rc, work_dir=work_dir, progress=False, with_val=False)
        trainer.model.train()
        batches = trainer._batches()
        for _ in range(args.warmup):
            trainer.iter = trainer.run_step(batches).iteration
        _sync(trainer.device)
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.iter = trainer.run_step(batches).iteration
        _sync(trainer.device)
        step = (time.perf_counter() - start) / args.steps
        print(
            f"{args.config} on {trainer.device} ({torch.get_num_threads()} threads): step {step * 1000:.1f} ms"
        )
        if trainer.device.type == "cuda" and args.profile_steps > 0:
            counts = _profile_counts(trainer, batches, args.profile_steps)
            print("  per step: " + ", ".join(f"{k} {v:.1f}" for k, v in counts.items()))
        if trainer.device.type == "cpu" and args.cpu_table > 0:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU], record_shapes=args.by_shape) as prof:
                for _ in range(args.profile_steps):
                    trainer.iter = trainer.run_step(batches).iteration
            table = prof.key_averages(group_by_input_shape=args.by_shape)
            print(table.table(sort_by="self_cpu_time_total", row_limit=args.cpu_table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
