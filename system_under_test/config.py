"""Service configuration, resolved once from the environment into a frozen object.

Every setting has an ``ATENDEAI_`` environment variable; nothing else in the
package reads ``os.environ``.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from system_under_test.faults import ENV_VAR as FAULTS_VAR
from system_under_test.faults import FaultPlan, FaultSpecError, parse_plan, platform_routes


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class RateLimit:
    """``limit`` requests per ``window_seconds``, written ``"limit/window"`` (e.g. ``10/60``)."""

    limit: int
    window_seconds: int

    @classmethod
    def parse(cls, name: str, text: str) -> RateLimit:
        try:
            limit_text, window_text = text.split("/")
            limit, window = int(limit_text), int(window_text)
        except ValueError:
            raise ConfigError(f"{name}={text!r}: expected LIMIT/SECONDS, e.g. 10/60") from None
        if limit < 1 or window < 1:
            raise ConfigError(f"{name}={text!r}: limit and window must be positive")
        return cls(limit, window)


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    jwt_public_key: str
    jwt_private_key: str | None = None
    jwt_issuer: str = "atendeai-auth"
    jwt_audience: str = "atendeai-api"
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 14 * 24 * 3600
    bcrypt_rounds: int = 10
    hashing_threads: int = 2  # bcrypt threads per process (system_under_test.passwords)
    login_limit_per_client: RateLimit = RateLimit(20, 60)
    login_limit_per_account: RateLimit = RateLimit(5, 60)
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    max_body_bytes: int = 64 * 1024
    db_pool_min: int = 2
    db_pool_max: int = 10
    # PostgreSQL away or frozen: fast 503s, never a hang (system_under_test.db)
    db_deadline_seconds: float = 5.0  # one transaction: connection, statements, commit
    db_acquire_timeout_seconds: float = 2.0  # waiting for a pooled connection
    db_connect_timeout_seconds: int = 2  # libpq connect_timeout of a new connection
    redis_pool_max: int = 50
    # Redis away or frozen: short timeouts, then skipped for a while (system_under_test.redisguard)
    redis_timeout_seconds: float = 0.5  # connect, and each command's answer
    redis_breaker_seconds: float = 1.0  # after a failure, Redis is not asked for this long
    clinic_cache_ttl_seconds: int = 300
    service_urls: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    # ATENDEAI_FAULTS (system_under_test.faults): empty, the default, is off
    faults: FaultPlan = field(default_factory=FaultPlan)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ConfigError(f"{name} is not set")
            return value

        def integer(name: str, default: int, minimum: int = 1) -> int:
            text = env.get(name)
            if text is None or text.strip() == "":
                return default
            try:
                value = int(text)
            except ValueError:
                raise ConfigError(f"{name}={text!r}: expected a whole number") from None
            if value < minimum:
                raise ConfigError(f"{name}={value}: must be at least {minimum}")
            return value

        def seconds(name: str, default: float, *, allow_zero: bool = False) -> float:
            text = env.get(name)
            if text is None or text.strip() == "":
                return default
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"{name}={text!r}: expected seconds, e.g. 0.5") from None
            if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
                least = "0 or more" if allow_zero else "more than 0"
                raise ConfigError(f"{name}={text!r}: must be {least} seconds")
            return value

        def read_key(name: str) -> str:
            path = Path(required(name))
            try:
                return path.read_text()
            except OSError as error:
                raise ConfigError(f"{name}={path}: cannot read key file ({error})") from None

        def rate_limit(name: str, default: RateLimit) -> RateLimit:
            text = env.get(name)
            return default if not text else RateLimit.parse(name, text)

        def csv(name: str) -> tuple[str, ...]:
            return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())

        try:
            proxies = (
                tuple(ipaddress.ip_network(item) for item in csv("ATENDEAI_TRUSTED_PROXIES"))
                or cls.trusted_proxies
            )
        except ValueError as error:
            raise ConfigError(f"ATENDEAI_TRUSTED_PROXIES: {error}") from None

        service_urls = {}
        for item in csv("ATENDEAI_SERVICE_URLS"):
            name, sep, url = item.partition("=")
            if not sep or not url:
                raise ConfigError(f"ATENDEAI_SERVICE_URLS: {item!r} is not NAME=URL")
            service_urls[name.strip()] = url.strip().rstrip("/")

        bcrypt_rounds = integer("ATENDEAI_BCRYPT_ROUNDS", cls.bcrypt_rounds, minimum=10)
        private_key = (
            read_key("ATENDEAI_JWT_PRIVATE_KEY_FILE")
            if env.get("ATENDEAI_JWT_PRIVATE_KEY_FILE")
            else None
        )
        return cls(
            database_url=required("ATENDEAI_DATABASE_URL"),
            redis_url=required("ATENDEAI_REDIS_URL"),
            jwt_public_key=read_key("ATENDEAI_JWT_PUBLIC_KEY_FILE"),
            jwt_private_key=private_key,
            jwt_issuer=env.get("ATENDEAI_JWT_ISSUER", cls.jwt_issuer),
            jwt_audience=env.get("ATENDEAI_JWT_AUDIENCE", cls.jwt_audience),
            access_token_ttl_seconds=integer(
                "ATENDEAI_ACCESS_TOKEN_TTL_SECONDS", cls.access_token_ttl_seconds
            ),
            refresh_token_ttl_seconds=integer(
                "ATENDEAI_REFRESH_TOKEN_TTL_SECONDS", cls.refresh_token_ttl_seconds
            ),
            bcrypt_rounds=bcrypt_rounds,
            hashing_threads=integer("ATENDEAI_HASHING_THREADS", cls.hashing_threads, minimum=1),
            login_limit_per_client=rate_limit(
                "ATENDEAI_LOGIN_LIMIT_PER_CLIENT", cls.login_limit_per_client
            ),
            login_limit_per_account=rate_limit(
                "ATENDEAI_LOGIN_LIMIT_PER_ACCOUNT", cls.login_limit_per_account
            ),
            cors_origins=csv("ATENDEAI_CORS_ORIGINS"),
            trusted_proxies=proxies,
            max_body_bytes=integer("ATENDEAI_MAX_BODY_BYTES", cls.max_body_bytes),
            db_pool_min=integer("ATENDEAI_DB_POOL_MIN", cls.db_pool_min),
            db_pool_max=integer("ATENDEAI_DB_POOL_MAX", cls.db_pool_max),
            db_deadline_seconds=seconds("ATENDEAI_DB_DEADLINE_SECONDS", cls.db_deadline_seconds),
            db_acquire_timeout_seconds=seconds(
                "ATENDEAI_DB_ACQUIRE_TIMEOUT_SECONDS", cls.db_acquire_timeout_seconds
            ),
            db_connect_timeout_seconds=integer(
                "ATENDEAI_DB_CONNECT_TIMEOUT_SECONDS", cls.db_connect_timeout_seconds
            ),
            redis_pool_max=integer("ATENDEAI_REDIS_POOL_MAX", cls.redis_pool_max),
            redis_timeout_seconds=seconds(
                "ATENDEAI_REDIS_TIMEOUT_SECONDS", cls.redis_timeout_seconds
            ),
            redis_breaker_seconds=seconds(
                "ATENDEAI_REDIS_BREAKER_SECONDS", cls.redis_breaker_seconds, allow_zero=True
            ),
            clinic_cache_ttl_seconds=integer(
                "ATENDEAI_CLINIC_CACHE_TTL_SECONDS", cls.clinic_cache_ttl_seconds
            ),
            service_urls=service_urls,
            log_level=env.get("ATENDEAI_LOG_LEVEL", cls.log_level).upper(),
            faults=_fault_plan(env.get(FAULTS_VAR, "")),
        )


def _fault_plan(text: str) -> FaultPlan:
    """``ATENDEAI_FAULTS`` checked against the platform's routes (off when blank)."""
    if not text.strip():
        return FaultPlan()
    try:
        return parse_plan(text, known_routes=platform_routes())
    except FaultSpecError as error:
        raise ConfigError(str(error)) from None
