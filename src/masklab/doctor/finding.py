"""The unit of a doctor report: one check's verdict with its evidence and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warn", "error"]
STATUS_ORDER: dict[str, int] = {"ok": 0, "warn": 1, "error": 2}


@dataclass(frozen=True)
class Finding:
    """What one check found.

    Attributes:
        check: dotted name, ``<family>.<check>`` (e.g. ``data.labels``).
        status: ``ok``, ``warn`` (likely to hurt) or ``error`` (will break or silently ruin training).
        evidence: what was measured, naming files, keys and values.
        advice: what to do about it (empty when nothing needs doing).
    """

    check: str
    status: Status
    evidence: str
    advice: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUS_ORDER:
            raise ValueError(f"Finding.status must be ok, warn or error, got {self.status!r}")


def ok(check: str, evidence: str) -> Finding:
    """An ``ok`` finding."""
    return Finding(check, "ok", evidence)


def warn(check: str, evidence: str, advice: str) -> Finding:
    """A ``warn`` finding."""
    return Finding(check, "warn", evidence, advice)


def error(check: str, evidence: str, advice: str) -> Finding:
    """An ``error`` finding."""
    return Finding(check, "error", evidence, advice)


def worst(findings: list[Finding]) -> Status:
    """The most severe status among ``findings`` (``ok`` when empty)."""
    if not findings:
        return "ok"
    return max((f.status for f in findings), key=STATUS_ORDER.__getitem__)
