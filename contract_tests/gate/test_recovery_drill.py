"""The recovery drill ("Recovery time < 2 minutos"): it measures every step on a
real stack, and it says no, with evidence and within its timeout, when a
component does not come back.

These tests kill PostgreSQL, so they share one private local stack of their
own (never the session's ``stack``); its every part is running again when
each test ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.gate.acceptance import CRITERIA, CriterionStatus, assess
from harness.gate.recovery import (
    RECOVERY_THRESHOLD_S,
    DrillStatus,
    RecoveryResult,
    run_recovery_drill,
)
from harness.gate.report import render_html, render_junit, render_markdown
from harness.gate.result import GateResult
from harness.providers.local import LocalStackConfig, LocalStackControl, supervised_local_stack
from harness.slo import Verdict
from harness.stack import Credentials, PostgresEndpoints, Stack

RECOVERY = next(c for c in CRITERIA if c.spec_text == "Recovery time < 2 minutos")


def _say(line: str) -> None:
    print(f"drill: {line}", file=sys.stderr)


@pytest.fixture(scope="module")
def control() -> Iterator[LocalStackControl]:
    with supervised_local_stack(LocalStackConfig(), progress=_say) as running:
        yield running


@pytest.fixture
def whole_again(control: LocalStackControl) -> Iterator[LocalStackControl]:
    """Whatever a test leaves down is restarted afterwards (for the next test)."""
    yield control
    for component in control.components:
        if control.pid(component) is None:
            control.restart(component)


class RestartsNothing:
    """The real stack's supervisor, but with ``restart: no``: what it kills stays dead."""

    def __init__(self, control: LocalStackControl) -> None:
        self.control = control

    def kill(self, component: str) -> int | None:
        return self.control.kill(component)

    def restart(self, component: str, *, timeout_s: float | None = None) -> None:
        return None

    def evidence(self, component: str) -> str:
        return self.control.evidence(component)


def test_the_drill_measures_every_step_and_passes_on_a_healthy_stack(whole_again):
    control = whole_again
    postgres_pid, auth_pid = control.pid("postgres"), control.pid("auth-1")
    result = run_recovery_drill(control.stack, control, timeout_s=45, progress=_say)

    assert result.status is DrillStatus.PASS, result
    assert [step.recovered for step in result.steps] == [True, True, True], result.steps
    assert [step.name for step in result.steps] == [
        "auth-1 killed: the gateway serves without it",
        "auth-1 restarted: back in rotation",
        "PostgreSQL killed and restarted: the platform serves again",
    ]
    seconds = [step.seconds for step in result.steps]
    assert all(s is not None and 0 <= s < 45 for s in seconds), seconds
    assert result.recovery_s == max(seconds) < RECOVERY_THRESHOLD_S
    # really killed and restarted: new processes on the same ports
    assert control.pid("postgres") not in (None, postgres_pid)
    assert control.pid("auth-1") not in (None, auth_pid)
    assert f"pid {postgres_pid}" in result.steps[2].fault
    _say("measured: " + ", ".join(step.describe() for step in result.steps))

    [criterion] = assess([RECOVERY], None, [], result)
    assert criterion.status is CriterionStatus.PASS
    assert any("recovery time" in line for line in criterion.evidence)


