"""Run every registered check against one config and collect the findings."""

from __future__ import annotations

import traceback
from collections.abc import Iterable

from masklab.doctor.context import DoctorContext, crash_text
from masklab.doctor.finding import Finding, error
from masklab.doctor.registry import Check, all_checks
from masklab.errors import MasklabError


def run_checks(ctx: DoctorContext, checks: Iterable[Check] | None = None) -> list[Finding]:
    """Findings of ``checks`` (default: all registered) in order.

    A check that raises is itself a finding: a user mistake (:class:`MasklabError`) becomes an
    error naming it; any other exception is reported with what it carries about where (notes such
    as the sample :func:`~masklab.doctor.context.load_sample` was loading, a file name) and its
    last frame, so one broken check never hides the others.
    """
    findings: list[Finding] = []
    for check in checks if checks is not None else all_checks():
        try:
            findings.extend(check.fn(ctx))
        except MasklabError as exc:
            findings.append(error(check.qualname, str(exc), "fix the file/key named here"))
        except Exception as exc:  # noqa: BLE001  (isolate checks; report instead of crashing)
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            loading = any(str(n).startswith("while loading") for n in getattr(exc, "__notes__", []))
            advice = (
                "the sample named here does not load, and training would stop there: fix or drop it (see data.*)"
                if loading
                else "the model or data breaks an assumption of this check; report it if the run itself works"
            )
            findings.append(
                error(
                    check.qualname,
                    f"check crashed: {crash_text(exc)} ({frame.filename}:{frame.lineno})",
                    advice,
                )
            )
    return findings
