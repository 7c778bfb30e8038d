"""``masklab doctor``: find the classic training bugs before a long run.

Checks live in :mod:`masklab.doctor.checks` (one module per family), each a small function
registered with :func:`~masklab.doctor.registry.register_check` returning
:class:`~masklab.doctor.finding.Finding` s.
"""

from masklab.doctor.context import DoctorContext
from masklab.doctor.finding import Finding
from masklab.doctor.registry import register_check
from masklab.doctor.runner import run_checks

__all__ = ["DoctorContext", "Finding", "register_check", "run_checks"]
