"""Run a Locust profile headless as a child process and read its figures back.

Locust runs in its own process (it monkey-patches the standard library with
gevent, which the harness must not inherit). Its CSV output is the client's
view of the run: per endpoint and aggregated counts and percentiles, and the
history over time. Progress lines are printed while it runs.

The generator is watched too (``harness.gate.cpu.GeneratorUse``): its CPU
(the kernel's own total for the reaped process tree), its busiest core, and
in the open arrival model how late requests started against their schedule
(the project's locustfile writes that with ``--lateness-dir``). When it could
not keep up, the client figures say so.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.exceptions import LoadRunError
from harness.gate.cpu import GeneratorUse, LateStarts, TreeSampler
from harness.processes import DIE_WITH_PARENT
from harness.progress import Progress

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"


@dataclass(frozen=True)
class LoadRunConfig:
    profile: str
    host: str
    stack_json: Path
    out_dir: Path
    profile_scale: float = 1.0
    processes: int = 1
    arrival_rate: float = 0.0
    target_users: int = 0  # the profile's peak, for the users_target_ratio figure
    locustfile: Path = LOCUSTFILE
    # The load generator shares the cores with the stack here; in a real test
    # it runs on its own machine. A lower priority keeps it from taking CPU
    # the services need (it still gets all it asks for while a core is idle):
    # see ``start_load_generator``.
    niceness: int = 10
    # the profile's stages replaced by these ((until_s, users, spawn_rate), ...)
    stages: tuple[tuple[float, int, float], ...] = ()
    # where Locust writes per-second request counts and the ledger of writes
    evidence_dir: Path | None = None
    writers: int = 0  # users who only write (the drill's ledger), part of the user count
    retry_sign_in: bool = False  # a refused sign-in is tried again instead of stopping the user
    # the run can be ended early through ``stop_file`` (the project's locustfile
    # knows --stop-file; a locustfile of one's own may not)
    stoppable: bool = False

    @property
    def lateness_dir(self) -> Path:
        """Where the locustfile writes how late open-arrival requests started."""
        return self.out_dir / "lateness"

    @property
    def capacity_json(self) -> Path:
        """Where the locustfile writes the capacity profile's finding."""
        return self.out_dir / "capacity.json"

    @property
    def stop_file(self) -> Path:
        """Locust ends the run (cleanly, statistics written) once this file exists."""
        return self.out_dir / "stop-requested"

    def command(self) -> list[str]:
        command = [
            "nice", "-n", str(self.niceness),
            sys.executable, "-m", "locust",
            "-f", str(self.locustfile),
            "--headless", "--only-summary",
            "--host", self.host,
            "--stack-json", str(self.stack_json),
            "--load-profile", self.profile,
            "--load-profile-scale", str(self.profile_scale),
            "--csv", str(self.out_dir / "locust"),
            "--csv-full-history",
            "--exit-code-on-error", "0",
        ]  # fmt: skip
        if self.stages:
            command += ["--load-stages", json.dumps([list(stage) for stage in self.stages])]
        if self.evidence_dir is not None:
            command += ["--evidence-dir", str(self.evidence_dir)]
        if self.writers:
            command += ["--writers", str(self.writers)]
        if self.retry_sign_in:
            command += ["--retry-sign-in"]
        if self.stoppable:
            command += ["--stop-file", str(self.stop_file)]
        if self.arrival_rate > 0:
            command += ["--arrival-rate", str(self.arrival_rate)]
            if self.locustfile == LOCUSTFILE:  # a locustfile of one's own may not know it
                command += ["--lateness-dir", str(self.lateness_dir)]
        if self.locustfile == LOCUSTFILE:  # the project's own knows where to put its finding
            command += ["--capacity-json", str(self.capacity_json)]
        if self.processes > 1:
            command += ["--processes", str(self.processes)]
        return command


@dataclass(frozen=True)
class EndpointFigures:
    method: str
    name: str
    requests: int
    failures: int
    median_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    requests_per_second: float

    @property
    def label(self) -> str:
        return f"{self.method} {self.name}".strip()


@dataclass(frozen=True)
class HistoryPoint:
    timestamp: int
    users: int
    requests_per_second: float
    failures_per_second: float
    p50_ms: float | None
    p95_ms: float | None


