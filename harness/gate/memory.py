"""Resident memory of the whole stack: every process the provider started
and all their descendants (PostgreSQL backends, workers), read from /proc."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from harness.processes import children_by_parent

PROC = Path("/proc")


def _rss_bytes(pid: int) -> int:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss_bytes(roots: Iterable[int]) -> int | None:
    """Summed RSS of ``roots`` and their descendants; None when none is alive here."""
    roots = [pid for pid in roots if (PROC / str(pid)).exists()]
    if not roots or not PROC.exists():
        return None
    children = children_by_parent()
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
    return sum(_rss_bytes(pid) for pid in seen)


class PeakMemory:
    """Samples the stack's RSS every ``interval_s`` in a thread; ``peak`` in bytes."""

    def __init__(self, pids: list[int], interval_s: float = 1.0) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = tree_rss_bytes(self.pids)
            if value is not None:
                self.peak = max(self.peak or 0, value)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def megabytes(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


__all__ = ["PeakMemory", "megabytes", "tree_rss_bytes"]
