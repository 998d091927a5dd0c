"""Tenant isolation as a hypothesis state machine, against a real database.

``TenantIsolation`` is a ``RuleBasedStateMachine`` that works as the service
role (``app_dsn``), keeps a model of what every clinic it made owns, and
compares the database with that model after every step;
``isolation_machine(connections, stats)`` binds it to one run's connections
(a subclass carrying a ``MachineBinding``: hypothesis makes the machines
without arguments):

- every example opens with two clinics of one user each, so every attack
  has a victim from the first step, and one round of every attack below
  (so a defect they show is caught in the first example, whatever
  hypothesis draws);
- rules create clinics, users, sessions and audit rows under random tenant
  contexts (sometimes with an actor from another clinic, as a platform admin
  acting for a new clinic does), rename and delete users;
- attack rules try cross-tenant INSERT, UPDATE and DELETE, moving rows to
  another clinic (a row by id, or every row of the clinic: ``MOVES``),
  reading without a context (fresh and reused connections) and reusing a
  pooled connection of size 1 after another tenant's transaction; they
  record what the database answered;
- invariants, after every step: each clinic's view under its own context
  equals its model (rows, names, audit count); the superuser's view (the
  truth) equals the model too, so "refused" is judged on row counts and data,
  not on exceptions; every audit row a step wrote carries the clinic of the
  context that wrote it.

A broken promise raises ``IsolationViolation`` naming the property and the
evidence. The machine only looks at the clinics it created itself, so it can
run against a database other tests use at the same time; ``teardown`` deletes
its clinics (users, sessions and audit rows go with them).

Everything the rules choose comes from hypothesis' draws over lists in a
fixed order (creation order, never the order of random UUIDs), so a
derandomized run is the same run every time: the planted-defect proofs rely
on it.

Statistics of a run (examples, steps, attacks tried) accumulate in
``IsolationStats`` for the suite's summary.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psycopg
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from psycopg import errors
from psycopg_pool import ConnectionPool

from harness.security import SecurityCheckFailed
from harness.tenant_rows import CONTEXT_CLINIC, insert_clinic, insert_users

TABLES = ("clinics", "users", "sessions", "audit_logs")
#: What the move rule tries to move to another clinic. The last has no WHERE: a
#: WHERE needs SELECT rights, which make PostgreSQL check the new row against the
#: SELECT policies too, so only a bare UPDATE is judged by the UPDATE policies'
#: WITH CHECK alone (and shows one that lets rows move).
MOVES = ("users", "sessions", "clinics", "every row of users")
#: Clinics per example: enough for every attack, few enough to check all after each step.
MAX_CLINICS = 4


class IsolationViolation(SecurityCheckFailed):
    """The database let one tenant see or change another's rows (or leaked context)."""


@dataclass(frozen=True)
class IsolationDsns:
    app_dsn: str
    superuser_dsn: str


@dataclass
class IsolationStats:
    examples: int = 0
    steps: int = 0
    actions: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        tried = ", ".join(f"{name} {count}" for name, count in sorted(self.actions.items()))
        return f"examples, {self.steps} steps ({tried})"


@dataclass
class ClinicModel:
    users: dict[uuid.UUID, str] = field(default_factory=dict)
    sessions: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)  # session -> user
    audit_rows: int = 0


@dataclass(frozen=True)
class UserRef:
    clinic_id: uuid.UUID
    user_id: uuid.UUID


class Connections:
    """The connections one test run shares between its examples (opened once)."""

    def __init__(self, dsns: IsolationDsns) -> None:
        self.dsns = dsns
        self.app = psycopg.connect(dsns.app_dsn, autocommit=True)
        self.truth = psycopg.connect(dsns.superuser_dsn, autocommit=True)
        self.pool = ConnectionPool(
            dsns.app_dsn, min_size=1, max_size=1, kwargs={"autocommit": True}, open=True
        )
        self.pool.wait(timeout=10)

    def close(self) -> None:
        self.pool.close()
        self.app.close()
        self.truth.close()


_names = itertools.count(1)


