"""bcrypt hashing, run off the event loop (a cost-10 hash takes ~50 ms)."""

from __future__ import annotations

import asyncio

import bcrypt

MAX_PASSWORD_BYTES = 72  # bcrypt ignores everything past this; we refuse instead

# Checked when the account does not exist, so that an unknown e-mail costs the
# same bcrypt time as a wrong password and answers identically.
_DUMMY_HASH = bcrypt.hashpw(b"no such account", bcrypt.gensalt(10))


async def hash_password(password: str, rounds: int) -> str:
    raw = password.encode()
    if len(raw) > MAX_PASSWORD_BYTES:
        raise ValueError("password longer than 72 bytes")
    hashed = await asyncio.to_thread(bcrypt.hashpw, raw, bcrypt.gensalt(rounds))
    return hashed.decode()


async def verify_password(password: str, password_hash: str | None) -> bool:
    raw = password.encode()
    if len(raw) > MAX_PASSWORD_BYTES:
        return False
    target = password_hash.encode() if password_hash else _DUMMY_HASH
    matches = await asyncio.to_thread(bcrypt.checkpw, raw, target)
    return matches and password_hash is not None
