"""HTTP hardening checks: login rate limits under concurrency, CORS, security
headers on every response, error bodies without traces or SQL.

Each check raises ``SecurityCheckFailed`` with the evidence (and returns what
it measured, for the suite's summary).
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from harness.security import SecurityCheckFailed

TIMEOUT_S = 20.0
EVIL_ORIGIN = "https://evil.example"

# --------------------------------------------------------------------------- rate limits


@dataclass(frozen=True)
class LoginAttempt:
    url: str
    clinic_slug: str
    email: str
    password: str
    client_ip: str


@dataclass
class BurstOutcome:
    statuses: Counter[int] = field(default_factory=Counter)
    admitted: list[httpx.Response] = field(default_factory=list)
    refused: list[httpx.Response] = field(default_factory=list)

    def describe(self) -> str:
        return ", ".join(f"{status}: {count}" for status, count in sorted(self.statuses.items()))


def fire_concurrently(attempts: Sequence[LoginAttempt]) -> BurstOutcome:
    """Send every login at once (one thread each, released together)."""
    import threading

    start = threading.Barrier(len(attempts))

    def send(attempt: LoginAttempt) -> httpx.Response:
        with httpx.Client(timeout=TIMEOUT_S) as client:
            start.wait(timeout=TIMEOUT_S)
            return client.post(
                f"{attempt.url}/auth/login",
                json={
                    "clinic_slug": attempt.clinic_slug,
                    "email": attempt.email,
                    "password": attempt.password,
                },
                headers={"X-Forwarded-For": attempt.client_ip},
            )

    with ThreadPoolExecutor(max_workers=len(attempts)) as pool:
        responses = list(pool.map(send, attempts))
    outcome = BurstOutcome()
    for response in responses:
        outcome.statuses[response.status_code] += 1
        (outcome.refused if response.status_code == 429 else outcome.admitted).append(response)
    return outcome


def check_login_limit_exact(
    attempts: Sequence[LoginAttempt], *, limit: int, window_seconds: int, check_counts: bool
) -> BurstOutcome:
    """Exactly ``limit`` of a concurrent burst get through; the rest are 429 with
    ``Retry-After``. With ``check_counts`` (the limit reported in the headers is
    the one being exhausted), the admitted answers' ``RateLimit-Remaining`` are
    exactly ``limit-1 .. 0``, each once: every admission was counted."""
    outcome = fire_concurrently(attempts)
    problems = []
    if len(outcome.admitted) != limit:
        verb = "over" if len(outcome.admitted) > limit else "under"
        problems.append(
            f"{len(outcome.admitted)} of {len(attempts)} concurrent logins got through a limit "
            f"of {limit} ({verb}-admission; answers {outcome.describe()})"
        )
    unexpected = set(outcome.statuses) - {200, 401, 429}
    if unexpected:
        problems.append(f"unexpected statuses {sorted(unexpected)}: {outcome.describe()}")
    for response in outcome.refused:
        retry_after = response.headers.get("Retry-After", "")
        if not retry_after.isdigit() or not 1 <= int(retry_after) <= window_seconds:
            problems.append(f"429 with Retry-After {retry_after!r} (want 1..{window_seconds})")
            break
        if response.headers.get("RateLimit-Remaining") != "0":
            problems.append(
                f"429 with RateLimit-Remaining {response.headers.get('RateLimit-Remaining')!r}"
            )
            break
    for response in outcome.admitted + outcome.refused:
        missing = [h for h in RATE_LIMIT_HEADERS if h not in response.headers]
        kong = [h for h in response.headers if h.lower().startswith("x-ratelimit-limit-")]
        if missing or not kong:
            problems.append(f"{response.status_code} without {missing or 'X-RateLimit-Limit-*'}")
            break
    if check_counts and len(outcome.admitted) == limit:
        remaining = sorted(int(r.headers.get("RateLimit-Remaining", -1)) for r in outcome.admitted)
        if remaining != list(range(limit)):
            problems.append(
                f"the admitted answers report RateLimit-Remaining {remaining}, "
                f"not each of 0..{limit - 1} once"
            )
        limits = {r.headers.get("RateLimit-Limit") for r in outcome.admitted}
        if limits != {str(limit)}:
            problems.append(f"RateLimit-Limit {limits}, want {limit}")
    if problems:
        raise SecurityCheckFailed("login rate limit: " + "; ".join(problems))
    return outcome


RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


# --------------------------------------------------------------------------- CORS


def check_cors(
    base_url: str, allowed_origin: str, *, paths: Sequence[tuple[str, str]] = (("GET", "/health"),)
) -> None:
    """A disallowed origin gets no CORS header at all (simple or preflight); an allowed
    one gets itself back (never ``*`` with credentials) and a correct preflight."""
    problems = []
    with httpx.Client(base_url=base_url, timeout=TIMEOUT_S) as client:
        for method, path in paths:
            for origin in (EVIL_ORIGIN, "null", allowed_origin):
                allowed = origin == allowed_origin
                simple = client.request(method, path, headers={"Origin": origin})
                preflight = client.options(
                    path,
                    headers={
                        "Origin": origin,
                        "Access-Control-Request-Method": method,
                        "Access-Control-Request-Headers": "authorization, content-type",
                    },
                )
                for kind, response in (("request", simple), ("preflight", preflight)):
                    acao = response.headers.get("Access-Control-Allow-Origin")
                    credentials = response.headers.get("Access-Control-Allow-Credentials")
                    where = f"{kind} {method} {path} from {origin}"
                    if acao == "*" and credentials == "true":
                        problems.append(f"{where}: Allow-Origin * together with credentials")
                    if not allowed and (acao is not None or credentials is not None):
                        problems.append(
                            f"{where}: a disallowed origin got Allow-Origin {acao!r}, "
                            f"Allow-Credentials {credentials!r}"
                        )
                    if allowed and acao != origin:
                        problems.append(f"{where}: Allow-Origin {acao!r}, want {origin!r}")
                    if allowed and "origin" not in response.headers.get("Vary", "").lower():
                        problems.append(f"{where}: no Vary: Origin (caches would mix origins)")
                if allowed:
                    methods = preflight.headers.get("Access-Control-Allow-Methods", "")
                    headers = preflight.headers.get("Access-Control-Allow-Headers", "").lower()
                    if preflight.status_code not in (200, 204):
                        problems.append(f"preflight {path}: status {preflight.status_code}")
                    if method not in [m.strip() for m in methods.split(",")]:
                        problems.append(
                            f"preflight {path}: Allow-Methods {methods!r} lacks {method}"
                        )
                    if "authorization" not in headers:
                        problems.append(f"preflight {path}: Allow-Headers {headers!r}")
                elif preflight.status_code < 400:
                    problems.append(
                        f"preflight {method} {path} from {origin} answered {preflight.status_code}"
                    )
    if problems:
        raise SecurityCheckFailed(f"CORS at {base_url}: " + "; ".join(problems))


# --------------------------------------------------------------------------- headers

#: header -> predicate on its value (lower case).
REQUIRED_HEADERS: dict[str, Any] = {
    "X-Content-Type-Options": lambda v: v == "nosniff",
    "X-Frame-Options": lambda v: v in ("deny", "sameorigin"),
    "Content-Security-Policy": lambda v: "frame-ancestors" in v or "default-src" in v,
    "Referrer-Policy": lambda v: v != "",
    "Strict-Transport-Security": lambda v: "max-age=" in v,
}


def documented_requests(
    doc: Mapping[str, Any], token: str | None
) -> list[tuple[str, str, dict[str, str], Any]]:
    """One request per documented operation (fresh uuids in the path), plus error cases."""
    requests: list[tuple[str, str, dict[str, str], Any]] = []
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    for path, methods in doc.get("paths", {}).items():
        concrete = re.sub(r"{\w+}", lambda _: str(uuid.uuid4()), path)
        for method in methods:
            requests.append((method.upper(), concrete, auth, {} if method != "get" else None))
            if auth:
                requests.append((method.upper(), concrete, {}, None))  # anonymous: 401
    requests += [
        ("GET", "/no-such-route", {}, None),
        ("DELETE", "/health", {}, None),  # 405
        (
            "POST",
            next(iter(doc.get("paths", {"/": {}}))),
            {**auth, "Content-Type": "application/json"},
            b"{",
        ),
    ]
    return requests


def _send(
    client: httpx.Client, method: str, path: str, headers: dict[str, str], body: Any
) -> httpx.Response:
    if isinstance(body, bytes):
        return client.request(method, path, headers=headers, content=body)
    return client.request(method, path, headers=headers, json=body)


def check_security_headers(
    base_url: str, doc: Mapping[str, Any], *, token: str | None, client_ip: str
) -> int:
    """Every answer, success or error, carries the security headers; returns how many."""
    problems = []
    count = 0
    with httpx.Client(
        base_url=base_url, timeout=TIMEOUT_S, headers={"X-Forwarded-For": client_ip}
    ) as client:
        for method, path, headers, body in documented_requests(doc, token):
            response = _send(client, method, path, headers, body)
            count += 1
            for name, ok in REQUIRED_HEADERS.items():
                value = response.headers.get(name)
                if value is None or not ok(value.lower()):
                    problems.append(
                        f"{method} {path} -> {response.status_code}: {name} = {value!r}"
                    )
    if problems:
        raise SecurityCheckFailed(
            f"security headers at {base_url}: {len(problems)} missing or wrong, e.g. "
            + "; ".join(problems[:5])
        )
    return count


# --------------------------------------------------------------------------- error bodies

LEAK_MARKERS = (
    "Traceback",
    'File "',
    "site-packages",
    "psycopg",
    "pydantic",
    "asyncpg",
    "SELECT ",
    "INSERT INTO",
    "UPDATE atendeai",
    "DELETE FROM",
    "atendeai.",
    "syntax error",
    "Exception",
    "Error:",
)

NASTY_VALUES: tuple[Any, ...] = (
    "' OR '1'='1' --",
    '"; DROP TABLE atendeai.users; --',
    "a\u0000b",
    "x" * 10_000,
    "%s%s%s%n",
    "{{7*7}}",
    "../../etc/passwd",
    -1,
    1e308,
    10**30,
    [],
    {"$gt": ""},
    None,
    True,
)


def error_requests(doc: Mapping[str, Any]) -> Iterable[tuple[str, str, dict[str, str], Any]]:
    """Requests that must be refused cleanly: malformed, mistyped, oversized, hostile."""
    json_type = {"Content-Type": "application/json"}
    for path, methods in doc.get("paths", {}).items():
        for method, operation in methods.items():
            concrete = re.sub(r"{\w+}", lambda _: "1' OR '1'='1", path)
            yield method.upper(), concrete, {}, None
            if "requestBody" not in operation:
                continue
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            ref = body.get("$ref", "").rsplit("/", 1)[-1]
            schema = doc.get("components", {}).get("schemas", {}).get(ref, {})
            fields = list(schema.get("properties", {})) or ["name"]
            yield method.upper(), path, json_type, b"{not json"
            yield method.upper(), path, json_type, b"\xff\xfe\x00garbage"
            yield method.upper(), path, {"Content-Type": "text/plain"}, b"hello"
            yield method.upper(), path, json_type, b"[" * 5000 + b"]" * 5000
            yield method.upper(), path, json_type, b'{"a": "' + b"x" * 70_000 + b'"}'
            for field_name, nasty in zip(itertools.cycle(fields), NASTY_VALUES, strict=False):
                yield method.upper(), path, {}, {field_name: nasty}


def check_error_bodies(
    base_url: str, doc: Mapping[str, Any], *, token: str | None, client_ip: str
) -> int:
    """Every error answer is the one JSON shape, never a 5xx, never a trace or SQL."""
    problems = []
    count = 0
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(
        base_url=base_url, timeout=TIMEOUT_S, headers={"X-Forwarded-For": client_ip}
    ) as client:
        for method, path, headers, body in error_requests(doc):
            response = _send(client, method, path, {**auth, **headers}, body)
            count += 1
            where = f"{method} {path} {str(body)[:40]!r} -> {response.status_code}"
            if response.status_code >= 500:
                problems.append(f"{where}: a server error for bad input")
            if response.status_code < 400:
                continue
            leaked = [m for m in LEAK_MARKERS if m in response.text]
            if leaked:
                problems.append(f"{where}: the body shows {leaked}: {response.text[:300]}")
            try:
                payload = response.json()
            except ValueError:
                problems.append(f"{where}: not JSON: {response.text[:200]}")
                continue
            error = payload.get("error") if isinstance(payload, dict) else None
            if (
                set(payload) != {"error"}
                or not isinstance(error, dict)
                or not {
                    "code",
                    "message",
                    "request_id",
                }
                <= set(error)
                or set(error) - {"code", "message", "request_id", "details"}
            ):
                problems.append(f"{where}: not the error shape: {str(payload)[:300]}")
    if problems:
        raise SecurityCheckFailed(
            f"error bodies at {base_url}: {len(problems)} problem(s), e.g. "
            + "; ".join(problems[:5])
        )
    return count


__all__ = [
    "EVIL_ORIGIN",
    "BurstOutcome",
    "LoginAttempt",
    "check_cors",
    "check_error_bodies",
    "check_login_limit_exact",
    "check_security_headers",
    "fire_concurrently",
]
