"""AtendeAI load: clinic staff, managers, token refreshes and health probes.

    atendeai up --json stack.json                       # the stack, in another shell
    locust -f loadtests/locustfile.py --stack-json stack.json --host GATEWAY_URL
    locust -f loadtests/locustfile.py --stack-json stack.json --host GATEWAY_URL \\
        --headless --load-profile smoke                     # no web UI
    locust -f loadtests/locustfile.py ... --processes 2  # one worker per core

Every simulated person has an account of its own (seeded straight into
PostgreSQL through the stack's owner DSN when the test starts) and a client
address of its own (``X-Forwarded-For``), as real clinics would. Requests are
named by route template so statistics group per endpoint.

``--arrival-rate R`` switches to an open model: requests start at R per
second whatever the answers' speed, so a slow server cannot hide by slowing
the load (coordinated omission). Otherwise users wait 1-3 s between tasks.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import gevent
from locust import FastHttpUser, LoadTestShape, between, events, task
from locust.exception import StopUser

from harness.gate.cpu import LATE_MS, VERY_LATE_MS
from harness.loadseed import LoadAccount, seed_load_accounts
from harness.stack import Stack
from harness.tenants import login_body
from loadtests.profiles import PROFILES, Profile, Stage

CLIENT_NETWORK = ipaddress.ip_network("198.18.0.0/15")
PROBE_ROUTES = ("/health", "/status")


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    parser.add_argument(
        "--stack-json",
        env_var="ATENDEAI_STACK_JSON",
        default="",
        help="the stack description written by `atendeai up --json` (seeds accounts from it)",
    )
    parser.add_argument(
        "--load-profile",
        env_var="ATENDEAI_LOAD_PROFILE",
        default="",
        choices=["", *PROFILES],
        help="a named load shape (smoke, sla, spike, soak, capacity); empty = the web UI's numbers",
    )
    parser.add_argument(
        "--load-profile-scale",
        env_var="ATENDEAI_LOAD_PROFILE_SCALE",
        type=float,
        default=1.0,
        help="multiply every duration of the profile (0.1 = a ten times shorter rehearsal)",
    )
    parser.add_argument(
        "--accounts",
        env_var="ATENDEAI_LOAD_ACCOUNTS",
        type=int,
        default=0,
        help="accounts to seed per load process (default: the profile's peak users, min 50)",
    )
    parser.add_argument(
        "--load-stages",
        env_var="ATENDEAI_LOAD_STAGES",
        default="",
        help="the profile's stages replaced by JSON [[until_s, users, spawn_rate], ...]",
    )
    parser.add_argument(
        "--evidence-dir",
        env_var="ATENDEAI_EVIDENCE_DIR",
        default="",
        help="write per-second request counts and the ledger of writes here when the run ends",
    )
    parser.add_argument(
        "--writers",
        env_var="ATENDEAI_LOAD_WRITERS",
        type=int,
        default=0,
        help="managers who only write (add and rename staff, about one write a second each), "
        "for the ledger of the resilience drill; part of the user count (default 0)",
    )
    parser.add_argument(
        "--retry-sign-in",
        env_var="ATENDEAI_RETRY_SIGN_IN",
        action="store_true",
        default=False,
        help="a user whose sign-in is refused tries again 1-2 s later (default: it stops, "
        "which the capacity profile counts as a lost user)",
    )
    parser.add_argument(
        "--stop-file",
        env_var="ATENDEAI_STOP_FILE",
        default="",
        help="end the profile's run (cleanly) as soon as this file exists",
    )
    parser.add_argument(
        "--arrival-rate",
        env_var="ATENDEAI_ARRIVAL_RATE",
        type=float,
        default=0.0,
        help="open model: requests started per second regardless of answers (0 = closed model)",
    )
    parser.add_argument(
        "--capacity-json",
        env_var="ATENDEAI_CAPACITY_JSON",
        default="",
        help="capacity profile: when the run ends, write its finding here as JSON (the step "
        "that broke, why, and the last step that held)",
    )
    parser.add_argument(
        "--lateness-dir",
        env_var="ATENDEAI_LATENESS_DIR",
        default="",
        help="open model: when the run ends, write how late requests started against their "
        "schedule here (lateness-<pid>.json): a generator that falls behind is measuring itself",
    )


class AccountPool:
    """The accounts of this load process, handed out round-robin, seeded once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accounts: list[LoadAccount] = []
        self._cycle: itertools.cycle | None = None
        self._addresses = itertools.count(random.randrange(CLIENT_NETWORK.num_addresses - 2))

    def ensure(self, environment) -> None:
        with self._lock:
            if self._accounts:
                return
            options = environment.parsed_options
            if not options.stack_json:
                raise SystemExit(
                    "atendeai load: --stack-json is required "
                    "(write it with `atendeai up --json FILE`)"
                )
            stack = Stack.read_json(options.stack_json)
            wanted = options.accounts or max(50, _peak_users(options))
            self._accounts = seed_load_accounts(stack.postgres.owner_dsn, accounts=wanted)
            self._cycle = itertools.cycle(self._accounts)

    def take(self, role: str | None = None) -> LoadAccount:
        assert self._cycle is not None, "accounts are seeded when the test starts"
        with self._lock:
            for _ in range(len(self._accounts)):
                account = next(self._cycle)
                if role is None or account.role == role:
                    return account
        raise StopUser(f"no {role} account seeded")

    def client_ip(self) -> str:
        offset = 1 + next(self._addresses) % (CLIENT_NETWORK.num_addresses - 2)
        return str(CLIENT_NETWORK.network_address + offset)


