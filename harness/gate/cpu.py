"""CPU time the stack spent over the load window, per component, read from /proc.

Latency on a shared 2-core VM moves 2-4x from one host to the next; the CPU a
request costs does not. ``sample_cpu`` reads, for every component the provider
supervises, the CPU seconds (user + system) of its process and every
descendant (PostgreSQL's backends), including what finished descendants left
in their parent's ``cutime``/``cstime`` once reaped, so a backend that ended
inside the window still counts. Two samples around the load give ``CpuUse``:
seconds per component, and milliseconds per request served.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.processes import children_by_parent

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: ``auth-1``, ``users-2``: service instances, grouped by service.
_INSTANCE = re.compile(r"(?P<service>[a-z]+)-\d+")


def _own_cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of one process; 0 when it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    # the command name (field 2) may hold spaces: the fields after it follow ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / CLOCK_TICKS


def tree_cpu_seconds(root: int, children: Mapping[int, Iterable[int]] | None = None) -> float:
    """CPU seconds of ``root`` and its live descendants (with what reaped ones left)."""
    children = children_by_parent() if children is None else children
    seen: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, ()))
    return sum(_own_cpu_seconds(pid) for pid in seen)


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

    @classmethod
    def between(
        cls,
        before: Mapping[str, float],
        after: Mapping[str, float],
        *,
        window_s: float,
        requests: int,
        note: str = "",
    ) -> CpuUse:
        seconds = {
            group: round(max(0.0, after[group] - before.get(group, 0.0)), 3)
            for group in sorted(after)
        }
        return cls(window_s=round(window_s, 1), requests=requests, seconds=seconds, note=note)

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
    def cores_busy(self) -> float | None:
        """The stack's average CPU use over the window, in cores."""
        return round(self.total_s / self.window_s, 2) if self.window_s > 0 else None


__all__ = ["CpuUse", "component_group", "sample_cpu", "tree_cpu_seconds"]
