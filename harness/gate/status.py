"""The gate's statuses, in one place: of an objective, of a check (a fault of
the drill, the drill as a whole, an acceptance criterion), and the verdict.

Their values are what report.json, summary.md and the HTML report show.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """An objective's status over the load window."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    # not enough evidence for a verdict either way: blocks a go like a failure
    NOT_VERIFIABLE = "not_verifiable"
    # the former name of NOT_VERIFIABLE (no data is one way of not being verifiable)
    NO_DATA = "not_verifiable"


class CheckStatus(StrEnum):
    """A check's status: a fault of the resilience drill, the drill, an
    acceptance criterion."""

    PASS = "PASS"
    FAIL = "FAIL"
    NOT_VERIFIABLE = "NOT VERIFIABLE HERE"


class Verdict(StrEnum):
    GO = "go"
    NO_GO = "no-go"


__all__ = ["CheckStatus", "Status", "Verdict"]