@dataclass(frozen=True)
class CapacityFinding:
    """The capacity profile's answer: the step that broke (None: every step
    held), the last step that held p95, if any, and the sentence that says so."""

    line: str
    users_held: int | None
    p95_held_ms: float | None
    users_broke: int | None = None

    @classmethod
    def read(cls, path: Path) -> CapacityFinding | None:
        """The finding the locustfile wrote as JSON when the run ended (see
        ``ProfileShape``); None when the profile is not ``capacity``."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as error:
            raise LoadRunError(
                f"the capacity finding {path} is unreadable ({error})", command=()
            ) from None
        held = data.get("p95_held_ms")
        return cls(
            line=str(data["line"]),
            users_held=data.get("users_held"),
            p95_held_ms=None if held is None else float(held),
            users_broke=data.get("users_broke"),
        )


@dataclass(frozen=True)
class ClientFigures:
    """What the load generator saw, for the window [started_at, ended_at]."""

    started_at: float
    ended_at: float
    aggregated: EndpointFigures
    endpoints: tuple[EndpointFigures, ...]
    history: tuple[HistoryPoint, ...] = field(default=())
    target_users: int = 0  # the profile's peak, when known
    capacity: CapacityFinding | None = None  # the capacity profile's answer
    generator: GeneratorUse | None = None  # the load generator's own CPU and pace

    @property
    def unreliable_because(self) -> tuple[str, ...]:
        """Why these figures measure the generator as much as the platform."""
        return self.generator.unreliable_because if self.generator else ()

    @property
    def users_peak(self) -> int:
        return max((p.users for p in self.history), default=0)

    @property
    def duration_s(self) -> float:
        return self.ended_at - self.started_at

    def figure(self, name: str) -> float | None:
        """A named figure for SLO objectives of ``source: locust``."""
        figures = {
            "users_peak": float(self.users_peak),
            "requests_per_second": self.aggregated.requests_per_second,
            "p95_ms": self.aggregated.p95_ms,
            "users_target_ratio": (
                self.users_peak / self.target_users if self.target_users else None
            ),
            "failure_ratio": (
                self.aggregated.failures / self.aggregated.requests
                if self.aggregated.requests
                else None
            ),
        }
        return figures.get(name)

    def figure_samples(self, name: str) -> int | None:
        """How many samples ``figure(name)`` rests on: the requests for request
        figures, the history's points (one a second) for user counts."""
        if name in ("requests_per_second", "p95_ms", "failure_ratio"):
            return self.aggregated.requests
        if name in ("users_peak", "users_target_ratio"):
            return len(self.history)
        return None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # Locust writes N/A before the first answer
        return None


def _endpoint(row: dict[str, str]) -> EndpointFigures:
    return EndpointFigures(
        method=row["Type"],
        name=row["Name"],
        requests=int(row["Request Count"]),
        failures=int(row["Failure Count"]),
        median_ms=_number(row["50%"]),
        p95_ms=_number(row["95%"]),
        p99_ms=_number(row["99%"]),
        requests_per_second=float(row["Requests/s"]),
    )


def read_locust_csv(
    prefix: Path, *, started_at: float, ended_at: float, target_users: int = 0
) -> ClientFigures:
    """Parse ``<prefix>_stats.csv`` and ``<prefix>_stats_history.csv``."""
    stats_path = Path(f"{prefix}_stats.csv")
    with stats_path.open(newline="") as handle:
        rows = [_endpoint(row) for row in csv.DictReader(handle)]
    aggregated = [r for r in rows if r.name == "Aggregated"]
    if not aggregated:
        raise ValueError(f"{stats_path}: no Aggregated row; did the load run at all?")
    history: list[HistoryPoint] = []
    history_path = Path(f"{prefix}_stats_history.csv")
    if history_path.exists():
        with history_path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row["Name"] != "Aggregated":
                    continue
                history.append(
                    HistoryPoint(
                        timestamp=int(row["Timestamp"]),
                        users=int(row["User Count"]),
                        requests_per_second=float(row["Requests/s"]),
                        failures_per_second=float(row["Failures/s"]),
                        p50_ms=_number(row["50%"]),
                        p95_ms=_number(row["95%"]),
                    )
                )
    return ClientFigures(
        started_at=started_at,
        ended_at=ended_at,
        aggregated=aggregated[0],
        endpoints=tuple(r for r in rows if r.name != "Aggregated"),
        history=tuple(history),
        target_users=target_users,
    )


