"""The auth promises of DESIGN.md section 8 beyond token verification, one check each.

Every check talks to an auth service by URL (the stack's, or a broken scratch
instance's) and raises ``SecurityCheckFailed`` with the evidence. A check that
needs a fresh login takes the account's e-mail and password and a client
address of its own (``X-Forwarded-For``), so the login rate limits of other
tests never interfere.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from harness.security import SecurityCheckFailed

TIMEOUT_S = 10.0
MIN_BCRYPT_COST = 10
_BCRYPT = re.compile(r"^\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}$")


@dataclass(frozen=True)
class AuthEndpoint:
    """An auth service, the client address to talk to it from, and the clinic
    whose accounts sign in through it (login names the clinic by its slug)."""

    url: str
    client_ip: str
    clinic_slug: str

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"X-Forwarded-For": self.client_ip, **kwargs.pop("headers", {})}
        return httpx.post(f"{self.url}{path}", headers=headers, timeout=TIMEOUT_S, **kwargs)

    def get(self, path: str, token: str) -> httpx.Response:
        headers = {"X-Forwarded-For": self.client_ip, "Authorization": f"Bearer {token}"}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=TIMEOUT_S)

    def login(self, email: str, password: str, *, clinic_slug: str | None = None) -> httpx.Response:
        """``POST /auth/login`` in this endpoint's clinic (or in ``clinic_slug``)."""
        body = {
            "clinic_slug": self.clinic_slug if clinic_slug is None else clinic_slug,
            "email": email,
            "password": password,
        }
        return self.post("/auth/login", json=body)

    def pair(self, email: str, password: str) -> dict[str, Any]:
        response = self.login(email, password)
        if response.status_code != 200:
            raise SecurityCheckFailed(
                f"control failed: login as {email} answered {response.status_code}: "
                f"{response.text[:300]}"
            )
        return dict(response.json())

    def refresh(self, refresh_token: str) -> httpx.Response:
        return self.post("/auth/refresh", json={"refresh_token": refresh_token})


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise SecurityCheckFailed(
            f"{what}: expected {status}, got {response.status_code}: {response.text[:300]}"
        )


def check_refresh_rotation(auth: AuthEndpoint, email: str, password: str) -> None:
    """A refresh token is single use: using it gives a new pair; using it again is 401."""
    first = auth.pair(email, password)
    response = auth.refresh(first["refresh_token"])
    _expect(response, 200, "refreshing with a fresh refresh token")
    second = response.json()
    if second["refresh_token"] == first["refresh_token"]:
        raise SecurityCheckFailed("refresh returned the same refresh token: it is not rotated")
    _expect(
        auth.refresh(first["refresh_token"]),
        401,
        "refreshing again with the spent refresh token (rotation)",
    )


def check_reuse_revokes_family(auth: AuthEndpoint, email: str, password: str) -> None:
    """Reusing a spent refresh token revokes the whole family: later tokens stop working."""
    first = auth.pair(email, password)
    response = auth.refresh(first["refresh_token"])
    _expect(response, 200, "refreshing with a fresh refresh token")
    second = response.json()
    _expect(auth.get("/auth/me", second["access_token"]), 200, "control: the new access token")
    _expect(auth.refresh(first["refresh_token"]), 401, "reusing the spent refresh token")
    _expect(
        auth.refresh(second["refresh_token"]),
        401,
        "the family's newer refresh token after a reuse was detected",
    )
    _expect(
        auth.get("/auth/me", second["access_token"]),
        401,
        "the family's newer access token after a reuse was detected",
    )


def check_logout_revokes(auth: AuthEndpoint, email: str, password: str) -> None:
    """After logout the session's access and refresh tokens are refused."""
    pair = auth.pair(email, password)
    _expect(auth.get("/auth/me", pair["access_token"]), 200, "control: the access token")
    response = auth.post(
        "/auth/logout", headers={"Authorization": f"Bearer {pair['access_token']}"}
    )
    _expect(response, 204, "logout")
    _expect(auth.get("/auth/me", pair["access_token"]), 401, "the access token after logout")
    _expect(auth.refresh(pair["refresh_token"]), 401, "the refresh token after logout")


