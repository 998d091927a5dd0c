"""CPU time the stack spent over the load window, per component, read from /proc.

Latency on a shared 2-core VM moves 2-4x from one host to the next; the CPU a
request costs does not. ``sample_cpu`` reads, for every component the provider
supervises, the CPU seconds (user + system) of its process and every
descendant (PostgreSQL's backends), including what finished descendants left
in their parent's ``cutime``/``cstime`` once reaped, so a backend that ended
inside the window still counts. Two samples around the load give ``CpuUse``:
seconds per component, and milliseconds per request served.

The load generator is measured apart (``GeneratorUse``): its total CPU comes
from the kernel's accounting when it is reaped (``os.wait4``), and its
busiest-core share from ``TreeSampler``, which reads each of its processes
once a second. One Locust process is one gevent loop on one core: when that
share nears 100 %, the client's clock measures the generator, not the
platform. The sampler also reads how long each process was ready to run but
waited for a core (``/proc/<pid>/schedstat``): the generator runs at a lower
share than the stack, so on a saturated machine it is starved long before it
is busy. Running or waiting to run, it had work it could not put off: when
that nears 100 %, it is behind as surely as when it is busy, and its clock
counts its own wait as the platform's latency.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.processes import children_by_parent

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: ``auth-1``, ``users-2``: service instances, grouped by service.
_INSTANCE = re.compile(r"(?P<service>[a-z]+)-\d+")


def own_cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of one process; 0 when it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    # the command name (field 2) may hold spaces: the fields after it follow ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / CLOCK_TICKS


def _tree(root: int, children: Mapping[int, Iterable[int]]) -> set[int]:
    seen: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, ()))
    return seen


def tree_cpu_seconds(root: int, children: Mapping[int, Iterable[int]] | None = None) -> float:
    """CPU seconds of ``root`` and its live descendants (with what reaped ones left)."""
    children = children_by_parent() if children is None else children
    return sum(own_cpu_seconds(pid) for pid in _tree(root, children))


def _self_cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process alone (no reaped children); None when gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _demand_seconds(pid: int) -> float | None:
    """Seconds the process's main thread (where Locust's gevent loop runs) so
    far spent on a core or ready to run and waiting for one: ``schedstat``'s
    first two fields. None when the kernel does not say."""
    try:
        on_core, waiting = (PROC / str(pid) / "schedstat").read_text().split()[:2]
        return (int(on_core) + int(waiting)) / 1e9
    except (OSError, ValueError):
        return None


#: One sample: wall time, and CPU seconds so far of each process of the tree.
Sample = tuple[float, dict[int, float]]


class TreeSampler:
    """Reads the CPU of every process under ``root`` every ``interval_s``, on a thread.

    ``with TreeSampler(pid) as sampler: ...`` then ``sampler.busiest_share()``:
    the highest share of one core any single process of the tree used over
    ``span_s`` consecutive seconds (one process runs on one core at a time).
    """

    def __init__(self, root: int, *, interval_s: float = 1.0) -> None:
        self.root = root
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        # the same, of the main thread's seconds on a core or waiting for one
        self.demand: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                return

    def sample(self) -> None:
        pids = _tree(self.root, children_by_parent())
        now = time.time()
        cpu = {pid: c for pid in pids if (c := _self_cpu_seconds(pid)) is not None}
        if cpu:
            self.samples.append((now, cpu))
        demand = {pid: d for pid in cpu if (d := _demand_seconds(pid)) is not None}
        if demand:
            self.demand.append((now, demand))

    def busiest_share(self, *, since: float = 0.0, span_s: float = 5.0) -> float | None:
        return busiest_share(self.samples, since=since, span_s=span_s)

    def demand_share(self, *, since: float = 0.0, span_s: float = 5.0) -> float | None:
        """The highest share of ``span_s`` seconds one process spent running or
        waiting for a core (None: the kernel does not say, or nothing was sampled)."""
        return busiest_share(self.demand, since=since, span_s=span_s)


def busiest_share(
    samples: list[Sample], *, since: float = 0.0, span_s: float = 5.0
) -> float | None:
    """The highest share of a second one process spent (on a core, or also
    waiting for one: whatever the samples count) over any ``span_s`` stretch
    starting at or after ``since`` (None: no such stretch was sampled)."""
    samples = [s for s in samples if s[0] >= since]
    best: float | None = None
    end = 0
    for start, (t0, cpu0) in enumerate(samples):
        end = max(end, start + 1)
        while end < len(samples) and samples[end][0] - t0 < span_s:
            end += 1
        if end >= len(samples):
            break
        t1, cpu1 = samples[end]
        for pid, seconds in cpu1.items():
            if pid in cpu0:
                share = (seconds - cpu0[pid]) / (t1 - t0)
                best = share if best is None else max(best, share)
    return None if best is None else round(best, 3)


def component_group(component: str) -> str:
    """``auth-1`` -> ``auth``; every other component is its own group."""
    match = _INSTANCE.fullmatch(component)
    return match["service"] if match else component


def sample_cpu(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of each component (name -> its main pid), summed by group."""
    children = children_by_parent()
    totals: dict[str, float] = {}
    for component, pid in pids.items():
        group = component_group(component)
        totals[group] = totals.get(group, 0.0) + tree_cpu_seconds(pid, children)
    return totals


