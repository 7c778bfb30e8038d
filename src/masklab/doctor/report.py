"""Presenting findings: a rich table for the terminal and ``doctor.md`` for the work dir."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from masklab.doctor.finding import Finding, worst

_STYLE = {"ok": "green", "skip": "dim", "warn": "yellow", "error": "bold red"}


def console_table(findings: Sequence[Finding], title: str = "masklab doctor") -> Table:
    """A rich table: check, status, evidence, what to do."""
    table = Table(title=title, show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("evidence", overflow="fold")
    table.add_column("what to do", overflow="fold")
    for f in findings:
        table.add_row(
            escape(f.check), f"[{_STYLE[f.status]}]{f.status}[/]", escape(f.evidence), escape(f.advice)
        )
    return table


def print_report(findings: Sequence[Finding], console: Console | None = None) -> None:
    """Print the table and a one-line verdict."""
    console = console or Console(highlight=False)
    console.print(console_table(findings))
    console.print(summary(findings), markup=False)


def summary(findings: Sequence[Finding]) -> str:
    """``doctor: 2 errors, 1 warnings, 14 ok, 4 skipped - ...`` (skipped only when some were)."""
    n = {s: sum(f.status == s for f in findings) for s in ("error", "warn", "ok", "skip")}
    verdict = {
        "error": "fix the errors before training",
        "warn": "review the warnings",
        "skip": "some checks could not run",
        "ok": "all clear",
    }
    skips = f", {n['skip']} skipped" if n["skip"] else ""
    return (
        f"doctor: {n['error']} errors, {n['warn']} warnings, {n['ok']} ok{skips} - "
        f"{verdict[worst(list(findings))]}"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(findings: Sequence[Finding], config: str, pictures: Sequence[Path] = ()) -> str:
    """The Markdown report: verdict, table, and links to the pictures (relative to the report)."""
    lines = [
        f"# masklab doctor: `{config}`",
        "",
        summary(findings),
        "",
        "| check | status | evidence | what to do |",
        "|---|---|---|---|",
    ]
    lines += [f"| {f.check} | {f.status} | {_cell(f.evidence)} | {_cell(f.advice)} |" for f in findings]
    if pictures:
        lines += ["", "## Pictures", ""]
        lines += [f"![{p.stem}]({p.name})" for p in pictures]
    return "\n".join(lines) + "\n"


def write_markdown(
    path: Path, findings: Sequence[Finding], config: str, pictures: Sequence[Path] = ()
) -> Path:
    """Write ``doctor.md`` atomically; returns its path."""
    from masklab.atomic_files import atomic_write

    text = markdown(findings, config, pictures)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path
