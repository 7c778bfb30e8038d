"""``masklab train CFG [--work-dir W] [--resume [CKPT]] [--nproc N] [key=value ...]``.

A run that creates its work dir and stops on a user error (a :class:`MasklabError`, e.g. a label
out of range found in the first batch) before writing its first checkpoint removes the folders it
created: nothing half-written stays behind. A folder that existed before the run, and the work dir
of a resumed run, are never removed; in a folder that existed, the entries the failed run added are
removed and the small files it rewrote (an earlier run's ``config.yaml``, ``log.jsonl``) put back.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from masklab.errors import ConfigError, MasklabError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="path to a YAML config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_iters=200")
    parser.add_argument(
        "--work-dir", help="run folder (default: runtime.work_dir or work_dirs/<config name>)"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CKPT",
        help="continue from CKPT, or from the work dir's latest checkpoint when no file is given "
        "(key=value overrides go before --resume, or use --resume=CKPT)",
    )
    parser.add_argument(
        "--nproc", type=int, default=None, help="processes on this machine (launches torchrun)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    _check_resume_value(args.resume)
    from masklab.cli.common import prepare_work_dir, resolve_for_cli

    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        # Checked once here, not by every rank: a config error is one line and exit 2 instead of
        # one line per rank and torchrun's ChildFailedError traceback.
        from masklab.config.assemble import check_distributed_settings, resolve_device

        rc = resolve_for_cli(args.config, args.overrides)
        check_distributed_settings(rc, resolve_device(rc.runtime.device))
        work_dir = prepare_work_dir(rc, args.work_dir)
        created = _outermost_missing(work_dir)
        before = _snapshot(work_dir) if created is None and work_dir.is_dir() else {}
        code = _launch_torchrun(args)
        if code != 0 and not (args.resume or rc.train.resume):
            # A rank that failed alone cannot clean up for rank 0, which torchrun ended: undo here
            # what the run wrote, as one process does after its error (kept once it has a checkpoint).
            _undo_failed_run(work_dir, created, before)
        return code
    from masklab.config.assemble import build_trainer, resolve_device
    from masklab.engine.checkpoint import check_checkpoint_task
    from masklab.engine.distributed import init_distributed, is_main_process, teardown
    from masklab.errors import CheckpointError

    rc = resolve_for_cli(args.config, args.overrides)
    device = resolve_device(rc.runtime.device)
    info = init_distributed(device=device) if "LOCAL_RANK" in os.environ else None
    work_dir = prepare_work_dir(rc, args.work_dir)
    created = _outermost_missing(work_dir)  # what this run will create, None if the folder exists
    before = _snapshot(work_dir) if created is None and work_dir.is_dir() else {}
    trainer = build_trainer(rc, work_dir=work_dir, progress=not args.no_progress)
    main_process = is_main_process()  # asked before teardown, after which every rank reads as 0
    resuming = bool(args.resume or rc.train.resume)
    finished = False  # an error may be this rank's alone: then no barrier on the way out
    try:
        if is_main_process():
            for message in (trainer.lr_message, getattr(trainer, "run_message", "")):
                if message:
                    trainer.log(message)
        if resuming:
            source = None if args.resume in (None, "latest") else args.resume
            if source is not None:
                check_checkpoint_task(source, rc.task, args.config)
            if not _already_resumed(trainer, source):  # a MAL trainer auto-resumes when it is built
                used = trainer.resume(source)  # before anything is written: a bad checkpoint leaves no folder
                if used is None:
                    raise CheckpointError(f"{work_dir / 'checkpoints'}: no checkpoint to resume from")
        if is_main_process():
            rc.config.dump(work_dir / "config.yaml")
        trainer.train()
        finished = True
    except MasklabError:
        if main_process and not resuming:
            _undo_failed_run(work_dir, created, before)
        raise
    finally:
        if info is not None and info.is_distributed:
            teardown(trainer.release_model(), sync=finished)
    if main_process:
        print(f"done: {trainer.iter} iterations; checkpoints in {work_dir / 'checkpoints'}")
    return 0


def _check_resume_value(value: str | None) -> None:
    """``--resume`` takes an optional value, so ``--resume key=value`` would read the override as
    the checkpoint path: refuse that (a file whose name holds '=' is still a checkpoint)."""
    if value is None or "=" not in value or Path(value).is_file():
        return
    raise ConfigError(
        f"--resume {value}: --resume takes a checkpoint path, and this is a key=value override, not a "
        "file; put overrides before --resume, write --resume=CKPT, or end the command with a bare "
        "--resume to continue from the work dir's latest checkpoint"
    )


def _already_resumed(trainer: object, source: str | None) -> bool:
    """True when the trainer was built resumed (MAL's TAO-style auto-resume) from the checkpoint
    ``--resume`` names (None: the work dir's latest), so it is not loaded a second time."""
    done = getattr(trainer, "resumed_from", None)
    if done is None:
        return False
    if source is None:
        return True
    from masklab.engine.checkpoint import follow_latest

    return follow_latest(Path(source)).resolve() == follow_latest(done).resolve()


def _outermost_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (``path`` itself or a parent), or None."""
    if path.exists():
        return None
    top = path.absolute()
    while not top.parent.exists():
        top = top.parent
    return top


def _undo_failed_run(work_dir: Path, created: Path | None, before: dict[Path, bytes | None]) -> None:
    """Remove what a failed run that wrote no checkpoint left: the folders it created or, in a work
    dir that existed, the entries it added (its small rewritten files put back)."""
    if created is not None:
        _remove_unfinished(created, work_dir)
    else:
        _remove_added(work_dir, before)


def _remove_unfinished(created: Path, work_dir: Path) -> None:
    """Remove the folders a failed run created, unless it already wrote a checkpoint."""
    from masklab.engine.checkpoint import CHECKPOINT_DIR

    checkpoints = work_dir / CHECKPOINT_DIR
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        return
    shutil.rmtree(created, ignore_errors=True)


_SNAPSHOT_MAX_BYTES = 16 << 20


def _snapshot(work_dir: Path) -> dict[Path, bytes | None]:
    """The work dir's top-level entries, with the bytes of its small files (an earlier run's
    ``config.yaml``, ``log.jsonl``) so that a failed run can put them back."""
    out: dict[Path, bytes | None] = {}
    for entry in work_dir.iterdir():
        small = entry.is_file() and not entry.is_symlink() and entry.stat().st_size <= _SNAPSHOT_MAX_BYTES
        out[entry] = entry.read_bytes() if small else None
    return out


def _remove_added(work_dir: Path, before: dict[Path, bytes | None]) -> None:
    """In a work dir that existed before the run, undo what a failed run did to it, unless it
    already wrote a checkpoint: remove the entries it added (``tb/``, ...) and put back the small
    files it rewrote or appended to (an earlier run's ``config.yaml``, ``log.jsonl``)."""
    from masklab.atomic_files import atomic_write
    from masklab.engine.checkpoint import CHECKPOINT_DIR

    checkpoints = work_dir / CHECKPOINT_DIR
    if not work_dir.is_dir() or (checkpoints.is_dir() and any(checkpoints.iterdir())):
        return
    for entry in set(work_dir.iterdir()) - set(before):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    for entry, data in before.items():
        if data is not None and entry.is_file() and entry.read_bytes() != data:
            atomic_write(entry, lambda f, data=data: f.write(data))


def _launch_torchrun(args: argparse.Namespace) -> int:
    """Run this command under ``torchrun --standalone --nproc_per_node N`` (single machine).

    torchrun is started as ``python -m torch.distributed.run`` with this interpreter (a ``torchrun``
    found on PATH may belong to another environment), and the command is rebuilt from ``args`` (not
    ``sys.argv``, which is another program's when ``main()`` is called from Python)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    cmd += ["-m", "masklab", "train", args.config, *args.overrides]
    if args.work_dir:
        cmd += ["--work-dir", args.work_dir]
    if args.no_progress:
        cmd.append("--no-progress")
    if args.resume:  # last: a bare --resume takes no value
        cmd += ["--resume"] if args.resume == "latest" else [f"--resume={args.resume}"]
    return subprocess.call(cmd)
