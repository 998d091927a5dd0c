"""The resilience drill (faults under load): a short version of the plan on a real
stack under a small Locust load, and the proof that it turns red on the two
defects it exists to catch: a platform that acknowledges writes it then loses,
and one that never recovers from a frozen PostgreSQL.

Each test starts a local stack of its own whatever ``--stack`` says (the drill
kills PostgreSQL, Redis and service instances: never the session's ``stack``)
and a Locust process.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.gate.acceptance import CRITERIA, assess
from harness.gate.drill import DrillPlan, DrillResult, run_drill_under_load
from harness.gate.faultplan import Fault, FaultKind, fault_plan
from harness.gate.loadrun import LoadRunConfig
from harness.gate.report import render_html, render_junit, render_markdown
from harness.gate.result import GateResult
from harness.gate.slo import Verdict
from harness.gate.status import CheckStatus
from harness.prometheus_api import PrometheusClient, wait_for_stack_targets
from harness.providers import RunningStack, StackRequest, open_stack
from harness.stack import Credentials, PostgresEndpoints, Stack

RECOVERY = next(c for c in CRITERIA if c.spec_text == "Recovery time < 2 minutos")
USERS = 12
#: Longer than the platform's 5 s database deadline (ATENDEAI_DB_DEADLINE_SECONDS):
#: a shorter freeze is only waited out, and no request fails in its window.
HOLD_S = 7.0


def _say(line: str) -> None:
    print(f"drill: {line}", file=sys.stderr)


@contextmanager
def drill_stack(faults: str = "") -> Iterator[RunningStack]:
    env = (("ATENDEAI_FAULTS", faults),) if faults else ()
    with open_stack(StackRequest(service_env=env), progress=_say) as running:
        wait_for_stack_targets(running.stack, timeout_s=30)
        yield running


def drill(
    running: RunningStack, faults: tuple[Fault, ...], tmp_path: Path, **plan_options
) -> DrillResult:
    stack = running.stack
    stack_json = tmp_path / "stack.json"
    stack.write_json(stack_json)
    assert stack.haproxy_url and stack.prometheus_url
    options = {"quiet_s": 2.0, "steady_s": 4.0, "step_timeout_s": 30.0, "writers": 3}
    plan = DrillPlan(faults, users=USERS, **{**options, **plan_options})
    load = LoadRunConfig(
        profile="resilience",
        host=stack.haproxy_url,
        stack_json=stack_json,
        out_dir=tmp_path / "drill",
        target_users=USERS,
    )
    result, client = run_drill_under_load(
        stack,
        running.supervisor,
        plan,
        load=load,
        reader=PrometheusClient(stack.prometheus_url),
        progress=_say,
    )
    assert client is not None and client.aggregated.requests > 0
    return result


def test_the_short_drill_under_load_passes_and_counts_every_window(tmp_path):
    with drill_stack() as running:
        result = drill(running, plan := fault_plan(short=True, hold_s=HOLD_S), tmp_path)
    assert result.status is CheckStatus.PASS, result.reason
    assert [f.name for f in result.faults] == [f.name for f in plan]
    for fault in result.faults:
        assert fault.status is CheckStatus.PASS, fault.describe()
        assert fault.served_again_s is not None and fault.served_again_s < 10, fault.describe()
        assert fault.in_rotation_s is not None
        assert fault.window is not None and fault.window[1] > fault.window[0]
        assert fault.client.requests > 0, fault.describe()
    frozen = next(f for f in result.faults if f.name.startswith("postgres frozen"))
    # requests failed while PostgreSQL was frozen, and only as the platform's clean 503
    assert frozen.client.failures > 0, frozen.describe()
    assert set(frozen.client.kinds) <= {"503", "429"}, frozen.describe()
    ledger = result.ledger
    assert ledger is not None, result.ledger_note
    assert ledger.acknowledged >= 5 and ledger.lost == 0 and ledger.cross_tenant == 0
    assert result.unaffected_reads.requests > 50
    assert result.figure("lost_writes") == 0
    assert result.figure("worst_served_again_s") < 10

    [criterion] = assess([RECOVERY], None, [], result)
    assert criterion.status is CheckStatus.PASS, criterion.evidence


def test_a_platform_that_acknowledges_writes_it_loses_turns_the_drill_red(tmp_path):
    with drill_stack("POST /users ack_uncommitted") as running:
        result = drill(running, (Fault(FaultKind.KILL, "users-1"),), tmp_path)
    ledger = result.ledger
    assert ledger is not None, result.ledger_note
    assert ledger.lost > 0, ledger.summary()
    assert result.status is CheckStatus.FAIL
    assert "acknowledged writes lost" in result.reason
    assert any(example.startswith("lost: POST /users") for example in ledger.examples)


def test_a_platform_that_never_recovers_from_a_frozen_postgres_turns_the_drill_red(tmp_path):
    frozen = Fault(
        FaultKind.FREEZE, "postgres", hold_s=HOLD_S, reads_depend=True, clean_failures=True
    )
    with drill_stack("GET /ready stuck_after_db_error") as running:
        result = drill(running, (frozen,), tmp_path, step_timeout_s=15.0)
    [fault] = result.faults
    assert fault.status is CheckStatus.FAIL, fault.describe()
    assert fault.served_again_s is None
    assert "not served again" in fault.reason
    assert result.status is CheckStatus.FAIL
    assert result.figure("worst_served_again_s") == 15.0  # at least the whole timeout
    assert any("canary failures" in line for line in fault.evidence)


def test_an_external_stack_cannot_be_drilled_and_says_why(tmp_path):
    stack = Stack(
        provider="external",
        postgres=PostgresEndpoints("", "", "", "db.example", 5432, "atendeai"),
        redis_url="redis://cache.example",
        services={},
        platform_admin=Credentials("admin@example.com", "x" * 12),
        haproxy_url="http://gateway.example",
        haproxy_stats_url="http://gateway.example:8404/stats",
    )
    plan = DrillPlan(fault_plan(short=True), users=10)
    load = LoadRunConfig("resilience", "http://gateway.example", tmp_path / "s.json", tmp_path)
    result, client = run_drill_under_load(stack, None, plan, load=load, reader=None, progress=_say)
    assert client is None
    assert result.status is CheckStatus.NOT_VERIFIABLE and not result.faults
    assert "external provider" in result.reason
    [criterion] = assess([RECOVERY], None, [], result)
    assert criterion.status is CheckStatus.NOT_VERIFIABLE


def test_the_reports_show_each_fault_and_the_ledger(tmp_path):
    from harness.gate.drill import Counts, FaultResult
    from harness.gate.ledger import LedgerResult

    def fault(name: str, status: CheckStatus, served: float | None) -> FaultResult:
        return FaultResult(
            name=name, component=name.split()[-1], kind="kill -9", expectation="serves again",
            status=status, reason="why", window=(1.0, 5.0), served_again_s=served,
            in_rotation_s=served, taken_out_s=None, client=Counts(100, 3, {"503": 3}),
            server=None, server_note="NOT VERIFIABLE: Prometheus missed scrapes",
            evidence=("log tail:\n  | FATAL",),
        )  # fmt: skip

    ledger = LedgerResult(10, 8, 1, 1, 2, 0, 1, 0, 0, 1, ("lost: POST /users a@x",))
    drill_result = DrillResult(
        CheckStatus.FAIL,
        "2 acknowledged writes lost",
        faults=(
            fault("kill -9 auth-1", CheckStatus.PASS, 0.4),
            fault("kill -9 postgres", CheckStatus.FAIL, None),
            fault("auth-1 cut off", CheckStatus.NOT_VERIFIABLE, None),
        ),
        ledger=ledger,
        run=Counts(1000, 3),
        unaffected_reads=Counts(800, 0),
        users=12,
    )
    result = GateResult(
        run_id="r", profile="smoke", provider="local", load_mode="closed",
        verdict=Verdict.NO_GO, window=None, objectives=(), queries={}, cross_checks=(),
        acceptance=tuple(assess([RECOVERY], None, [], drill_result)), suites=None,
        client=None, recovery=drill_result,
    )  # fmt: skip
    markdown = render_markdown(result)
    assert "the resilience drill failed" in markdown
    assert "| kill -9 postgres | FAIL | never | never |" in markdown
    assert "lost 2" in markdown and "lost: POST /users a@x" in markdown
    html = render_html(result)
    assert "Resilience drill: faults under load" in html and "<pre>" in html
    junit = render_junit(result)
    assert '<testsuite name="resilience" tests="4" failures="2" skipped="1">' in junit
