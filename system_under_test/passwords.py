"""bcrypt hashing, run off the event loop (a cost-10 hash takes ~70 ms here).

Hashes run on one dedicated thread per process. bcrypt releases the GIL, so
with Python's default pool (up to cores + 4 threads) a burst of sign-ins put
six CPU-bound threads beside the event loop and starved every other request
of the process; with one thread, sign-ins queue behind each other instead.
Two threads were measured too (2-core machine): login p95 in the sla run
184-265 ms against 224-255 ms with one, within the noise, but while users
signed in at 10/s on top of 1000 busy ones, /auth/me (same process) went
from ~20 ms to seconds.
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
_BCRYPT_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcrypt")


def _counted(operation: str, handed_over: float, function, *args):
    """Run ``function`` on the hashing thread; time its wait and its run, and
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


async def _off_loop(operation: str, function, *args):
    return await asyncio.get_running_loop().run_in_executor(
        _BCRYPT_THREAD, _counted, operation, time.perf_counter(), function, *args
    )


async def hash_password(password: str, rounds: int) -> str:
    raw = password.encode()
    if len(raw) > MAX_PASSWORD_BYTES:
        raise ValueError("password longer than 72 bytes")
    hashed = await _off_loop("hash", bcrypt.hashpw, raw, bcrypt.gensalt(rounds))
    return hashed.decode()


async def verify_password(password: str, password_hash: str | None) -> bool:
    raw = password.encode()
    if len(raw) > MAX_PASSWORD_BYTES:
        return False
    target = password_hash.encode() if password_hash else _DUMMY_HASH
    matches = await _off_loop("verify", bcrypt.checkpw, raw, target)
    return matches and password_hash is not None