def _cross_tenant_statement(kind: str, table: str, victim: UserRef) -> tuple[str, list[Any]]:
    """The statement with which a tenant tries to write ``victim``'s rows."""
    if kind == "update":
        return {
            "clinics": (
                "update atendeai.clinics set name = 'hijacked' where id = %s",
                [victim.clinic_id],
            ),
            "users": (
                "update atendeai.users set name = 'hijacked' where id = %s",
                [victim.user_id],
            ),
            "sessions": (
                "update atendeai.sessions set revoked_at = now() where user_id = %s",
                [victim.user_id],
            ),
            "audit_logs": (
                "update atendeai.audit_logs set action = 'hijacked' where clinic_id = %s",
                [victim.clinic_id],
            ),
        }[table]
    if kind == "delete":
        column, target = {
            "clinics": ("id", victim.clinic_id),
            "users": ("id", victim.user_id),
            "sessions": ("user_id", victim.user_id),
            "audit_logs": ("clinic_id", victim.clinic_id),
        }[table]
        return f"delete from atendeai.{table} where {column} = %s", [target]
    return {
        "clinics": (
            "insert into atendeai.clinics (id, name) values (%s, 'Squatter')",
            [uuid.uuid4()],
        ),
        "users": (
            "insert into atendeai.users (clinic_id, name, email, password_hash, role)"
            " values (%s, 'Intruder', %s, 'x', 'admin')",
            [victim.clinic_id, f"intruder-{uuid.uuid4()}@isolation.test"],
        ),
        "sessions": (
            "insert into atendeai.sessions (clinic_id, user_id, family_id, token_hash,"
            " refresh_token_hash, expires_at) values (%s, %s, gen_random_uuid(), 't', %s, now())",
            [victim.clinic_id, victim.user_id, uuid.uuid4().hex],
        ),
        "audit_logs": (
            "insert into atendeai.audit_logs (clinic_id, action) values (%s, 'forged')",
            [victim.clinic_id],
        ),
    }[table]


def _move_statement(what: str, user: UserRef) -> tuple[str, list[Any]]:
    """The UPDATE that tries to move ``what`` of ``user`` to another clinic; its
    parameters after the first (the clinic to move to)."""
    return {
        "users": ("update atendeai.users set clinic_id = %s where id = %s", [user.user_id]),
        "sessions": (
            "update atendeai.sessions set clinic_id = %s where user_id = %s",
            [user.user_id],
        ),
        "clinics": ("update atendeai.clinics set id = %s where id = %s", [user.clinic_id]),
        "every row of users": ("update atendeai.users set clinic_id = %s", []),
    }[what]


# -- what a connection sees