ACCOUNTS = AccountPool()


def chosen_profile(options) -> Profile | None:
    """``--load-profile``, its stages replaced by ``--load-stages`` when given."""
    profile = PROFILES.get(options.load_profile or "")
    if profile is None or not options.load_stages:
        return profile
    try:
        stages = tuple(
            Stage(float(until), int(users), float(rate))
            for until, users, rate in json.loads(options.load_stages)
        )
    except (ValueError, TypeError) as error:
        raise SystemExit(
            f"atendeai load: --load-stages is not [[until_s, users, rate], ...]: {error}"
        ) from None
    if not stages:
        raise SystemExit("atendeai load: --load-stages is empty")
    return Profile(profile.name, profile.description, stages)


def _peak_users(options) -> int:
    profile = chosen_profile(options)
    if profile is None:
        return getattr(options, "num_users", None) or 50
    return profile.peak_users


@events.test_start.add_listener
def _seed_accounts(environment, **_kwargs) -> None:
    if environment.parsed_options is not None and not _is_master(environment):
        ACCOUNTS.ensure(environment)


@events.init.add_listener
def _choose_model(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:
        return
    if not options.load_profile:
        environment.shape_class = None  # the web UI's (or --users) numbers apply
    if options.arrival_rate > 0:
        environment.user_classes = [OpenArrivalUser]
    else:
        environment.user_classes = [c for c in environment.user_classes if c is not OpenArrivalUser]
    LedgerWriter.fixed_count = max(0, options.writers)
    if options.writers <= 0:
        environment.user_classes = [c for c in environment.user_classes if c is not LedgerWriter]


def _is_master(environment) -> bool:
    from locust.runners import MasterRunner

    return isinstance(environment.runner, MasterRunner)


class RunEvidence:
    """What this load process saw, kept for the resilience drill (``--evidence-dir``).

    - requests per second of start time, per endpoint: how many, how many failed
      and why (status code or exception), so a fault's window can be counted;
    - the ledger of writes (``harness.gate.ledger``): every write sent, with its
      values, tenant and outcome (acknowledged, answered failed, unknown).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.buckets: dict[tuple[int, str, str], list] = {}
        self.writes: list[dict] = []
        self._seq = itertools.count()

    def request(self, request_type, name, start_time, response, exception) -> None:
        if start_time is None:
            return
        key = (int(start_time), request_type, name)
        with self._lock:
            bucket = self.buckets.setdefault(key, [0, 0, Counter()])
            bucket[0] += 1
            if exception is not None:
                bucket[1] += 1
                status = getattr(response, "status_code", 0) or 0
                bucket[2][str(status) if status else type(exception).__name__] += 1

    def write(self, op: str, clinic_id, values: dict, response, *, user_id: str = "") -> str:
        """Note one write and its outcome; returns the outcome."""
        status = getattr(response, "status_code", 0) or 0
        outcome, detail = write_outcome(response)
        if outcome == "ack" and op == "create":
            user_id = response.json()["id"]
        entry = {
            "op": op,
            "clinic_id": str(clinic_id),
            "values": values,
            "outcome": outcome,
            "at": time.time(),
            "seq": next(self._seq),
            "user_id": user_id,
            "status": status,
            "detail": detail,
        }
        with self._lock:
            self.writes.append(entry)
        return outcome

    def save(self, directory: str) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            requests = [
                [second, method, name, count, failures, dict(kinds)]
                for (second, method, name), (count, failures, kinds) in sorted(self.buckets.items())
            ]
            _write_json(path / f"requests-{os.getpid()}.json", {"requests": requests})
            _write_json(path / f"ledger-{os.getpid()}.json", {"writes": self.writes})


def write_outcome(response) -> tuple[str, str]:
    """``ack`` (2xx), ``failed`` (the platform's JSON error shape) or ``unknown``
    (no answer from the platform: timeout, reset, the gateway's own 502/504)."""
    status = getattr(response, "status_code", 0) or 0
    if 200 <= status < 300:
        return "ack", ""
    if status:
        try:
            code = response.json()["error"]["code"]
        except Exception:  # not our shape: the gateway's page, or a cut-off body
            return "unknown", f"{status} without the platform's error body"
        return "failed", f"{status} {code}"
    error = getattr(response, "error", None)
    return "unknown", f"{type(error).__name__}: {error}"[:200]


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


EVIDENCE = RunEvidence()


class LateStartCounter:
    """Open model: how much later than scheduled each request started. A
    generator whose loop is too busy to start requests on time measures
    itself, not the platform (the harness marks its figures unreliable)."""

    LATE_S = LATE_MS / 1000
    VERY_LATE_S = VERY_LATE_MS / 1000

    def __init__(self) -> None:
        self.scheduled = 0
        self.late = 0
        self.very_late = 0
        self.max_late_s = 0.0

    def started(self, late_s: float) -> None:
        self.scheduled += 1
        if late_s > self.LATE_S:
            self.late += 1
            if late_s > self.VERY_LATE_S:
                self.very_late += 1
        self.max_late_s = max(self.max_late_s, late_s)

    def save(self, directory: str) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        data = {
            "scheduled": self.scheduled,
            "late": self.late,
            "very_late": self.very_late,
            "max_late_ms": round(self.max_late_s * 1000, 1),
        }
        _write_json(path / f"lateness-{os.getpid()}.json", data)


LATE_STARTS = LateStartCounter()


@events.request.add_listener
def _count_request(request_type, name, start_time=None, response=None, exception=None, **_kw):
    EVIDENCE.request(request_type, name, start_time, response, exception)


@events.quitting.add_listener
def _save_evidence(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is not None and options.evidence_dir and not _is_master(environment):
        EVIDENCE.save(options.evidence_dir)
    open_model = options is not None and options.arrival_rate > 0
    if open_model and options.lateness_dir and not _is_master(environment):
        LATE_STARTS.save(options.lateness_dir)


@events.quitting.add_listener
def _save_capacity_finding(environment, **_kwargs) -> None:
    """The capacity profile's finding, as data for the gate (the shape runs in
    the master, or in the only process)."""
    options = environment.parsed_options
    finding = getattr(environment.shape_class, "finding", None)
    if options is not None and options.capacity_json and finding is not None:
        _write_json(Path(options.capacity_json), finding)


class SignedInUser(FastHttpUser):
    """A person with an account: signs in once, refreshes the token as it expires."""

    abstract = True
    role: str | None = None

    def on_start(self) -> None:
        self.account = ACCOUNTS.take(self.role)
        self.client_ip = ACCOUNTS.client_ip()
        # Locust starts a second's worth of users in one burst (10 at the same
        # instant at 10 users/s); people arrive spread over that second.
        gevent.sleep(random.random())
        self.sign_in()

    def sign_in(self) -> None:
        """Sign in; a refusal stops this user, unless ``--retry-sign-in`` (the
        resilience drill: people try again while a component is away)."""
        while True:
            with self.client.post(
                "/auth/login",
                json=login_body(self.account),
                headers={"X-Forwarded-For": self.client_ip},
                name="/auth/login",
                catch_response=True,
            ) as response:
                if response.status_code == 200:
                    self._keep(response.json())
                    return
                response.failure(f"login answered {response.status_code}")
            if not self.environment.parsed_options.retry_sign_in:
                raise StopUser()
            gevent.sleep(1 + random.random())

    def _keep(self, pair: dict) -> None:
        self.access_token = pair["access_token"]
        self.refresh_token = pair["refresh_token"]
        # refresh at 80 % of the access token's life, as a browser client would
        self.refresh_at = time.monotonic() + 0.8 * pair["expires_in"]

    def headers(self) -> dict[str, str]:
        if time.monotonic() >= self.refresh_at:
            self.refresh()
        return {"Authorization": f"Bearer {self.access_token}", "X-Forwarded-For": self.client_ip}

    def refresh(self) -> None:
        with self.client.post(
            "/auth/refresh",
            json={"refresh_token": self.refresh_token},
            headers={"X-Forwarded-For": self.client_ip},
            name="/auth/refresh",
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                self._keep(response.json())
            else:
                response.failure(f"refresh answered {response.status_code}")
                self.sign_in()


class ClinicStaff(SignedInUser):
    """Reception and clinical staff: look at their clinic and themselves all day."""

    weight = 9  # about one manager for every nine staff, as in a small clinic
    role = "staff"
    wait_time = between(1, 3)

    @task(6)
    def my_clinic(self) -> None:
        self.client.get("/clinics/me", headers=self.headers(), name="/clinics/me")

    @task(2)
    def clinic_by_id(self) -> None:
        path = f"/clinics/{self.account.clinic_id}"
        self.client.get(path, headers=self.headers(), name="/clinics/{clinic_id}")

    @task(3)
    def me(self) -> None:
        self.client.get("/auth/me", headers=self.headers(), name="/auth/me")


class ClinicManager(SignedInUser):
    """Managers browse the team, now and then edit a name, rarely add someone.

    Adding a person hashes a password (bcrypt, ~70 ms of CPU here); at one
    add in 24 tasks a manager adds a colleague about once a minute.
    """

    weight = 1
    role = "manager"
    wait_time = between(1, 3)

    def on_start(self) -> None:
        super().on_start()
        self.created: list[str] = []

    @task(10)
    def team(self) -> None:
        self.client.get("/users?limit=20", headers=self.headers(), name="/users")

    @task(6)
    def colleague(self) -> None:
        self.client.get(
            f"/users/{self.account.user_id}", headers=self.headers(), name="/users/{user_id}"
        )

    @task(4)
    def my_clinic(self) -> None:
        self.client.get("/clinics/me", headers=self.headers(), name="/clinics/me")

    @task(1)
    def add_staff(self) -> None:
        tag = random.getrandbits(64)
        values = {"name": f"New staff {tag:x}", "email": f"staff-{tag:x}@load.example"}
        with self.client.post(
            "/users",
            json={**values, "password": f"load-pass-{tag:x}", "role": "staff"},
            headers=self.headers(),
            name="/users",
            catch_response=True,
        ) as response:
            if EVIDENCE.write("create", self.account.clinic_id, values, response) == "ack":
                self.created.append(response.json()["id"])
            else:
                response.failure(f"create answered {response.status_code}")

    @task(3)
    def rename_staff(self) -> None:
        if not self.created:
            return
        user_id = random.choice(self.created)
        values = {"name": f"Renamed {random.getrandbits(32):x}"}
        with self.client.patch(
            f"/users/{user_id}",
            json=values,
            headers=self.headers(),
            name="/users/{user_id}",
            catch_response=True,
        ) as response:
            outcome = EVIDENCE.write(
                "update", self.account.clinic_id, values, response, user_id=user_id
            )
            if outcome != "ack":
                response.failure(f"rename answered {response.status_code}")


class LedgerWriter(ClinicManager):
    """A manager who only writes: adds a colleague now and then, renames them often.

    ``--writers N`` runs N of them (none by default): the resilience drill's
    ledger needs a steady stream of acknowledged writes to check. Renames are
    cheap; an add hashes a password, so adds are one write in five.
    """

    weight = 1  # ignored: --writers sets fixed_count (Locust drops weight-0 classes)
    wait_time = between(0.5, 1.5)
    tasks = {ClinicManager.add_staff: 1, ClinicManager.rename_staff: 4}

    def on_start(self) -> None:
        super().on_start()
        self.add_staff()  # something to rename from the start


class HealthProbe(FastHttpUser):
    """An uptime checker: the platform status now and then."""

    weight = 1
    fixed_count = 1
    wait_time = between(5, 10)

    @task
    def status(self) -> None:
        self.client.get("/status", name="/status")


class OpenArrivalUser(SignedInUser):
    """Open model: each of these starts requests on a fixed schedule and never
    waits for an answer before starting the next (see --arrival-rate)."""

    role = "staff"
    wait_time = between(0, 0)  # the schedule below is the only pacing
    max_in_flight = 200

    @task
    def schedule(self) -> None:
        options = self.environment.parsed_options
        scheduled = time.monotonic()
        in_flight = gevent.pool.Pool(self.max_in_flight)
        while True:
            # waits while max_in_flight requests are unanswered: that start is late
            in_flight.spawn(self._one_request, scheduled)
            # each of the N running users starts one request every N / rate
            # seconds: together, the rate (N is re-read while users spawn)
            users = max(1, self.environment.runner.user_count)
            scheduled += users / options.arrival_rate
            delay = scheduled - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)

    def _one_request(self, scheduled: float) -> None:
        LATE_STARTS.started(time.monotonic() - scheduled)
        if random.random() < 0.7:
            self.client.get("/clinics/me", headers=self.headers(), name="/clinics/me")
        else:
            self.client.get("/auth/me", headers=self.headers(), name="/auth/me")


class ProfileShape(LoadTestShape):
    """Runs ``--load-profile``; without one, the web UI's own user count applies.

    For ``capacity`` a step holds when, once its users have all started and
    signed in (spawn time plus one 10 s statistics window), every p95 of
    Locust's current window up to the end of the step stayed under the
    objective, and no user was lost on the way (a user whose sign-in fails
    stops). The run stops at the first step that breaks and logs the last
    step that held with the worst p95 it saw.
    """

    SETTLE_S = 10.0  # Locust's current-window length

    def __init__(self) -> None:
        super().__init__()
        self.step_seen = 0
        self.step_worst_p95 = 0.0
        self.held: list[tuple[int, float]] = []
        self.finding: dict | None = None  # the capacity profile's answer, once decided

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options
        if options is None or not options.load_profile:
            return None
        if options.stop_file and os.path.exists(options.stop_file):
            return None  # asked to stop (the resilience drill is over)
        profile = chosen_profile(options).scaled(options.load_profile_scale)
        run_time = self.get_run_time()
        target = profile.target(run_time)
        if not profile.step_users:
            return target
        step = int(run_time // profile.step_s)
        if step > self.step_seen:  # the previous step just ended: did it hold?
            self.step_seen = step
            users = step * profile.step_users
            worst = self.step_worst_p95
            self.step_worst_p95 = 0.0
            if worst >= profile.p95_limit_ms or self.runner.user_count < users:
                self._report(profile, users, worst, broke=True)
                return None
            self.held.append((users, worst))
        elif run_time - step * profile.step_s >= self._settle_s(profile):
            p95 = self.runner.stats.total.get_current_response_time_percentile(0.95) or 0.0
            self.step_worst_p95 = max(self.step_worst_p95, p95)
        if target is None:
            self._report(profile, None, None, broke=False)
        return target

    def _settle_s(self, profile) -> float:
        return profile.step_users / profile.step_spawn_rate + 1 + self.SETTLE_S

    def _report(self, profile, users, p95, *, broke: bool) -> None:
        last = self.held[-1] if self.held else None
        if broke and self.runner.user_count < users:
            line = f"capacity: {users} users broke: only {self.runner.user_count} kept running"
        elif broke:
            line = f"capacity: {users} users broke p95 {profile.p95_limit_ms:g} ms ({p95:.0f} ms)"
        else:
            line = f"capacity: every step up to {profile.max_users} users held"
        held = (
            f"; last step that held: {last[0]} users at p95 {last[1]:.0f} ms (worst window)"
            if last
            else ""
        )
        self.finding = {
            "line": line + held,
            "users_broke": users if broke else None,
            "users_held": last[0] if last else None,
            "p95_held_ms": round(last[1]) if last else None,
        }
        logging.getLogger("atendeai.capacity").warning(line + held)
