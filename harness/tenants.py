"""Test tenants: a fresh clinic with one user per role, and HTTP clients for them.

Isolation by construction: every test makes its own clinic (random id and
emails) and talks to the services from its own client address (a unique
``X-Forwarded-For`` in 198.18.0.0/15, the benchmarking range), so tests never
share rows or rate-limit buckets and never need to clean up.

The rows are inserted as the owner role, which is subject to the forced row
level security like everyone else: the transaction first calls
``atendeai.set_request_context(clinic_id)``, exactly as the services do
(``harness.tenant_rows.create_clinic``).
"""

from __future__ import annotations

import ipaddress
import random
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

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


class Account(Protocol):
    """What signing in takes: the clinic's slug, the e-mail and the password."""

    @property
    def clinic_slug(self) -> str: ...
    @property
    def email(self) -> str: ...
    @property
    def password(self) -> str: ...


def login_body(account: Account, *, password: str | None = None) -> dict[str, str]:
    """The JSON body of ``POST /auth/login`` for ``account`` (another password if given)."""
    return {
        "clinic_slug": account.clinic_slug,
        "email": account.email,
        "password": account.password if password is None else password,
    }


def login(stack: Stack, account: Account, *, client_ip: str) -> dict[str, Any]:
    """``POST /auth/login`` as ``account``; the token pair, or ``LoginFailed`` with the answer."""
    import httpx

    url = f"{stack.service_url('auth')}/auth/login"
    response = httpx.post(
        url,
        json=login_body(account),
        headers={"X-Forwarded-For": client_ip},
        timeout=HTTP_TIMEOUT_S,
    )
    if response.status_code != 200:
        raise LoginFailed(account.email, url, response.status_code, response.text)
    return dict(response.json())


class AccountSession:
    """One account's tokens for a whole test session: signed in once, then reused.

    An account has a login budget (the platform limits sign-ins per account), so
    a shared account such as the platform admin must not sign in once per test:
    tests would then pass or fail depending on how many ran before them within
    a minute. The access token is refreshed (``POST /auth/refresh``, from the same
    client address) shortly before it expires; only when the refresh is refused
    (the session was revoked) does it sign in again.
    """

    #: Refresh this long before the access token expires.
    MARGIN_S = 30.0

    def __init__(self, stack: Stack, account: Account, *, client_ip: str) -> None:
        self.stack = stack
        self.account = account
        self.client_ip = client_ip
        self._pair: dict[str, Any] | None = None
        self._expires_at = 0.0

    def access_token(self) -> str:
        if self._pair is None:
            self._keep(login(self.stack, self.account, client_ip=self.client_ip))
        elif time.monotonic() >= self._expires_at - self.MARGIN_S:
            self._keep(self._refreshed_or_new(self._pair["refresh_token"]))
        assert self._pair is not None
        return str(self._pair["access_token"])

    def _refreshed_or_new(self, refresh_token: str) -> dict[str, Any]:
        import httpx

        response = httpx.post(
            f"{self.stack.service_url('auth')}/auth/refresh",
            json={"refresh_token": refresh_token},
            headers={"X-Forwarded-For": self.client_ip},
            timeout=HTTP_TIMEOUT_S,
        )
        if response.status_code == 200:
            return dict(response.json())
        return login(self.stack, self.account, client_ip=self.client_ip)

    def _keep(self, pair: dict[str, Any]) -> None:
        self._pair = pair
        self._expires_at = time.monotonic() + float(pair["expires_in"])


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

    def login(self, account: Account, *, client_ip: str) -> dict[str, Any]:
        """``POST /auth/login``; the token pair, or ``LoginFailed`` with the answer."""
        return login(self.stack, account, client_ip=client_ip)

    def access_token(self, account: Account, *, client_ip: str) -> str:
        """An access token for ``account``, signed in once per test and then reused."""
        key = (account.clinic_slug, account.email, client_ip)
        if key not in self._tokens:
            self._tokens[key] = self.login(account, client_ip=client_ip)["access_token"]
        return self._tokens[key]

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        self._tokens.clear()


@dataclass(frozen=True)
class TenantUser:
    id: uuid.UUID
    clinic_slug: str
    email: str
    password: str
    role: str

    def login_body(self, *, password: str | None = None) -> dict[str, str]:
        """The JSON body of ``POST /auth/login`` for this user (another password if given)."""
        return login_body(self, password=password)


@dataclass(frozen=True)
class Tenant:
    """A clinic made for one test, with one user per role and its own client IP.

    Ids are ``uuid.UUID`` (as psycopg returns them); compare with JSON via ``str()``.
    """

    clinic_id: uuid.UUID
    clinic_slug: str
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
        return self.api.login(self.user(role), client_ip=self.client_ip)

    def access_token(self, role: str) -> str:
        """The ``role`` user's access token (signed in once per test, then reused)."""
        return self.api.access_token(self.user(role), client_ip=self.client_ip)

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

    from harness.tenant_rows import create_clinic

    clinic_id = uuid.uuid4()
    tag = clinic_id.hex[:12]
    name = name or f"Clínica de Teste {tag}"
    slug = f"test-{clinic_id.hex}"
    roles = list(roles)
    emails = {role: f"{role}@clinic-{tag}.atendeai.test" for role in roles}
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        inserted = create_clinic(
            conn,
            {
                "id": clinic_id,
                "slug": slug,
                "name": name,
                "email": f"contato@clinic-{tag}.atendeai.test",
                "status": "active",
            },
            [
                {
                    "name": f"{role.title()} {tag}",
                    "email": emails[role],
                    "password_hash": password_hash,
                    "role": role,
                    "status": "active",
                }
                for role in roles
            ],
            returning=("id",),
        )
    users = {
        role: TenantUser(
            id=user_id, clinic_slug=slug, email=emails[role], password=password, role=role
        )
        for role, (user_id,) in zip(roles, inserted, strict=True)
    }
    return Tenant(
        clinic_id=clinic_id,
        clinic_slug=slug,
        name=name,
        users=users,
        client_ip=api.addresses.next(),
        api=api,
    )


__all__ = [
    "CLIENT_NETWORK",
    "ROLES",
    "TEST_PASSWORD",
    "Account",
    "AccountSession",
    "ApiSession",
    "ClientAddresses",
    "Tenant",
    "TenantUser",
    "create_tenant",
    "hash_password",
    "login",
    "login_body",
]
