"""The one description of a running stack that every provider produces.

Tests, the CLI and the gate only ever see a ``Stack``: where each component
listens and how to log in to it. Providers (``harness.providers``) build it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.private_files import write_private

#: The reference platform's own clinic, where its platform admin signs in
#: (``system_under_test.seed.PLATFORM_CLINIC_SLUG``).
PLATFORM_CLINIC_SLUG = "atendeai-platform"


@dataclass(frozen=True)
class Credentials:
    """An account: login names the clinic (its slug), the e-mail and the password."""

    email: str
    password: str
    clinic_slug: str = PLATFORM_CLINIC_SLUG


@dataclass(frozen=True)
class PostgresEndpoints:
    """DSNs for the three kinds of connection a verifier needs.

    - ``superuser_dsn``: bypasses RLS; used only to observe the truth in tests.
    - ``owner_dsn``: the role that owns the schema and runs migrations.
    - ``app_dsn``: the service role the platform connects as (RLS applies).
    """

    superuser_dsn: str
    owner_dsn: str
    app_dsn: str
    host: str
    port: int
    database: str


@dataclass(frozen=True)
class Stack:
    """Where every component of a running stack listens.

    - ``services``: one URL per service (its first instance; tests that read a
      service's own ``/metrics`` talk to it directly).
    - ``service_instances``: every instance of each service (two locally).
    - ``haproxy_url``: the load balancer in front of the instances, routing by
      path (``/auth``, ``/users``, ``/clinics``, ``/status``); locally it plays
      the gateway. ``haproxy_stats_url``: its live stats page.
    - ``prometheus_url``: the Prometheus that scrapes every component.
    - ``exporters``: metrics URLs of the PostgreSQL and Redis exporters.

    The monitoring fields are ``None``/empty for a stack that has none.
    """

    provider: str
    postgres: PostgresEndpoints
    redis_url: str
    services: dict[str, str]
    platform_admin: Credentials
    jwt_issuer: str = "atendeai-auth"
    jwt_audience: str = "atendeai-api"
    allowed_origins: tuple[str, ...] = ()
    service_instances: dict[str, tuple[str, ...]] = field(default_factory=dict)
    haproxy_url: str | None = None
    haproxy_stats_url: str | None = None
    prometheus_url: str | None = None
    exporters: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    def service_url(self, name: str) -> str:
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services))
            raise KeyError(f"no service {name!r} in this stack (known: {known})") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: Path) -> None:
        """Write the endpoints to ``path`` atomically (no half-written file), mode 0600:
        it holds passwords, readable by its owner only from the first byte."""
        write_private(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stack:
        return cls(
            provider=data["provider"],
            postgres=PostgresEndpoints(**data["postgres"]),
            redis_url=data["redis_url"],
            services=dict(data["services"]),
            platform_admin=Credentials(**data["platform_admin"]),
            jwt_issuer=data.get("jwt_issuer", cls.jwt_issuer),
            jwt_audience=data.get("jwt_audience", cls.jwt_audience),
            allowed_origins=tuple(data.get("allowed_origins", ())),
            service_instances={
                name: tuple(urls) for name, urls in data.get("service_instances", {}).items()
            },
            haproxy_url=data.get("haproxy_url"),
            haproxy_stats_url=data.get("haproxy_stats_url"),
            prometheus_url=data.get("prometheus_url"),
            exporters=dict(data.get("exporters", {})),
            extra=dict(data.get("extra", {})),
        )

    @classmethod
    def read_json(cls, path: Path) -> Stack:
        return cls.from_dict(json.loads(Path(path).read_text()))
