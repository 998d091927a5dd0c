"""Accounts for load runs: many clinics with users, inserted straight into
PostgreSQL as the owner (one bcrypt hash shared by all, computed once), so a
1000-user run does not spend minutes hashing passwords through the API.

Every clinic is created under its own tenant context, exactly as the
services do; RLS applies to the owner too. An e-mail address is unique
within its clinic only, so every load clinic has the same addresses
(``user-0@load.example`` ...): sign-ins name the clinic by its slug.
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.private_files import write_private

LOAD_PASSWORD_BYTES = 18
ROLE_MIX = ("manager", "staff", "staff", "staff", "staff")  # one manager per four staff


@dataclass(frozen=True)
class LoadAccount:
    clinic_id: str
    clinic_slug: str
    user_id: str
    email: str
    password: str
    role: str


def seed_load_accounts(
    owner_dsn: str, *, accounts: int, users_per_clinic: int = 10, bcrypt_rounds: int = 10
) -> list[LoadAccount]:
    """Create ``accounts`` users spread over clinics of ``users_per_clinic`` each."""
    import bcrypt
    import psycopg

    from harness.tenant_rows import create_clinic

    if accounts < 1 or users_per_clinic < 1:
        raise ValueError("accounts and users_per_clinic must be at least 1")
    password = secrets.token_urlsafe(LOAD_PASSWORD_BYTES)
    password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt(bcrypt_rounds)).decode()
    run = uuid.uuid4().hex[:8]
    made: list[LoadAccount] = []
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        clinic_number = 0
        while len(made) < accounts:
            clinic_id = uuid.uuid4()
            clinic_number += 1
            slug = f"load-{run}-{clinic_number}"
            size = min(users_per_clinic, accounts - len(made))
            inserted = create_clinic(
                conn,
                {
                    "id": clinic_id,
                    "slug": slug,
                    "name": f"Load clinic {run}-{clinic_number}",
                    "specialty": "general practice",
                    "address_city": "São Paulo",
                },
                [
                    {
                        "name": f"Load user {run}-{clinic_number}-{i}",
                        "email": f"user-{i}@load.example",
                        "password_hash": password_hash,
                        "role": ROLE_MIX[i % len(ROLE_MIX)],
                    }
                    for i in range(size)
                ],
                returning=("id", "email", "role"),
            )
            made += [
                LoadAccount(str(clinic_id), slug, str(user_id), email, password, role)
                for user_id, email, role in inserted
            ]
    return made


def write_accounts(accounts: list[LoadAccount], path: Path) -> None:
    """Write the accounts (their passwords too) to ``path``, readable by the owner only."""
    write_private(path, json.dumps([asdict(a) for a in accounts]), mode=0o600)


def read_accounts(path: Path) -> list[LoadAccount]:
    return [LoadAccount(**item) for item in json.loads(Path(path).read_text())]