def check_long_passwords_refused(
    auth: AuthEndpoint, email: str, password_72_bytes: str, users_url: str, admin_token: str
) -> None:
    """More than 72 bytes is a 4xx: at login (never a silent truncation that signs
    in with the first 72 bytes, never a 500) and when a password is set."""
    if len(password_72_bytes.encode()) != 72:
        raise ValueError("give the account's password of exactly 72 bytes")
    for extra in ("x", "é", "🔑" * 10):
        longer = password_72_bytes + extra
        response = auth.login(email, longer)
        if response.status_code == 200:
            raise SecurityCheckFailed(
                f"login with the 72-byte password plus {extra!r} ({len(longer.encode())} bytes) "
                "succeeded: the password was silently truncated"
            )
        if not 400 <= response.status_code < 500 or response.status_code == 429:
            raise SecurityCheckFailed(
                f"login with a {len(longer.encode())}-byte password answered "
                f"{response.status_code}, not a 4xx: {response.text[:200]}"
            )
    response = httpx.post(
        f"{users_url}/users",
        json={
            "name": "Long Password",
            "email": f"long-{time.time_ns()}@security.example",
            "password": "é" * 37,  # 74 bytes, 37 characters
            "role": "staff",
        },
        headers={"Authorization": f"Bearer {admin_token}", "X-Forwarded-For": auth.client_ip},
        timeout=TIMEOUT_S,
    )
    if response.status_code != 422:
        raise SecurityCheckFailed(
            f"creating a user with a 74-byte password answered {response.status_code}, "
            f"not 422: {response.text[:200]}"
        )


def _answer(response: httpx.Response) -> tuple[int, Any, frozenset[str]]:
    body = response.json()
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = {**body, "error": {k: v for k, v in body["error"].items() if k != "request_id"}}
    volatile = {"x-request-id", "date", "content-length"}
    return response.status_code, body, frozenset(h.lower() for h in response.headers) - volatile


def check_no_user_enumeration(
    endpoints: Sequence[AuthEndpoint], known_email: str, *, attempts: int = 3
) -> None:
    """An unknown clinic, an unknown e-mail and a wrong password give the same
    status, body and headers, and take comparable time (all three run bcrypt).
    ``known_email`` is an account of the endpoints' clinic. Each attempt comes
    from its own address; ``attempts`` wrong passwords must stay under the
    per-account limit."""
    kinds = ("unknown clinic", "unknown e-mail", "wrong password")
    if len(endpoints) < len(kinds) * attempts:
        raise ValueError(f"give {len(kinds) * attempts} client addresses")
    unknown_email = f"nobody-{time.time_ns()}@security.example"
    unknown_clinic = f"no-such-clinic-{time.time_ns()}"
    answers: dict[str, list[tuple[int, Any, frozenset[str]]]] = {kind: [] for kind in kinds}
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    for index in range(attempts):
        for offset, kind in enumerate(kinds):
            endpoint = endpoints[len(kinds) * index + offset]
            started = time.perf_counter()
            if kind == "unknown clinic":
                response = endpoint.login(
                    known_email, "Not-The-Password-123", clinic_slug=unknown_clinic
                )
            else:
                email = unknown_email if kind == "unknown e-mail" else known_email
                response = endpoint.login(email, "Not-The-Password-123")
            seconds[kind].append(time.perf_counter() - started)
            answers[kind].append(_answer(response))
    first = {kind: answers[kind][0] for kind in kinds}
    if any(answer[0] != 401 for answer in first.values()):
        statuses = ", ".join(f"{kind} {answer[0]}" for kind, answer in first.items())
        raise SecurityCheckFailed(f"expected 401 for all three, got {statuses}")
    wrong = first["wrong password"]
    for kind in ("unknown clinic", "unknown e-mail"):
        if first[kind] != wrong:
            raise SecurityCheckFailed(
                f"an {kind} and a wrong password answer differently (an account oracle): "
                f"{kind} {first[kind]}, wrong password {wrong}"
            )
    slow = statistics.median(seconds["wrong password"])
    for kind in ("unknown clinic", "unknown e-mail"):
        fast = statistics.median(seconds[kind])
        if fast < 0.3 * slow:
            raise SecurityCheckFailed(
                f"an {kind} answers in {fast * 1000:.0f} ms, a wrong password in "
                f"{slow * 1000:.0f} ms: the timing tells which accounts exist"
            )


