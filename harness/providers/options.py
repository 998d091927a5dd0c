"""What every provider that starts a stack is told: ``StackOptions``.

``LocalStackConfig`` (child processes) and ``ContainersStackConfig``
(containers) extend it with what only they need. Resolved once, frozen.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from harness.exceptions import ConfigurationError
from harness.providers.haproxy import HAProxySettings
from harness.providers.prometheus import PrometheusSettings


def generate_password() -> str:
    """A strong random password (URL-safe, so it needs no quoting in DSNs)."""
    return "At-" + secrets.token_urlsafe(24)


@dataclass(frozen=True)
class StackOptions:
    """The options every started stack shares.

    - ``startup_timeout_s``: how long each component may take to become ready.
    - ``allowed_origins``: the CORS allow list given to the services.
    - ``platform_admin_email`` / ``platform_admin_password``: the seeded platform
      admin (the password is generated per stack unless given).
    - ``service_env``: extra ``(NAME, value)`` environment for every service,
      applied last (so it overrides the defaults, e.g. rate limits).
    - ``keep_dir``: keep the run directory (logs, configs, keys) after teardown.
    - ``login_limit_per_client``: ``ATENDEAI_LOGIN_LIMIT_PER_CLIENT`` for auth.
    - ``instances_per_service``: instances of each service behind HAProxy (the
      spec's shape needs at least two).
    - ``prometheus``: scrape/evaluation intervals and the rules to load.
    - ``haproxy``: health-check timing.
    """

    startup_timeout_s: float = 30.0
    allowed_origins: tuple[str, ...] = ("http://localhost:8080",)
    platform_admin_email: str = "platform-admin@atendeai.test"
    platform_admin_password: str = field(default_factory=generate_password, repr=False)
    service_env: tuple[tuple[str, str], ...] = ()
    keep_dir: bool = False
    login_limit_per_client: str = "20/60"
    instances_per_service: int = 2
    prometheus: PrometheusSettings = field(default_factory=PrometheusSettings)
    haproxy: HAProxySettings = field(default_factory=HAProxySettings)

    def __post_init__(self) -> None:
        if self.instances_per_service < 1:
            raise ConfigurationError(
                f"instances_per_service must be at least 1, not {self.instances_per_service}"
            )
        if self.startup_timeout_s <= 0:
            raise ConfigurationError(
                f"startup_timeout_s must be positive, not {self.startup_timeout_s}"
            )
        if "@" not in self.platform_admin_email:
            raise ConfigurationError(
                f"platform_admin_email {self.platform_admin_email!r} is not an email address"
            )
        if len(self.platform_admin_password) < 8:
            raise ConfigurationError("platform_admin_password must have at least 8 characters")
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))
        object.__setattr__(self, "service_env", tuple(tuple(p) for p in self.service_env))
        for pair in self.service_env:
            if len(pair) != 2 or not pair[0] or "=" in pair[0]:
                raise ConfigurationError(f"service_env entry {pair!r} is not a (NAME, value) pair")


__all__ = ["StackOptions", "generate_password"]