def test_the_drill_says_fail_with_evidence_when_nothing_comes_back(whole_again):
    control = whole_again
    started = time.monotonic()
    result = run_recovery_drill(control.stack, RestartsNothing(control), timeout_s=4)
    elapsed = time.monotonic() - started

    assert result.status is DrillStatus.FAIL, result
    assert elapsed < 30, f"the drill took {elapsed:.1f} s with a 4 s timeout per step"
    gateway, rotation, postgres = result.steps
    assert gateway.recovered  # the other auth instance serves: HAProxy routes around
    assert not rotation.recovered and rotation.seconds is None
    assert "did not report auth/auth-1 UP" in rotation.evidence[0], rotation.evidence
    assert (
        "auth-1 on 127.0.0.1:" in rotation.evidence[1] and "(not running)" in (rotation.evidence[1])
    )
    assert not postgres.recovered and postgres.seconds is None
    evidence = "\n".join(postgres.evidence)
    assert "failures seen: GET /auth/me" in evidence  # 503 from HAProxy, or timeouts
    assert f"postgres on 127.0.0.1:{control.stack.postgres.port} (not running)" in evidence
    assert "log tail:" in evidence
    assert "not recovered within the drill's timeout" in result.reason
    assert result.recovery_s is None

    [criterion] = assess([RECOVERY], None, [], result)
    assert criterion.status is CriterionStatus.FAIL


def test_a_restart_that_fails_is_a_fail_carrying_the_servers_log(whole_again):
    """A restart that dies on start (a bad setting left in postgresql.auto.conf)."""
    control = whole_again
    data_dir = Path(control.stack.extra["postgres_socket_dir"]) / "data"
    auto_conf = data_dir / "postgresql.auto.conf"
    original = auto_conf.read_text()
    auto_conf.write_text(original + "shared_buffers = 'plenty'\n")
    try:
        result = run_recovery_drill(control.stack, control, timeout_s=20)
    finally:
        auto_conf.write_text(original)

    assert result.status is DrillStatus.FAIL
    postgres = result.steps[-1]
    assert not postgres.recovered
    assert "the restart of postgres failed" in postgres.evidence[0]
    assert "shared_buffers" in postgres.evidence[0]  # the server's own words, from its log


def test_an_external_stack_cannot_be_drilled_and_says_why():
    stack = Stack(
        provider="external",
        postgres=PostgresEndpoints("", "", "", "db.example", 5432, "atendeai"),
        redis_url="redis://cache.example",
        services={},
        platform_admin=Credentials("admin@example.com", "x" * 12),
        haproxy_url="http://gateway.example",
        haproxy_stats_url="http://gateway.example:8404/stats",
    )
    result = run_recovery_drill(stack, None)
    assert result.status is DrillStatus.NOT_VERIFIABLE and not result.steps
    assert "external provider" in result.reason

    [criterion] = assess([RECOVERY], None, [], result)
    assert criterion.status is CriterionStatus.NOT_VERIFIABLE
    assert "external provider" in criterion.evidence[0]
    [skipped] = assess([RECOVERY], None, [])
    assert skipped.status is CriterionStatus.NOT_VERIFIABLE


def test_the_reports_show_the_drill_and_a_failed_drill_is_in_the_headline():
    from harness.gate.recovery import DrillStep

    steps = (
        DrillStep("auth-1 killed: the gateway serves without it", "kill -9 auth-1", True, 0.4),
        DrillStep(
            "PostgreSQL killed and restarted: the platform serves again",
            "kill -9 postgres",
            False,
            None,
            ("postgres on 127.0.0.1:5 (not running), log /x; log tail:\n  | FATAL",),
        ),
    )
    drill = RecoveryResult(DrillStatus.FAIL, "not recovered within the drill's timeout", 120, steps)
    result = GateResult(
        run_id="r",
        profile="smoke",
        provider="local",
        load_mode="closed",
        verdict=Verdict.NO_GO,
        window=None,
        objectives=(),
        queries={},
        cross_checks=(),
        acceptance=tuple(assess([RECOVERY], None, [], drill)),
        suites=None,
        client=None,
        recovery=drill,
    )
    markdown = render_markdown(result)
    assert "NO-GO; the recovery drill failed" in markdown
    assert "| auth-1 killed: the gateway serves without it | kill -9 auth-1 | 0.4 s |" in markdown
    assert "| kill -9 postgres | not recovered |" in markdown
    html = render_html(result)
    assert "<h2>Recovery drill</h2>" in html and "<pre>" in html
    junit = render_junit(result)
    assert '<testsuite name="recovery" tests="2" failures="1">' in junit
