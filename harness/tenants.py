"""Test tenants: a fresh clinic with one user per role, and HTTP clients for them.

Isolation by construction: every test makes its own clinic (random id and
emails) and talks to the services from its own client address (a unique
``X-Forwarded-For`` in 198.18.0.0/15, the benchmarking range), so tests never
share rows or rate-limit buckets and never need to clean up.

The rows are inserted as the owner role, which is subject to the forced row
level security like everyone else: the transaction first calls
``atendeai.set_request_context(clinic_id)``, exactly as the services do.
"""

from __future__ import annotations

import ipaddress
import random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.exceptions import LoginFailed
from harness.stack import Stack

if TYPE_CHECKING:
    import httpx

#: The password of every test user (their bcrypt hash is computed once per session).
TEST_PASSWORD = "Tenant-Test-Passw0rd!"
TEST_BCRYPT_ROUNDS = 10
ROLES = ("admin", "manager", "staff")
CLIENT_NETWORK = ipaddress.ip_network("198.18.0.0/15")
HTTP_TIMEOUT_S = 10.0


def hash_password(password: str = TEST_PASSWORD, *, rounds: int = TEST_BCRYPT_ROUNDS) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


class ClientAddresses:
    """Hands out distinct client IPs from ``network``, starting at a random offset.

    The random start keeps two test sessions against one shared stack apart too.
    """

    def __init__(
        self, network: ipaddress.IPv4Network = CLIENT_NETWORK, *, seed: int | None = None
    ) -> None:
        self._network = network
        self._size = network.num_addresses - 2  # no network or broadcast address
        self._next = random.Random(seed).randrange(self._size)

    def next(self) -> str:
        offset = 1 + self._next % self._size
        self._next += 1
        return str(self._network.network_address + offset)


class ApiSession:
    """The HTTP clients and tokens of one test; ``close()`` closes every client."""

    def __init__(self, stack: Stack, addresses: ClientAddresses) -> None:
        self.stack = stack
        self.addresses = addresses
        self._clients: list[httpx.Client] = []
        self._tokens: dict[tuple[str, str], str] = {}

    def client(
        self,
        service: str,
        *,
        client_ip: str | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Client:
        """A client for ``service``, from ``client_ip`` (a fresh one when None)."""
        import httpx

        all_headers = {"X-Forwarded-For": client_ip or self.addresses.next()}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        all_headers.update(headers or {})
        client = httpx.Client(
            base_url=self.stack.service_url(service), headers=all_headers, timeout=HTTP_TIMEOUT_S
        )
        self._clients.append(client)
        return client

    def login(self, email: str, password: str, *, client_ip: str) -> dict[str, Any]:
        """``POST /auth/login``; the token pair, or ``LoginFailed`` with the answer."""
        import httpx

        url = f"{self.stack.service_url('auth')}/auth/login"
        response = httpx.post(
            url,
            json={"email": email, "password": password},
            headers={"X-Forwarded-For": client_ip},
            timeout=HTTP_TIMEOUT_S,
        )
        if response.status_code != 200:
            raise LoginFailed(email, url, response.status_code, response.text)
        return dict(response.json())

    def access_token(self, email: str, password: str, *, client_ip: str) -> str:
        """An access token for ``email``, signed in once per test and then reused."""
        key = (email, client_ip)
        if key not in self._tokens:
            self._tokens[key] = self.login(email, password, client_ip=client_ip)["access_token"]
        return self._tokens[key]

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        self._tokens.clear()


@dataclass(frozen=True)
class TenantUser:
    id: uuid.UUID
    email: str
    password: str
    role: str


@dataclass(frozen=True)
class Tenant:
    """A clinic made for one test, with one user per role and its own client IP.

    Ids are ``uuid.UUID`` (as psycopg returns them); compare with JSON via ``str()``.
    """

    clinic_id: uuid.UUID
    name: str
    users: dict[str, TenantUser]
    client_ip: str
    api: ApiSession = field(repr=False, compare=False)

    def user(self, role: str) -> TenantUser:
        try:
            return self.users[role]
        except KeyError:
            known = sorted(self.users)
            raise KeyError(f"tenant {self.name!r} has no {role!r} user ({known})") from None

    def login(self, role: str) -> dict[str, Any]:
        """A fresh token pair for the ``role`` user (not cached: for refresh/logout tests)."""
        user = self.user(role)
        return self.api.login(user.email, user.password, client_ip=self.client_ip)

    def access_token(self, role: str) -> str:
        """The ``role`` user's access token (signed in once per test, then reused)."""
        user = self.user(role)
        return self.api.access_token(user.email, user.password, client_ip=self.client_ip)

    def client(self, service: str, role: str | None = None) -> httpx.Client:
        """An ``httpx.Client`` for ``service`` from this tenant's IP, signed in as ``role``."""
        token = None if role is None else self.access_token(role)
        return self.api.client(service, client_ip=self.client_ip, token=token)


def create_tenant(
    owner_dsn: str,
    *,
    api: ApiSession,
    password_hash: str,
    password: str = TEST_PASSWORD,
    name: str | None = None,
    roles: Iterable[str] = ROLES,
) -> Tenant:
    """Insert a clinic and one active user per role (as the owner, in one transaction)."""
    import psycopg

    clinic_id = uuid.uuid4()
    tag = clinic_id.hex[:12]
    name = name or f"Clínica de Teste {tag}"
    users: dict[str, TenantUser] = {}
    with psycopg.connect(owner_dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("select atendeai.set_request_context(%s::uuid)", [clinic_id])
        conn.execute(
            "insert into atendeai.clinics (id, name, email, status) values (%s, %s, %s, 'active')",
            [clinic_id, name, f"contato@clinic-{tag}.atendeai.test"],
        )
        for role in roles:
            email = f"{role}@clinic-{tag}.atendeai.test"
            row = conn.execute(
                "insert into atendeai.users (clinic_id, name, email, password_hash, role, status)"
                " values (%s, %s, %s, %s, %s, 'active') returning id",
                [clinic_id, f"{role.title()} {tag}", email, password_hash, role],
            ).fetchone()
            assert row is not None
            users[role] = TenantUser(id=row[0], email=email, password=password, role=role)
    return Tenant(
        clinic_id=clinic_id,
        name=name,
        users=users,
        client_ip=api.addresses.next(),
        api=api,
    )


__all__ = [
    "CLIENT_NETWORK",
    "ROLES",
    "TEST_PASSWORD",
    "ApiSession",
    "ClientAddresses",
    "Tenant",
    "TenantUser",
    "create_tenant",
    "hash_password",
]
