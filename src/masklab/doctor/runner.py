"""Run every registered check against one config and collect the findings."""

from __future__ import annotations

import traceback
from collections.abc import Iterable

from masklab.doctor.context import DoctorContext
from masklab.doctor.finding import Finding, error
from masklab.doctor.registry import Check, all_checks
from masklab.errors import MasklabError


def run_checks(ctx: DoctorContext, checks: Iterable[Check] | None = None) -> list[Finding]:
    """Findings of ``checks`` (default: all registered) in order.

    A check that raises is itself a finding: a user mistake (:class:`MasklabError`) becomes an
    error naming it; any other exception is reported as a doctor bug with its last frame, so one
    broken check never hides the others.
    """
    findings: list[Finding] = []
    for check in checks if checks is not None else all_checks():
        try:
            findings.extend(check.fn(ctx))
        except MasklabError as exc:
            findings.append(error(check.qualname, str(exc), "fix the file/key named here"))
        except Exception as exc:  # noqa: BLE001  (isolate checks; report instead of crashing)
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            findings.append(
                error(
                    check.qualname,
                    f"check crashed: {type(exc).__name__}: {exc} ({frame.filename}:{frame.lineno})",
                    "the model or data breaks an assumption of this check; report it if the run itself works",
                )
            )
    return findings
