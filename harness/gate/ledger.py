"""The ledger of writes: what the platform acknowledged, checked against the database.

During a load run the writer users (``ClinicManager`` in the locustfile) note
every write they send: the values, the tenant, and the outcome:

- ``ack``: a 2xx; the platform said it is saved (with the id it returned);
- ``failed``: the platform answered with its JSON error shape (4xx/5xx): it
  says nothing was saved;
- ``unknown``: no answer from the platform (timeout, connection reset, the
  gateway's own 502/504): it may or may not have been saved.

After the run ``check_ledger`` reads the truth as the database superuser
(RLS does not hide anything from it) and counts, as Jepsen does for a set of
acknowledged adds:

- ``lost``: acknowledged but missing, different, or in another clinic (must be 0);
- ``unexpected``: present although the platform answered that it failed;
- unknown outcomes, by how they resolved (applied or not).

Updates of one user are serial (only the manager who created a person renames
them, one task at a time), so the final name must be the last acknowledged
one, or a later write whose outcome was unknown (applied) or failed
(unexpected); anything else is a lost update.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.exceptions import ConfigurationError

OUTCOMES = ("ack", "failed", "unknown")
LEDGER_GLOB = "ledger-*.json"
#: Examples of each kind of discrepancy kept for the report.
EXAMPLES = 5


@dataclass(frozen=True)
class Write:
    """One write a load user sent, as the ledger file records it."""

    op: str  # "create" (POST /users) or "update" (PATCH /users/{id})
    clinic_id: str
    values: dict[str, str]
    outcome: str  # "ack", "failed" or "unknown"
    at: float  # when it was sent (epoch seconds)
    seq: int  # the order of sending within its load process
    user_id: str = ""  # the id acknowledged (create) or the target (update)
    status: int = 0
    detail: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Write:
        write = cls(
            op=str(data["op"]),
            clinic_id=str(data["clinic_id"]),
            values={str(k): str(v) for k, v in dict(data["values"]).items()},
            outcome=str(data["outcome"]),
            at=float(data["at"]),
            seq=int(data["seq"]),
            user_id=str(data.get("user_id") or ""),
            status=int(data.get("status") or 0),
            detail=str(data.get("detail") or ""),
        )
        if write.op not in ("create", "update") or write.outcome not in OUTCOMES:
            raise ValueError(f"unknown op or outcome: {data!r}")
        if write.op == "update" and not write.user_id:
            raise ValueError(f"an update without its user id: {data!r}")
        return write


@dataclass(frozen=True)
class LedgerResult:
    """The ledger checked against the database."""

    writes: int
    acknowledged: int
    failed: int
    unknown: int
    lost: int
    unexpected: int
    unknown_applied: int
    unknown_not_applied: int
    cross_tenant: int  # acknowledged writes found in another clinic (counted in lost too)
    files: int
    examples: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.lost == 0

    def summary(self) -> str:
        return (
            f"{self.writes} writes: {self.acknowledged} acknowledged, {self.failed} answered "
            f"failed, {self.unknown} unknown; lost {self.lost} (in another clinic "
            f"{self.cross_tenant}), unexpected {self.unexpected}; unknown resolved: "
            f"{self.unknown_applied} applied, {self.unknown_not_applied} not applied"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "writes": self.writes,
            "acknowledged": self.acknowledged,
            "failed": self.failed,
            "unknown": self.unknown,
            "lost": self.lost,
            "unexpected": self.unexpected,
            "unknown_applied": self.unknown_applied,
            "unknown_not_applied": self.unknown_not_applied,
            "cross_tenant": self.cross_tenant,
            "files": self.files,
            "examples": list(self.examples),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LedgerResult:
        return cls(**{**data, "examples": tuple(data.get("examples", ()))})


def read_ledger(directory: Path) -> tuple[list[Write], int]:
    """Every write recorded in ``directory`` (one ledger file per load process), and
    how many files there were. A file that cannot be read is an error, not a skip:
    a ledger with holes cannot prove that nothing was lost."""
    writes: list[Write] = []
    paths = sorted(directory.glob(LEDGER_GLOB))
    for path in paths:
        try:
            entries = json.loads(path.read_text())["writes"]
            writes.extend(Write.from_dict(entry) for entry in entries)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigurationError(f"the write ledger {path} is unreadable: {error}") from None
    return writes, len(paths)


@dataclass(frozen=True)
class _Row:
    clinic_id: str
    email: str
    name: str


def check_ledger(writes: Sequence[Write], superuser_dsn: str, *, files: int = 0) -> LedgerResult:
    """Compare every write with the database's rows (read as the superuser)."""
    by_id, by_email = _read_rows(superuser_dsn, writes)
    creates = [w for w in writes if w.op == "create"]
    updates = sorted((w for w in writes if w.op == "update"), key=lambda w: (w.at, w.seq))
    lost, unexpected, applied, not_applied, cross = 0, 0, 0, 0, 0
    examples: list[str] = []

    def note(text: str) -> None:
        if len(examples) < EXAMPLES:
            examples.append(text)

    for write in creates:
        row = by_email.get((write.clinic_id, write.values["email"].lower()))
        elsewhere = [r for key, r in by_email.items() if key[1] == write.values["email"].lower()]
        if write.outcome == "ack":
            stored = by_id.get(write.user_id)
            if stored is None or stored.email.lower() != write.values["email"].lower():
                lost += 1
                note(f"lost: POST /users {write.values['email']} acknowledged as {write.user_id}")
            elif stored.clinic_id != write.clinic_id:
                lost += 1
                cross += 1
                note(f"in another clinic: {write.user_id} is in {stored.clinic_id}")
        elif write.outcome == "failed":
            if row is not None or elsewhere:
                unexpected += 1
                note(f"unexpected: POST /users {write.values['email']} answered {write.status}")
        elif row is not None:
            applied += 1
        else:
            not_applied += 1

    final_by_user: dict[str, list[Write]] = {}
    for write in updates:
        final_by_user.setdefault(write.user_id, []).append(write)
    for user_id, history in final_by_user.items():
        stored = by_id.get(user_id)
        result = _judge_updates(history, stored)
        lost += result.lost
        cross += result.cross
        unexpected += result.unexpected
        applied += result.applied
        not_applied += result.not_applied
        if result.example:
            note(result.example)

    return LedgerResult(
        writes=len(writes),
        acknowledged=sum(w.outcome == "ack" for w in writes),
        failed=sum(w.outcome == "failed" for w in writes),
        unknown=sum(w.outcome == "unknown" for w in writes),
        lost=lost,
        unexpected=unexpected,
        unknown_applied=applied,
        unknown_not_applied=not_applied,
        cross_tenant=cross,
        files=files,
        examples=tuple(examples),
    )


