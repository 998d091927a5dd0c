"""bcrypt hashing, run off the event loop (a cost-10 hash takes ~59 ms of CPU here).

Hashes run on a few dedicated threads per process (``Settings.hashing_threads``,
2 by default). bcrypt releases the GIL, so with Python's default pool (up to
cores + 4 threads) a burst of sign-ins put six CPU-bound threads beside the
event loop and starved every other request of the process; a small fixed
number bounds that. One thread was the default until 2026-12-05: with the
platform's CPU per request halved since, the sign-ins of the ``sla`` run's
ramp (10 a second over two auth instances) queued behind each other for
25-29 ms at p95 and put login p95 at 113-117 ms; with two threads the queue
was 1 ms, a verify's run 87.5-88.2 ms against 85-86 (p95), and login p95
98.3-98.9 ms in three runs (2-core machine, a cost-10 check 59 ms of CPU,
same session; README, "Measured performance").
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import bcrypt

from system_under_test.metrics import (
    PASSWORD_HASHING_CPU,
    PASSWORD_HASHING_DURATION,
    PASSWORD_HASHINGS,
)

MAX_PASSWORD_BYTES = 72  # bcrypt ignores everything past this; we refuse instead

# Checked when the account does not exist, so that an unknown e-mail costs the
# same bcrypt time as a wrong password and answers identically.
_DUMMY_HASH = bcrypt.hashpw(b"no such account", bcrypt.gensalt(10))


def _counted(operation: str, handed_over: float, function, *args):
    """Run ``function`` on a hashing thread; time its wait and its run, and
    count the CPU this thread spent in it."""
    started, cpu_started = time.perf_counter(), time.thread_time()
    PASSWORD_HASHING_DURATION.labels(operation, "queued").observe(started - handed_over)
    try:
        return function(*args)
    finally:
        PASSWORD_HASHING_CPU.labels(operation).inc(time.thread_time() - cpu_started)
        PASSWORD_HASHING_DURATION.labels(operation, "running").observe(
            time.perf_counter() - started
        )
        PASSWORD_HASHINGS.labels(operation).inc()


class PasswordHasher:
    """bcrypt at ``rounds`` on ``threads`` threads of their own (started as needed)."""

    def __init__(self, *, rounds: int, threads: int) -> None:
        self.rounds = rounds
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bcrypt")

    async def _off_loop(self, operation: str, function, *args):
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, _counted, operation, time.perf_counter(), function, *args
        )

    async def hash(self, password: str) -> str:
        raw = password.encode()
        if len(raw) > MAX_PASSWORD_BYTES:
            raise ValueError("password longer than 72 bytes")
        hashed = await self._off_loop("hash", bcrypt.hashpw, raw, bcrypt.gensalt(self.rounds))
        return hashed.decode()

    async def verify(self, password: str, password_hash: str | None) -> bool:
        raw = password.encode()
        if len(raw) > MAX_PASSWORD_BYTES:
            return False
        target = password_hash.encode() if password_hash else _DUMMY_HASH
        matches = await self._off_loop("verify", bcrypt.checkpw, raw, target)
        return matches and password_hash is not None

    def close(self) -> None:
        """Let the threads end once their hashes are done."""
        self._threads.shutdown(wait=False)
