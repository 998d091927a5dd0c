"""The platform's database made ready, whatever runs PostgreSQL (a child
process or a container): roles and database, migrations, the monitoring
role, the platform admin. Errors carry the server's log tail."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from harness.exceptions import ComponentStartError, HarnessError
from harness.providers.exporters import ensure_monitoring_role
from harness.stack import Credentials

DATABASE = "atendeai"
OWNER_ROLE = "atendeai_owner"
APP_ROLE = "atendeai_app"
JWT_ISSUER = "atendeai-auth"
JWT_AUDIENCE = "atendeai-api"


def postgres_dsn(user: str, password: str, host: str, port: int, database: str = DATABASE) -> str:
    """A TCP connection URL (user and password quoted)."""
    return (
        f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{database}"
    )


def prepare_database(
    *,
    superuser_dsn: str,
    owner_dsn: str,
    owner_password: str,
    app_password: str,
    monitor_password: str,
    platform_admin: Credentials,
    log_path: str | None,
    log_tail: Callable[[], str],
) -> list[str]:
    """Roles and database, migrations, the monitoring role, platform admin; the
    migrations applied. ``log_tail()`` is read only when a step fails."""
    step = "bootstrap (roles and database)"
    try:
        migrate: Any = importlib.import_module("system_under_test.migrate")
        migrate.bootstrap(
            superuser_dsn,
            database=DATABASE,
            owner_password=owner_password,
            app_password=app_password,
        )
        step = "migrations"
        applied: list[str] = list(migrate.apply_migrations(owner_dsn))
        step = "monitoring role (atendeai_monitor)"
        ensure_monitoring_role(superuser_dsn, monitor_password)
        step = "platform admin seed"
        seed: Any = importlib.import_module("system_under_test.seed")
        seed.seed_platform_admin(owner_dsn, platform_admin.email, platform_admin.password)
    except HarnessError:
        raise
    except Exception as error:
        raise ComponentStartError(
            "database",
            f"{step} failed: {type(error).__name__}: {error}",
            log_path=log_path,
            log_tail=log_tail(),
            hint="see system_under_test/migrate.py, seed.py and the migrations; "
            "the PostgreSQL log tail above shows the server's side",
        ) from error
    return applied


__all__ = [
    "APP_ROLE",
    "DATABASE",
    "JWT_AUDIENCE",
    "JWT_ISSUER",
    "OWNER_ROLE",
    "postgres_dsn",
    "prepare_database",
]
