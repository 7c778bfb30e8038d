"""Helpers shared by the commands: config resolution and work-dir preparation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from masklab.config.assemble import apply_process_settings, default_work_dir, resolve
from masklab.config.schema import ResolvedConfig
from masklab.errors import ConfigError


def resolve_for_cli(config: str, overrides: Sequence[str]) -> ResolvedConfig:
    """Load and validate ``config`` with ``overrides``; a missing file is a one-line error.

    Every command reads its config here, so the process-wide runtime settings
    (``runtime.num_threads``) are applied here too: evaluation, inference, export and the
    benchmarks run with the threads the config asks for, as training does.
    """
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"{config}: config file not found")
    rc = resolve(path, overrides)
    apply_process_settings(rc)
    return rc


def prepare_work_dir(rc: ResolvedConfig, work_dir: str | None) -> Path:
    """The run folder: ``--work-dir``, else ``runtime.work_dir``, else ``work_dirs/<config name>``.

    Nothing is created here (the trainer creates the folder once the run is fully built, so a bad
    config or dataset leaves no empty run behind); a path that exists as a file or whose nearest
    existing parent is not writable is a one-line error up front.
    """
    path = Path(work_dir) if work_dir else default_work_dir(rc)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: work dir exists and is not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{path}: work dir is not writable ({probe} does not allow writing)")
    return path
