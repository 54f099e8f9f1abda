"""The doctor: pure analysis of Snapshots, findings with remedies, and the --json document.

    diagnosis = diagnose(snapshot, previous=None)   # no I/O, no clock
    diagnosis.findings, diagnosis.analysis, diagnosis.exit_status
    to_json(diagnosis, top=10)                      # the documented JSON document (schema.py)

A live capture, a saved file and a model host all give the same Snapshot type, so the same
diagnosis runs on each (DESIGN.md "One data flow"; STYLE.md rule 8).
"""

from __future__ import annotations

from dataclasses import dataclass

from timewait.doctor.analysis import Analysis, Destination, analyze
from timewait.doctor.kernels import KERNEL_FACTS, kernel_of
from timewait.doctor.remedies import Remedy
from timewait.doctor.rules import RULE_IDS, RULES, Finding, Severity, run_rules
from timewait.snapshot import Snapshot
from timewait.status import ExitStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagnosis:
    """A snapshot, its analysis and the findings (most severe first)."""

    snapshot: Snapshot
    analysis: Analysis
    findings: tuple[Finding, ...]

    @property
    def severity(self) -> Severity:
        return max((f.severity for f in self.findings), default=Severity.OK)

    @property
    def exit_status(self) -> ExitStatus:
        """0 healthy (ok/info), 1 warnings, 2 critical (issue 4 item 5)."""
        return {
            Severity.CRITICAL: ExitStatus.CRITICAL,
            Severity.WARNING: ExitStatus.WARNING,
        }.get(self.severity, ExitStatus.OK)

    @property
    def status(self) -> str:
        return {ExitStatus.CRITICAL: "critical", ExitStatus.WARNING: "warning"}.get(
            self.exit_status, "healthy"
        )


def diagnose(snapshot: Snapshot, previous: Snapshot | None = None) -> Diagnosis:
    """Analyze a snapshot (and optionally an earlier one of the same source) and run the rules."""
    a = analyze(snapshot, previous)
    return Diagnosis(snapshot=snapshot, analysis=a, findings=tuple(run_rules(snapshot, a)))


from timewait.doctor.schema import to_json  # noqa: E402  (needs Diagnosis)

__all__ = [
    "KERNEL_FACTS",
    "RULES",
    "RULE_IDS",
    "Analysis",
    "Destination",
    "Diagnosis",
    "Finding",
    "Remedy",
    "Severity",
    "analyze",
    "diagnose",
    "kernel_of",
    "run_rules",
    "to_json",
]
