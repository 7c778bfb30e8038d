"""The check registry: a check is a function ``(DoctorContext) -> list[Finding]`` registered by name.

A new check is one small function in ``doctor/checks/<family>.py`` decorated with
:func:`register_check`; the runner calls every registered check in family order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from masklab.doctor.context import DoctorContext
    from masklab.doctor.finding import Finding

CheckFn = Callable[["DoctorContext"], "list[Finding]"]
FAMILIES = ("config", "data", "transforms", "model")


@dataclass(frozen=True)
class Check:
    """A registered check: ``family.name`` and its function."""

    family: str
    name: str
    fn: CheckFn

    @property
    def qualname(self) -> str:
        """``family.name``."""
        return f"{self.family}.{self.name}"


CHECKS: list[Check] = []


def register_check(family: str, name: str) -> Callable[[CheckFn], CheckFn]:
    """Register ``fn`` as check ``family.name``; a duplicate name is an error."""
    if family not in FAMILIES:
        raise ValueError(f"unknown doctor family {family!r}; expected one of {FAMILIES}")

    def deco(fn: CheckFn) -> CheckFn:
        if any(c.family == family and c.name == name for c in CHECKS):
            raise ValueError(f"doctor check {family}.{name} is registered twice")
        CHECKS.append(Check(family, name, fn))
        return fn

    return deco


def all_checks() -> list[Check]:
    """Every registered check, families in :data:`FAMILIES` order, registration order within."""
    import masklab.doctor.checks  # noqa: F401  (registers the built-in checks)

    return sorted(CHECKS, key=lambda c: FAMILIES.index(c.family))
