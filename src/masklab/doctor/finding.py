"""The unit of a doctor report: one check's verdict with its evidence and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "skip", "warn", "error"]
# ``skip`` ranks above ``ok`` only: a check is skipped when another row already reports, as an error,
# what stops it from running, so a skip never decides the verdict on its own.
STATUS_ORDER: dict[str, int] = {"ok": 0, "skip": 1, "warn": 2, "error": 3}


@dataclass(frozen=True)
class Finding:
    """What one check found.

    Attributes:
        check: dotted name, ``<family>.<check>`` (e.g. ``data.labels``).
        status: ``ok``, ``warn`` (likely to hurt), ``error`` (will break or silently ruin training) or
            ``skip`` (could not run because of a problem another row reports).
        evidence: what was measured, naming files, keys and values.
        advice: what to do about it (empty when nothing needs doing).
    """

    check: str
    status: Status
    evidence: str
    advice: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUS_ORDER:
            raise ValueError(f"Finding.status must be ok, skip, warn or error, got {self.status!r}")


def ok(check: str, evidence: str) -> Finding:
    """An ``ok`` finding."""
    return Finding(check, "ok", evidence)


def warn(check: str, evidence: str, advice: str) -> Finding:
    """A ``warn`` finding."""
    return Finding(check, "warn", evidence, advice)


def error(check: str, evidence: str, advice: str) -> Finding:
    """An ``error`` finding."""
    return Finding(check, "error", evidence, advice)


def skipped(check: str, evidence: str) -> Finding:
    """A ``skip`` finding: ``evidence`` names the row that reports why the check could not run."""
    return Finding(check, "skip", evidence)


def worst(findings: list[Finding]) -> Status:
    """The most severe status among ``findings`` (``ok`` when empty)."""
    if not findings:
        return "ok"
    return max((f.status for f in findings), key=STATUS_ORDER.__getitem__)
