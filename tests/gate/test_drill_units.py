"""The drill's arithmetic without a stack: the ledger's judgement of one user's
renames, the counting of a fault's window, and the reads left out of the
"reads that do not depend on the failed component" availability."""

from __future__ import annotations

import json

import pytest

from harness.exceptions import ConfigurationError
from harness.gate.drill import DrillPlan, FaultRecord, analyse, count, read_request_counts
from harness.gate.faultplan import Fault, FaultKind, fault_plan
from harness.gate.ledger import Write, _judge_updates, _Row, read_ledger
from harness.gate.status import CheckStatus

CLINIC = "c1"


def rename(name: str, outcome: str, seq: int) -> Write:
    return Write("update", CLINIC, {"name": name}, outcome, at=float(seq), seq=seq, user_id="u1")


def test_the_last_acknowledged_rename_stored_is_no_loss():
    history = [rename("a", "ack", 1), rename("b", "ack", 2)]
    assert _judge_updates(history, _Row(CLINIC, "x@y", "b")).lost == 0


def test_an_earlier_name_stored_after_a_later_acknowledged_rename_is_a_lost_update():
    history = [rename("a", "ack", 1), rename("b", "ack", 2)]
    judged = _judge_updates(history, _Row(CLINIC, "x@y", "a"))
    assert judged.lost == 1 and "acknowledged name 'b'" in judged.example


def test_unknown_and_failed_renames_after_the_last_ack_resolve_as_applied_or_unexpected():
    history = [rename("a", "ack", 1), rename("b", "unknown", 2), rename("c", "failed", 3)]
    assert _judge_updates(history, _Row(CLINIC, "x@y", "b")).applied == 1
    unexpected = _judge_updates(history, _Row(CLINIC, "x@y", "c"))
    assert unexpected.unexpected == 1 and unexpected.lost == 0


def test_a_renamed_user_found_in_another_clinic_is_lost_across_tenants():
    judged = _judge_updates([rename("a", "ack", 1)], _Row("c2", "x@y", "a"))
    assert judged.lost == 1 and judged.cross == 1


def test_an_unreadable_ledger_file_is_an_error_not_a_skip(tmp_path):
    (tmp_path / "ledger-1.json").write_text(json.dumps({"writes": [{"op": "create"}]}))
    with pytest.raises(ConfigurationError, match=r"ledger-1\.json is unreadable"):
        read_ledger(tmp_path)


def _evidence(tmp_path, rows) -> None:
    (tmp_path / "requests-1.json").write_text(json.dumps({"requests": rows}))
    (tmp_path / "ledger-1.json").write_text(json.dumps({"writes": []}))


def test_a_window_counts_the_seconds_it_covers_and_failure_kinds_add_up(tmp_path):
    _evidence(
        tmp_path,
        [
            [100, "GET", "/auth/me", 10, 0, {}],
            [105, "GET", "/auth/me", 10, 4, {"503": 4}],
            [106, "POST", "/auth/login", 2, 2, {"503": 1, "RemoteDisconnected": 1}],
            [120, "GET", "/auth/me", 10, 0, {}],
        ],
    )
    buckets = read_request_counts(tmp_path)
    window = count(buckets, lambda b: 104.2 <= b[0] <= 107)
    assert (window.requests, window.failures) == (12, 6)
    assert window.kinds == {"503": 5, "RemoteDisconnected": 1}
    assert window.availability == pytest.approx(0.5)


def test_reads_needing_the_failed_component_are_left_out_only_in_its_window(tmp_path):
    _evidence(
        tmp_path,
        [
            [100, "GET", "/clinics/me", 50, 0, {}],  # before: counted
            [110, "GET", "/clinics/me", 50, 40, {"503": 40}],  # PostgreSQL away: left out
            [110, "POST", "/users", 5, 5, {"503": 5}],  # a write: never a "read"
            [130, "GET", "/clinics/me", 50, 1, {"503": 1}],  # Redis away: reads count
            [140, "GET", "/status", 9, 9, {"503": 9}],  # a probe: not a read
        ],
    )
    postgres = FaultRecord(
        Fault(FaultKind.FREEZE, "postgres", hold_s=5, reads_depend=True),
        CheckStatus.PASS, "ok", injected_at=108.0, ended_at=113.0, served_again_s=0.5,
        in_rotation_s=1.0, window_end=114.0,
    )  # fmt: skip
    redis = FaultRecord(
        Fault(FaultKind.KILL, "redis"), CheckStatus.PASS, "ok", injected_at=129.5,
        ended_at=129.5, served_again_s=0.2, in_rotation_s=0.5, window_end=130.5,
    )  # fmt: skip
    result = analyse(
        [postgres, redis],
        evidence_dir=tmp_path,
        reader=None,
        superuser_dsn=None,
        phase=(95.0, 150.0),
        users=10,
    )
    assert (result.unaffected_reads.requests, result.unaffected_reads.failures) == (100, 1)
    assert result.run.requests == 164 and result.run.failures == 55
    assert result.faults[0].client.failures == 45  # the window: reads and the write
    assert result.faults[0].server is None and "no Prometheus" in result.faults[0].server_note
    # without a superuser connection the ledger cannot be checked: never a pass
    assert result.ledger is None and result.status is CheckStatus.NOT_VERIFIABLE


def test_a_frozen_postgres_that_made_requests_hang_fails_the_fault(tmp_path):
    _evidence(tmp_path, [[110, "GET", "/auth/me", 20, 6, {"503": 2, "504": 4}]])
    frozen = FaultRecord(
        Fault(FaultKind.FREEZE, "postgres", hold_s=5, reads_depend=True, clean_failures=True),
        CheckStatus.PASS, "ok", injected_at=108.0, ended_at=113.0, served_again_s=0.5,
        in_rotation_s=1.0, window_end=114.0,
    )  # fmt: skip
    result = analyse(
        [frozen], evidence_dir=tmp_path, reader=None, superuser_dsn=None, phase=(100, 120), users=5
    )
    assert result.faults[0].status is CheckStatus.FAIL
    assert "504 x4" in result.faults[0].reason and result.status is CheckStatus.FAIL


def test_the_plan_names_every_component_and_the_load_outlasts_it():
    names = [f.name for f in fault_plan()]
    assert names[:4] == [
        "kill -9 auth-1",
        "kill -9 users-1",
        "kill -9 clinics-1",
        "kill -9 health-1",
    ]
    assert {"kill -9 postgres", "postgres frozen 10 s", "kill -9 redis", "redis frozen 10 s",
            "kill -9 haproxy", "kill -9 prometheus"} <= set(names)  # fmt: skip
    plan = DrillPlan.for_users(1000)
    assert plan.writer_users == 10 and plan.ramp_s == 105
    assert plan.load_stages()[0][0] == plan.longest_s > 20 * 60
    with pytest.raises(ConfigurationError):
        DrillPlan((), users=10)