@dataclass(frozen=True)
class CpuUse:
    """CPU the stack spent between two samples, and what it served meanwhile."""

    window_s: float
    requests: int
    seconds: dict[str, float]  # group -> CPU seconds in the window
    note: str = ""  # what the figure leaves out
    # bcrypt on its own, from the services' password_hashing_* counters over the
    # window: operation (hash, verify) -> (CPU seconds, how many); empty: unknown
    hashing: dict[str, tuple[float, int]] = field(default_factory=dict)

    @classmethod
    def between(
        cls,
        before: Mapping[str, float],
        after: Mapping[str, float],
        *,
        window_s: float,
        requests: int,
        note: str = "",
        hashing: Mapping[str, tuple[float, int]] | None = None,
    ) -> CpuUse:
        seconds = {
            group: round(max(0.0, after[group] - before.get(group, 0.0)), 3)
            for group in sorted(after)
        }
        return cls(
            window_s=round(window_s, 1),
            requests=requests,
            seconds=seconds,
            note=note,
            hashing={op: (round(s, 3), n) for op, (s, n) in (hashing or {}).items()},
        )

    @property
    def total_s(self) -> float:
        return round(sum(self.seconds.values()), 3)

    @property
    def ms_per_request(self) -> dict[str, float | None]:
        """Milliseconds of CPU per request served, per group and ``platform`` (all)."""
        if self.requests <= 0:
            return {group: None for group in (*self.seconds, "platform")}
        per = {g: round(1000 * s / self.requests, 3) for g, s in self.seconds.items()}
        return {**per, "platform": round(1000 * self.total_s / self.requests, 3)}

    @property
    def hashing_s(self) -> float | None:
        """bcrypt's CPU seconds in the window (None: the services do not say)."""
        if not self.hashing:
            return None
        return round(sum(seconds for seconds, _ in self.hashing.values()), 3)

    @property
    def platform_ms_without_hashing(self) -> float | None:
        """The platform's CPU per request served, password hashing left out: the
        figure to drive down (hashing is a fixed, deliberate cost)."""
        if self.requests <= 0 or self.hashing_s is None:
            return None
        return round(1000 * (self.total_s - self.hashing_s) / self.requests, 3)

    @property
    def hashing_ms_each(self) -> dict[str, float | None]:
        """CPU milliseconds per hash: ``verify`` (a sign-in), ``hash`` (a new or
        changed password)."""
        return {
            op: round(1000 * seconds / count, 1) if count else None
            for op, (seconds, count) in self.hashing.items()
        }

    @property
    def cores_busy(self) -> float | None:
        """The stack's average CPU use over the window, in cores."""
        return round(self.total_s / self.window_s, 2) if self.window_s > 0 else None


#: Above this share of one core (or of the time running or waiting for a
#: core), the generator's clock measures itself.
GENERATOR_BUSY_LIMIT = 0.8
#: An open-arrival request that started more than this late was "late"; more
#: than LATE_SHARE_LIMIT of them and the client figures are unreliable.
LATE_MS = 10.0
VERY_LATE_MS = 100.0
LATE_SHARE_LIMIT = 0.01


@dataclass(frozen=True)
class LateStarts:
    """Open arrival: how many requests started later than scheduled (like k6's
    dropped iterations, but counted and timed)."""

    scheduled: int
    late: int  # more than LATE_MS late
    very_late: int  # more than VERY_LATE_MS late
    max_late_ms: float

    @property
    def late_share(self) -> float:
        return self.late / self.scheduled if self.scheduled else 0.0

    @classmethod
    def merged(cls, parts: Iterable[LateStarts]) -> LateStarts | None:
        parts = list(parts)
        if not parts:
            return None
        return cls(
            scheduled=sum(p.scheduled for p in parts),
            late=sum(p.late for p in parts),
            very_late=sum(p.very_late for p in parts),
            max_late_ms=max(p.max_late_ms for p in parts),
        )


@dataclass(frozen=True)
class GeneratorUse:
    """The load generator's own CPU over its run, and whether it kept up."""

    cpu_s: float | None  # user + system of every generator process (None: not measured)
    window_s: float
    requests: int
    busiest_core_share: float | None  # highest 5 s share of one core of one process
    late_starts: LateStarts | None = None  # open arrival only
    busy_limit: float = GENERATOR_BUSY_LIMIT
    # highest 5 s share one process spent running or waiting for a core
    demand_share: float | None = None

    @property
    def ms_per_request(self) -> float | None:
        if self.cpu_s is None or self.requests <= 0:
            return None
        return round(1000 * self.cpu_s / self.requests, 3)

    @property
    def unreliable_because(self) -> tuple[str, ...]:
        """Why the client-side figures measure the generator as much as the
        platform (empty: they can be trusted)."""
        reasons = []
        share = self.busiest_core_share
        if share is not None and share > self.busy_limit:
            reasons.append(
                f"the load generator's busiest core was {share:.0%} busy "
                f"(over {self.busy_limit:.0%}): it could not keep up"
            )
        elif (demand := self.demand_share) is not None and demand > self.busy_limit:
            reasons.append(
                f"the load generator was running or waiting for a core {demand:.0%} of "
                f"the time over 5 s (over {self.busy_limit:.0%}): starved on a saturated "
                "machine, it could not keep up, and its clock counted its own wait as "
                "the platform's latency"
            )
        late = self.late_starts
        if late is not None and late.late_share > LATE_SHARE_LIMIT:
            reasons.append(
                f"{late.late:,} of {late.scheduled:,} requests ({late.late_share:.1%}) "
                f"started over {LATE_MS:g} ms later than scheduled, the latest by "
                f"{late.max_late_ms:.0f} ms"
            )
        return tuple(reasons)

    @property
    def reliable(self) -> bool:
        return not self.unreliable_because


__all__ = [
    "GENERATOR_BUSY_LIMIT",
    "LATE_MS",
    "VERY_LATE_MS",
    "CpuUse",
    "GeneratorUse",
    "LateStarts",
    "TreeSampler",
    "busiest_share",
    "component_group",
    "own_cpu_seconds",
    "sample_cpu",
    "tree_cpu_seconds",
]
