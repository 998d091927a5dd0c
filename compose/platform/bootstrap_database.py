"""The one-shot ``migrate`` job of docker-compose.yml: roles, migrations, platform admin.

Reads everything from the environment (set in docker-compose.yml from .env):
POSTGRES_HOST, POSTGRES_PASSWORD (the superuser's), ATENDEAI_OWNER_PASSWORD,
ATENDEAI_APP_PASSWORD, PLATFORM_ADMIN_EMAIL, PLATFORM_ADMIN_PASSWORD.
Idempotent: safe to run on every ``docker compose up``.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import quote

from system_under_test.migrate import MigrationError, apply_migrations, bootstrap
from system_under_test.seed import seed_platform_admin


def dsn(user: str, password: str, database: str) -> str:
    host = os.environ.get("POSTGRES_HOST", "postgres")
    return f"postgresql://{user}:{quote(password, safe='')}@{host}:5432/{database}"


def main() -> int:
    try:
        env = {
            name: os.environ[name]
            for name in (
                "POSTGRES_PASSWORD",
                "ATENDEAI_OWNER_PASSWORD",
                "ATENDEAI_APP_PASSWORD",
                "PLATFORM_ADMIN_EMAIL",
                "PLATFORM_ADMIN_PASSWORD",
            )
        }
    except KeyError as missing:
        name = missing.args[0]
        print(f"bootstrap_database: {name} is not set (see .env.example)", file=sys.stderr)
        return 2
    owner_dsn = dsn("atendeai_owner", env["ATENDEAI_OWNER_PASSWORD"], "atendeai")
    try:
        bootstrap(
            dsn("postgres", env["POSTGRES_PASSWORD"], "postgres"),
            owner_password=env["ATENDEAI_OWNER_PASSWORD"],
            app_password=env["ATENDEAI_APP_PASSWORD"],
        )
        applied = apply_migrations(owner_dsn)
        seed_platform_admin(owner_dsn, env["PLATFORM_ADMIN_EMAIL"], env["PLATFORM_ADMIN_PASSWORD"])
    except (MigrationError, ValueError) as error:
        print(f"bootstrap_database: {error}", file=sys.stderr)
        return 1
    print(f"database ready; migrations applied now: {', '.join(applied) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