def _latest_progress(prefix: Path) -> str | None:
    path = Path(f"{prefix}_stats_history.csv")
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines[1:]):
        row = next(csv.DictReader([lines[0], line]))
        if row["Name"] == "Aggregated":
            return (
                f"users {row['User Count']:>5}  {float(row['Requests/s']):7.1f} req/s  "
                f"p95 {row['95%']:>5} ms  failures {float(row['Failures/s']):.1f}/s"
            )
    return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_load(
    config: LoadRunConfig,
    *,
    progress: Progress,
    every_s: float = 5.0,
    timeout_s: float,
    stop: threading.Event | None = None,
) -> ClientFigures:
    """Run the profile; print progress every ``every_s``; return the client figures.

    When ``stop`` is set before the profile ends, Locust is asked to stop: the
    profile's shape ends the run at its next tick, as if the profile were over."""
    config.out_dir.mkdir(parents=True, exist_ok=True)
    config.stop_file.unlink(missing_ok=True)
    config.capacity_json.unlink(missing_ok=True)
    shutil.rmtree(config.lateness_dir, ignore_errors=True)
    log_path = config.out_dir / "locust.log"
    prefix = config.out_dir / "locust"
    command = config.command()
    started = time.time()
    cpu_s: float | None = None
    with log_path.open("w") as log, contextlib.ExitStack() as watching:
        process = start_load_generator(command, niceness=config.niceness, log=log)
        sampler = watching.enter_context(TreeSampler(process.pid))
        try:
            said = time.monotonic()
            while True:
                cpu_s = _reap(process)
                if process.returncode is not None:
                    break
                time.sleep(0.5)
                if stop is not None and stop.is_set() and config.stoppable:
                    config.stop_file.touch()  # once; then wait for it to finish
                    stop = None
                elapsed = time.time() - started
                if elapsed > timeout_s:
                    _stop_session(process, signal.SIGTERM)
                    process.wait(timeout=30)
                    raise LoadRunError(
                        f"it did not finish within {timeout_s:.0f} s",
                        command=command,
                        log_tail=_tail(log_path),
                    ) from None
                if time.monotonic() - said >= every_s:
                    said = time.monotonic()
                    line = _latest_progress(prefix)
                    if line:
                        progress(f"load {config.profile} {elapsed:5.0f}s  {line}")
        finally:
            if process.poll() is None:
                _stop_session(process, signal.SIGKILL)
                process.wait()
    ended = time.time()
    if process.returncode != 0:
        raise LoadRunError(
            f"locust exited with code {process.returncode} (log: {log_path})",
            command=command,
            log_tail=_tail(log_path),
        )
    figures = read_locust_csv(
        prefix, started_at=started, ended_at=ended, target_users=config.target_users
    )
    capacity = CapacityFinding.read(config.capacity_json)
    busy_from = min(
        (float(p.timestamp) for p in figures.history if p.requests_per_second > 0),
        default=started,
    )
    generator = GeneratorUse(
        cpu_s=cpu_s,
        window_s=round(ended - started, 1),
        requests=figures.aggregated.requests,
        busiest_core_share=sampler.busiest_share(since=busy_from),
        demand_share=sampler.demand_share(since=busy_from),
        late_starts=read_late_starts(config.lateness_dir),
    )
    return dataclasses.replace(figures, capacity=capacity, generator=generator)


def start_load_generator(command: list[str], *, niceness: int, log) -> subprocess.Popen:
    """Start Locust in a session of its own, at ``niceness`` for the whole session.

    Linux's scheduler (``kernel.sched_autogroup_enabled``, on by default) shares
    the CPU fairly between *sessions* first, and ``nice`` only orders the
    threads inside one. Each process of the local stack runs in a session of
    its own; Locust in the gate's session would get a full session's share,
    whatever its ``nice``. So it gets a session of its own, whose share is
    lowered the way the kernel provides, ``/proc/<pid>/autogroup``. Without
    autogroups that file is absent and the ``nice`` of the command line counts.
    """
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=DIE_WITH_PARENT,  # never left running when the harness is killed
    )
    with contextlib.suppress(OSError):
        Path(f"/proc/{process.pid}/autogroup").write_text(str(niceness))
    return process


def _stop_session(process: subprocess.Popen, signal_number: int) -> None:
    """Signal Locust and its worker processes (one session, one process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal_number)


def _reap(process: subprocess.Popen) -> float | None:
    """Reap ``process`` if it ended (setting its returncode) and return the CPU
    seconds it and its reaped children used, from the kernel (``wait4``)."""
    pid, status, usage = os.wait4(process.pid, os.WNOHANG)
    if pid == 0:
        return None
    process.returncode = os.waitstatus_to_exitcode(status)
    return round(usage.ru_utime + usage.ru_stime, 3)


def read_late_starts(directory: Path) -> LateStarts | None:
    """Merge the ``lateness-<pid>.json`` files the locustfile's processes wrote."""
    parts = []
    for path in sorted(directory.glob("lateness-*.json")):
        data = json.loads(path.read_text())
        parts.append(
            LateStarts(
                scheduled=int(data["scheduled"]),
                late=int(data["late"]),
                very_late=int(data["very_late"]),
                max_late_ms=float(data["max_late_ms"]),
            )
        )
    return LateStarts.merged(parts)
