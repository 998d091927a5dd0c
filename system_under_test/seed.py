"""The first account: the platform clinic and its ``platform_admin`` user.

Runs as ``atendeai_owner``, which is subject to the forced row level security
like everyone else, so it sets the request context inside its transaction
exactly as the services do.
"""

from __future__ import annotations

import uuid

import bcrypt
import psycopg

PLATFORM_CLINIC_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")
PLATFORM_CLINIC_NAME = "AtendeAI Platform"
#: The platform clinic's login name: the platform admin signs in with it.
PLATFORM_CLINIC_SLUG = "atendeai-platform"
PLATFORM_ADMIN_NAME = "Platform Admin"


class SeedError(RuntimeError):
    """The email belongs to an account that is not a platform admin."""


def seed_platform_admin(
    owner_dsn: str, email: str, password: str, *, bcrypt_rounds: int = 10
) -> tuple[str, str]:
    """Create the platform clinic and its platform_admin; return (clinic_id, user_id).

    Idempotent: when the email already belongs to a platform admin, that
    account's ids are returned, its password is replaced by ``password`` and it
    is made active again.
    """
    email = email.strip()
    if "@" not in email or not password:
        raise ValueError("seed_platform_admin needs an email address and a non-empty password")
    password_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt(bcrypt_rounds)).decode()
    with psycopg.connect(owner_dsn, autocommit=True) as conn, conn.transaction():
        # The login lookup is the one query that finds an account before the
        # tenant context is set (the owner may call it: it is a member of the
        # function's owner role).
        existing = conn.execute(
            "select id, clinic_id, role from atendeai.find_user_for_login(%s, %s)",
            [PLATFORM_CLINIC_SLUG, email],
        ).fetchone()
        if existing is not None:
            user_id, clinic_id, role = existing
            if role != "platform_admin":
                raise SeedError(f"{email} already belongs to a {role} of clinic {clinic_id}")
            conn.execute("select atendeai.set_request_context(%s, %s)", [clinic_id, user_id])
            conn.execute(
                "update atendeai.users set password_hash = %s, status = 'active' where id = %s",
                [password_hash, user_id],
            )
            return str(clinic_id), str(user_id)

        user_id = uuid.uuid4()
        conn.execute("select atendeai.set_request_context(%s, %s)", [PLATFORM_CLINIC_ID, user_id])
        conn.execute(
            "insert into atendeai.clinics (id, name, slug) values (%s, %s, %s)"
            " on conflict (id) do nothing",
            [PLATFORM_CLINIC_ID, PLATFORM_CLINIC_NAME, PLATFORM_CLINIC_SLUG],
        )
        conn.execute(
            "insert into atendeai.users (id, clinic_id, name, email, password_hash, role)"
            " values (%s, %s, %s, %s, %s, 'platform_admin')",
            [user_id, PLATFORM_CLINIC_ID, PLATFORM_ADMIN_NAME, email, password_hash],
        )
        return str(PLATFORM_CLINIC_ID), str(user_id)