def _tenant_view(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """What the connection's context sees: clinic ids, users, sessions, audit rows."""
    row = conn.execute(
        "select (select coalesce(array_agg(id order by id), '{}') from atendeai.clinics),"
        " (select coalesce(jsonb_object_agg(id, name), '{}') from atendeai.users),"
        " (select coalesce(jsonb_object_agg(id, user_id), '{}') from atendeai.sessions),"
        " (select count(*) from atendeai.audit_logs)"
    ).fetchone()
    assert row is not None
    return {
        "clinics": sorted(row[0]),
        "users": {uuid.UUID(k): v for k, v in row[1].items()},
        "sessions": {uuid.UUID(k): uuid.UUID(v) for k, v in row[2].items()},
        "audit_rows": row[3],
    }


def _truth(conn: psycopg.Connection[Any], clinics: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """The superuser's view of ``clinics``: clinic -> (users, sessions, audit rows)."""
    rows = conn.execute(
        "select c.id,"
        " (select coalesce(jsonb_object_agg(u.id, u.name), '{}') from atendeai.users u"
        "   where u.clinic_id = c.id),"
        " (select coalesce(jsonb_object_agg(s.id, s.user_id), '{}')"
        "   from atendeai.sessions s where s.clinic_id = c.id),"
        " (select count(*) from atendeai.audit_logs a where a.clinic_id = c.id)"
        " from atendeai.clinics c where c.id = any(%s)",
        [clinics],
    ).fetchall()
    return {
        row[0]: (
            {uuid.UUID(k): v for k, v in row[1].items()},
            {uuid.UUID(k): uuid.UUID(v) for k, v in row[2].items()},
            row[3],
        )
        for row in rows
    }


def _rows_without_context(conn: psycopg.Connection[Any]) -> tuple[str | None, dict[str, int]]:
    """The connection's ``atendeai.clinic_id`` setting and the rows it sees per table."""
    with conn.transaction():
        setting = conn.execute("select current_setting('atendeai.clinic_id', true)").fetchone()
        counts = {
            table: conn.execute(f"select count(*) from atendeai.{table}").fetchone()[0]
            for table in TABLES
        }
    return (setting[0] if setting else None), counts


# -- the machine


@dataclass(frozen=True)
class MachineBinding:
    """What a ``TenantIsolation`` class works on: shared connections and the run's stats."""

    connections: Connections
    stats: IsolationStats


class TenantIsolation(RuleBasedStateMachine):
    """The state machine (see the module docstring). Hypothesis makes its
    instances without arguments, so it runs as a subclass that carries its
    ``binding`` (``isolation_machine``)."""

    binding: ClassVar[MachineBinding]

    def __init__(self) -> None:
        super().__init__()
        binding = getattr(type(self), "binding", None)
        if binding is None:
            raise TypeError("TenantIsolation runs bound: use isolation_machine(connections)")
        self.conns = binding.connections
        self.stats = binding.stats
        self.model: dict[uuid.UUID, ClinicModel] = {}
        self.request_clinic: dict[str, uuid.UUID] = {}
        self.stats.examples += 1

    # -- helpers

    def _context(
        self, conn: psycopg.Connection[Any], clinic: uuid.UUID | None, actor: uuid.UUID | None
    ) -> str:
        request_id = f"iso-{uuid.uuid4().hex}"
        conn.execute(
            "select atendeai.set_request_context(%s, %s, %s, %s, %s)",
            [clinic, actor, "198.51.100.7", "isolation-machine", request_id],
        )
        if clinic is not None:
            self.request_clinic[request_id] = clinic
        return request_id

    @contextmanager
    def _tenant(
        self, clinic: uuid.UUID, actor: uuid.UUID | None
    ) -> Iterator[psycopg.Connection[Any]]:
        """The service role's connection, in a transaction under ``clinic``'s context."""
        conn = self.conns.app
        with conn.transaction():
            self._context(conn, clinic, actor)
            yield conn

    def _as_tenant(
        self, clinic: uuid.UUID, actor: uuid.UUID | None, statement: str, params: Any
    ) -> int:
        """Run one statement under ``clinic``'s context; return its rowcount."""
        with self._tenant(clinic, actor) as conn:
            return conn.execute(statement, params).rowcount

    def _refused(self, what: str, clinic: uuid.UUID, statement: str, params: Any) -> None:
        """A write that must change nothing: an error, or zero rows."""
        self.stats.actions[what] += 1
        try:
            count = self._as_tenant(clinic, None, statement, params)
        except (errors.InsufficientPrivilege, errors.IntegrityError):
            return  # refused by RLS (WITH CHECK) or by a constraint
        if count:
            raise IsolationViolation(
                f"{what}: under clinic {clinic}'s context the service role changed "
                f"{count} row(s) it must not touch: {statement} {params}"
            )

    # -- drawing targets from the model (never ``assume``: it discards the example)

    def _all_users(self) -> list[UserRef]:
        """Every user, in creation order (never UUID order: random per run)."""
        return [
            UserRef(clinic, user) for clinic, model in self.model.items() for user in model.users
        ]

    def _draw_clinic(self, data: st.DataObject) -> uuid.UUID:
        return data.draw(st.sampled_from(list(self.model)), label="clinic")

    def _draw_user(self, data: st.DataObject) -> UserRef:
        return data.draw(st.sampled_from(self._all_users()), label="user")

    def _draw_actor(self, data: st.DataObject) -> uuid.UUID | None:
        """No actor, or any user of any clinic (a platform admin acts for others)."""
        users = self._all_users()
        if not users or data.draw(st.booleans(), label="without actor"):
            return None
        return data.draw(st.sampled_from(users), label="actor").user_id

    def _draw_pair(self, data: st.DataObject) -> tuple[uuid.UUID, UserRef]:
        """A clinic, and a user of another clinic (the victim)."""
        victim = self._draw_user(data)
        others = [c for c in self.model if c != victim.clinic_id]
        return data.draw(st.sampled_from(others), label="attacker clinic"), victim

    def _has_users(self) -> bool:
        return any(model.users for model in self.model.values())

    def _has_victim(self) -> bool:
        return len(self.model) >= 2 and self._has_users()

    # -- rules: what tenants do

    @initialize()
    def opening(self) -> None:
        """Two clinics of one user each, so every attack has a victim from the
        first step (the second clinic made by the first one's user, as a
        platform admin acting for a new clinic); then the second clinic tries
        every write on the first once, and the reused connection is read
        without a context. A defect these show is caught in the first example
        whatever hypothesis draws; the rules explore everything else."""
        first = self._create_clinic(None)
        first_user = self._create_user(first, None)
        second = self._create_clinic(first_user)
        second_user = self._create_user(second, None)
        for kind in ("insert", "update", "delete"):
            self._attack(second, UserRef(first, first_user), kind)
        self._move_rows(first, UserRef(second, second_user))
        self._read_after_context(second)

    @precondition(lambda self: len(self.model) < MAX_CLINICS)
    @rule(data=st.data())
    def create_clinic(self, data: st.DataObject) -> None:
        self._create_clinic(self._draw_actor(data))

    def _create_clinic(self, actor: uuid.UUID | None) -> uuid.UUID:
        clinic = uuid.uuid4()
        with self._tenant(clinic, actor) as conn:
            insert_clinic(conn, {"id": clinic, "name": f"Isolation clinic {next(_names)}"})
        self.model[clinic] = ClinicModel(audit_rows=1)  # the insert's audit row
        self.stats.actions["create clinic"] += 1
        return clinic

    @rule(data=st.data())
    def create_user(self, data: st.DataObject) -> None:
        self._create_user(self._draw_clinic(data), self._draw_actor(data))

    def _create_user(self, clinic: uuid.UUID, actor: uuid.UUID | None) -> uuid.UUID:
        user = uuid.uuid4()
        name = f"User {next(_names)}"
        row = {
            "id": user,
            "clinic_id": CONTEXT_CLINIC,
            "name": name,
            "email": f"iso-{user}@isolation.test",
            "password_hash": "x",
            "role": "staff",
        }
        with self._tenant(clinic, actor) as conn:
            insert_users(conn, [row])
        self.model[clinic].users[user] = name
        self.model[clinic].audit_rows += 1
        self.stats.actions["create user"] += 1
        return user

    @precondition(_has_users)
    @rule(data=st.data())
    def create_session(self, data: st.DataObject) -> None:
        user = self._draw_user(data)
        session = uuid.uuid4()
        self._as_tenant(
            user.clinic_id,
            user.user_id,
            "insert into atendeai.sessions (id, clinic_id, user_id, family_id, token_hash,"
            " refresh_token_hash, expires_at) values (%s, atendeai.current_clinic_id(), %s,"
            " gen_random_uuid(), 't', %s, now() + interval '1 hour')",
            [session, user.user_id, uuid.uuid4().hex],
        )
        self.model[user.clinic_id].sessions[session] = user.user_id
        self.stats.actions["create session"] += 1

    @rule(data=st.data(), action=st.sampled_from(["note", "export"]))
    def write_audit(self, data: st.DataObject, action: str) -> None:
        clinic, actor = self._draw_clinic(data), self._draw_actor(data)
        self._as_tenant(
            clinic,
            actor,
            "insert into atendeai.audit_logs (clinic_id, user_id, action, request_id)"
            " values (atendeai.current_clinic_id(),"
            " nullif(current_setting('atendeai.user_id', true), '')::uuid, %s,"
            " nullif(current_setting('atendeai.request_id', true), ''))",
            [f"isolation.{action}"],
        )
        self.model[clinic].audit_rows += 1
        self.stats.actions["write audit"] += 1

    @precondition(_has_users)
    @rule(data=st.data())
    def rename_user(self, data: st.DataObject) -> None:
        user = self._draw_user(data)
        name = f"Renamed {next(_names)}"
        count = self._as_tenant(
            user.clinic_id,
            user.user_id,
            "update atendeai.users set name = %s where id = %s",
            [name, user.user_id],
        )
        if count != 1:
            raise IsolationViolation(
                f"clinic {user.clinic_id} could not rename its own user {user.user_id} "
                f"(rowcount {count}): its own rows must stay writable"
            )
        self.model[user.clinic_id].users[user.user_id] = name
        self.model[user.clinic_id].audit_rows += 1
        self.stats.actions["rename user"] += 1

    @precondition(_has_users)
    @rule(data=st.data())
    def delete_user(self, data: st.DataObject) -> None:
        user = self._draw_user(data)
        count = self._as_tenant(
            user.clinic_id, None, "delete from atendeai.users where id = %s", [user.user_id]
        )
        if count != 1:
            raise IsolationViolation(
                f"clinic {user.clinic_id} could not delete its own user {user.user_id}"
            )
        model = self.model[user.clinic_id]
        del model.users[user.user_id]
        model.sessions = {s: u for s, u in model.sessions.items() if u != user.user_id}
        model.audit_rows += 1
        self.stats.actions["delete user"] += 1

    # -- rules: what an attacker tries

    # One rule per kind of write: hypothesis enables a random subset of the
    # rules in each example (swarm testing), so more attack rules mean more
    # examples that attack. (The opening has tried every table already.)
    @precondition(_has_victim)
    @rule(data=st.data(), table=st.sampled_from(TABLES))
    def cross_tenant_update(self, data: st.DataObject, table: str) -> None:
        self._attack(*self._draw_pair(data), "update", [table])

    @precondition(_has_victim)
    @rule(data=st.data(), table=st.sampled_from(TABLES))
    def cross_tenant_delete(self, data: st.DataObject, table: str) -> None:
        self._attack(*self._draw_pair(data), "delete", [table])

    @precondition(_has_victim)
    @rule(data=st.data(), table=st.sampled_from(TABLES))
    def cross_tenant_insert(self, data: st.DataObject, table: str) -> None:
        self._attack(*self._draw_pair(data), "insert", [table])

    def _attack(
        self, clinic: uuid.UUID, victim: UserRef, kind: str, tables: Sequence[str] = TABLES
    ) -> None:
        for table in tables:
            statement, params = _cross_tenant_statement(kind, table, victim)
            self._refused(f"cross-tenant {kind} on {table}", clinic, statement, params)

    @precondition(_has_victim)
    @rule(data=st.data(), what=st.sampled_from(MOVES))
    def move_rows_to_another_clinic(self, data: st.DataObject, what: str) -> None:
        self._move_rows(*self._draw_pair(data), [what])

    def _move_rows(self, to: uuid.UUID, user: UserRef, moves: Sequence[str] = MOVES) -> None:
        """Try to move the user's rows (or every row of its clinic) to clinic ``to``."""
        for what in moves:
            statement, target = _move_statement(what, user)
            self._refused(f"move {what}", user.clinic_id, statement, [to, *target])

    @rule(data=st.data(), fresh=st.booleans())
    def read_without_context(self, data: st.DataObject, fresh: bool) -> None:
        if fresh:  # current_setting(...) is NULL: the setting was never made
            self.stats.actions["read without context (fresh connection)"] += 1
            with psycopg.connect(self.conns.dsns.app_dsn, autocommit=True) as conn:
                self._expect_no_rows(conn, "a fresh connection without a tenant context")
            return
        # current_setting(...) is '' once a transaction has set it and ended
        self._read_after_context(self._draw_clinic(data))

    def _read_after_context(self, clinic: uuid.UUID) -> None:
        self.stats.actions["read without context (reused connection)"] += 1
        with self._tenant(clinic, None) as conn:
            conn.execute("select count(*) from atendeai.users").fetchone()
        self._expect_no_rows(conn, f"a connection reused after clinic {clinic}'s transaction")

    @rule(data=st.data())
    def pooled_connection_of_size_one(self, data: st.DataObject) -> None:
        first, second = self._draw_clinic(data), self._draw_clinic(data)
        self.stats.actions["pool of size 1"] += 1
        with self.conns.pool.connection() as conn, conn.transaction():
            self._context(conn, first, None)
            conn.execute("select count(*) from atendeai.users").fetchone()
        with self.conns.pool.connection() as conn:
            self._expect_no_rows(conn, f"the pooled connection after clinic {first}'s transaction")
            with conn.transaction():
                self._context(conn, second, None)
                seen = _tenant_view(conn)
        expected = self._expected_view(second)
        if seen != expected:
            raise IsolationViolation(
                f"on the pooled connection after clinic {first}, clinic {second} saw "
                f"{seen}, but owns {expected}"
            )

    def _expect_no_rows(self, conn: psycopg.Connection[Any], where: str) -> None:
        setting, counts = _rows_without_context(conn)
        if any(counts.values()):
            raise IsolationViolation(
                f"{where} (atendeai.clinic_id = {setting!r}) "
                f"sees rows: {counts}; without a context it must see none"
            )

    # -- invariants

    def _expected_view(self, clinic: uuid.UUID) -> dict[str, Any]:
        model = self.model[clinic]
        return {
            "clinics": [clinic],
            "users": dict(model.users),
            "sessions": dict(model.sessions),
            "audit_rows": model.audit_rows,
        }

    @invariant()
    def each_tenant_sees_exactly_its_model(self) -> None:
        self.stats.steps += 1
        for clinic in self.model:
            with self._tenant(clinic, None) as conn:
                seen = _tenant_view(conn)
            expected = self._expected_view(clinic)
            if seen != expected:
                raise IsolationViolation(
                    f"under its own context clinic {clinic} sees {seen}, but owns {expected}"
                )

    @invariant()
    def the_truth_equals_the_model(self) -> None:
        if not self.model:
            return
        truth = _truth(self.conns.truth, list(self.model))
        for clinic, model in self.model.items():
            expected = (model.users, model.sessions, model.audit_rows)
            if truth.get(clinic) != expected:
                raise IsolationViolation(
                    f"the database holds {truth.get(clinic)} (users, sessions, audit rows) "
                    f"for clinic {clinic}, but the model says {expected}: a write changed "
                    "another tenant's data, or a tenant's own write was lost"
                )

    @invariant()
    def audit_rows_carry_the_context_clinic(self) -> None:
        if not self.request_clinic:
            return
        rows = self.conns.truth.execute(
            "select request_id, clinic_id from atendeai.audit_logs where request_id = any(%s)",
            [list(self.request_clinic)],
        ).fetchall()
        wrong = [
            (request, clinic, self.request_clinic[request])
            for request, clinic in rows
            if clinic != self.request_clinic[request]
        ]
        if wrong:
            request, written, context = wrong[0]
            raise IsolationViolation(
                f"an audit row of request {request} was written for clinic {written}, but "
                f"the context that wrote it was clinic {context} ({len(wrong)} such rows)"
            )

    def teardown(self) -> None:
        if self.model:
            with self.conns.truth.transaction():
                self.conns.truth.execute(
                    "delete from atendeai.clinics where id = any(%s)", [list(self.model)]
                )


def isolation_machine(
    connections: Connections, stats: IsolationStats | None = None
) -> type[TenantIsolation]:
    """``TenantIsolation`` bound to ``connections``, counting into ``stats``.

    The subclass keeps the name (and module) of ``TenantIsolation``: hypothesis
    derives a derandomized run's seed from the source of the class it runs,
    which is then the machine's source, as before."""
    binding = MachineBinding(connections, stats if stats is not None else IsolationStats())
    return type(TenantIsolation.__name__, (TenantIsolation,), {"binding": binding})


__all__ = [
    "Connections",
    "IsolationDsns",
    "IsolationStats",
    "IsolationViolation",
    "MachineBinding",
    "TenantIsolation",
    "isolation_machine",
]