@dataclass(frozen=True)
class _UpdateJudgement:
    lost: int = 0
    cross: int = 0
    unexpected: int = 0
    applied: int = 0
    not_applied: int = 0
    example: str = ""


def _judge_updates(history: list[Write], stored: _Row | None) -> _UpdateJudgement:
    """One user's renames, in the order sent, against the name stored now."""
    acked = [i for i, w in enumerate(history) if w.outcome == "ack"]
    unknown = sum(w.outcome == "unknown" for w in history)
    user_id = history[0].user_id
    if stored is None:
        if acked:
            return _UpdateJudgement(
                lost=len(acked), example=f"lost: user {user_id} renamed but no longer exists"
            )
        return _UpdateJudgement(not_applied=unknown)
    if stored.clinic_id != history[0].clinic_id:
        return _UpdateJudgement(
            lost=max(1, len(acked)),
            cross=1,
            example=f"in another clinic: user {user_id} is in {stored.clinic_id}",
        )
    last_ack = acked[-1] if acked else -1
    candidates = history[last_ack:] if last_ack >= 0 else history
    if last_ack < 0 and all(w.values["name"] != stored.name for w in history):
        return _UpdateJudgement(not_applied=unknown)  # none applied: still the original name
    for write in reversed(candidates):
        if write.values["name"] != stored.name:
            continue
        if write.outcome == "ack":
            return _UpdateJudgement(not_applied=unknown)
        if write.outcome == "unknown":
            return _UpdateJudgement(applied=1, not_applied=max(0, unknown - 1))
        return _UpdateJudgement(
            unexpected=1,
            not_applied=unknown,
            example=f"unexpected: PATCH /users/{user_id} answered {write.status} but applied",
        )
    return _UpdateJudgement(
        lost=1,
        not_applied=unknown,
        example=(
            f"lost: PATCH /users/{user_id} acknowledged name "
            f"{history[last_ack].values['name']!r}, stored {stored.name!r}"
        ),
    )


def _read_rows(
    superuser_dsn: str, writes: Iterable[Write]
) -> tuple[dict[str, _Row], dict[tuple[str, str], _Row]]:
    """The users rows the ledger names, by id and by (clinic, lower(email))."""
    import psycopg

    ids = sorted({w.user_id for w in writes if w.user_id})
    emails = sorted({w.values["email"].lower() for w in writes if w.op == "create"})
    with psycopg.connect(superuser_dsn, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT id::text, clinic_id::text, email, name FROM atendeai.users"
            " WHERE id::text = ANY(%s) OR lower(email) = ANY(%s)",
            [ids, emails],
        ).fetchall()
    by_id = {r[0]: _Row(r[1], r[2], r[3]) for r in rows}
    by_email = {(r[1], r[2].lower()): _Row(r[1], r[2], r[3]) for r in rows}
    return by_id, by_email


__all__ = ["LEDGER_GLOB", "LedgerResult", "Write", "check_ledger", "read_ledger"]
