"""Go or no-go: one pure function of what the stages found."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from harness.gate.drill import DrillResult
from harness.gate.slo import ObjectiveResult, Verdict, verdict
from harness.gate.status import CheckStatus
from harness.gate.suites import SuiteResults


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    notes: tuple[str, ...]  # why a go became a no-go beyond the objectives


def decide_verdict(
    results: Iterable[ObjectiveResult], suites: SuiteResults | None, drill: DrillResult
) -> Decision:
    """No-go when an objective failed or was not verifiable, when the
    resilience drill failed, or when the suites ran and did not pass."""
    notes: list[str] = []
    if drill.status is CheckStatus.FAIL:
        notes.append(f"the resilience drill failed: the verdict is no-go ({drill.reason})")
    suites_failed = suites is not None and not suites.ok
    if suites_failed:
        notes.append("the suites failed: the verdict is no-go")
    if notes:
        return Decision(Verdict.NO_GO, tuple(notes))
    return Decision(verdict(results), ())


__all__ = ["Decision", "decide_verdict"]
