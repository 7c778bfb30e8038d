"""Rich progress bars for training and evaluation, on rank 0 only."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from masklab.engine.distributed import is_main_process


def make_progress(enabled: bool, console: Console) -> Progress | None:
    """A progress display, or None when disabled or not on rank 0.

    Rich draws live bars on a terminal and stays quiet otherwise (CI logs, pipes), so no TTY check
    is needed here.
    """
    if not enabled or not is_main_process():
        return None
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