def bcrypt_cost(password_hash: str) -> int:
    match = _BCRYPT.match(password_hash)
    if match is None:
        raise SecurityCheckFailed(f"not a bcrypt hash: {password_hash[:7]}...")
    return int(match.group(1))


def check_bcrypt_cost(superuser_dsn: str, user_ids: Iterable[Any]) -> list[int]:
    """Every stored hash of ``user_ids`` is bcrypt with cost >= 10; returns the costs."""
    import psycopg

    ids = list(user_ids)
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select id, password_hash from atendeai.users where id = any(%s)", [ids]
        ).fetchall()
    if len(rows) != len(ids):
        raise SecurityCheckFailed(f"expected {len(ids)} users, found {len(rows)}")
    costs = []
    for user_id, password_hash in rows:
        cost = bcrypt_cost(password_hash)
        if cost < MIN_BCRYPT_COST:
            raise SecurityCheckFailed(
                f"user {user_id}'s password is hashed with bcrypt cost {cost} "
                f"(< {MIN_BCRYPT_COST}): too cheap to brute-force"
            )
        costs.append(cost)
    return costs


def check_no_secrets_in_audit_and_logs(
    superuser_dsn: str,
    clinic_ids: Iterable[Any],
    secrets: Iterable[str],
    log_paths: Iterable[Path],
) -> None:
    """No password or raw token appears in the clinics' audit rows or in the logs."""
    import psycopg

    needles = [s for s in secrets if s]
    needles += [s.split(".")[-1] for s in needles if s.count(".") == 2]  # signatures, secrets
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select action, row_to_json(a)::text from atendeai.audit_logs a"
            " where clinic_id = any(%s)",
            [list(clinic_ids)],
        ).fetchall()
    found = [f"audit row {action!r}" for action, text in rows if any(n in text for n in needles)]
    for path in log_paths:
        try:
            text = Path(path).read_text(errors="replace")
        except FileNotFoundError:
            continue
        if any(needle in text for needle in needles):
            found.append(f"log {path}")
    if found:
        raise SecurityCheckFailed(f"a password or raw token was written to: {', '.join(found)}")
    if not rows:
        raise SecurityCheckFailed("control failed: the clinics have no audit rows to look at")


def check_token_responses_not_cached(auth: AuthEndpoint, email: str, password: str) -> None:
    """Login and refresh answers carry ``Cache-Control: no-store``."""
    login = auth.login(email, password)
    _expect(login, 200, "login")
    refresh = auth.refresh(login.json()["refresh_token"])
    _expect(refresh, 200, "refresh")
    for name, response in (("login", login), ("refresh", refresh)):
        cache_control = response.headers.get("Cache-Control", "")
        directives = {d.strip().lower() for d in cache_control.split(",")}
        if "no-store" not in directives:
            raise SecurityCheckFailed(
                f"the {name} answer (tokens) has Cache-Control {cache_control!r}, not no-store"
            )


__all__ = [
    "AuthEndpoint",
    "bcrypt_cost",
    "check_bcrypt_cost",
    "check_logout_revokes",
    "check_long_passwords_refused",
    "check_no_secrets_in_audit_and_logs",
    "check_no_user_enumeration",
    "check_refresh_rotation",
    "check_reuse_revokes_family",
    "check_token_responses_not_cached",
]
