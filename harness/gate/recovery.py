"""The drill's instruments: a canary user, and HAProxy's view of its servers.

The canary signs in through HAProxy (``POST /auth/login``, with accounts of
its own) and reads (``GET /auth/me``, which always queries PostgreSQL, and
``GET /clinics/me``): "served again" is ``CONSISTENT_READS`` reads in a row
and a sign-in. HAProxy's stats page says whether a server is in rotation.
``harness.gate.drill`` uses both while the fault plan runs under load.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.tenants import login_body

if TYPE_CHECKING:
    import httpx

    from harness.loadseed import LoadAccount

#: The spec: "Recovery time < 2 minutos".
RECOVERY_THRESHOLD_S = 120.0
#: Reads in a row, through the gateway, that count as "serving again".
CONSISTENT_READS = 5
READ_INTERVAL_S = 0.2
REQUEST_TIMEOUT_S = 5.0
#: How long the canary may take to read consistently before any fault.
BASELINE_TIMEOUT_S = 15.0
CANARY_ACCOUNTS = 4


# --- the canary ------------------------------------------------------------------


class Canary:
    """A user who signs in and reads through the gateway; counts what went wrong.

    Every call takes the ``deadline`` (``time.monotonic()``) of the step it
    serves: no request outlives it.
    """

    def __init__(self, gateway: str, accounts: Sequence[LoadAccount], *, client_ip: str) -> None:
        import httpx

        self._accounts = itertools.cycle(accounts)  # one per sign-in: no account limit
        self._client = httpx.Client(
            base_url=gateway, headers={"X-Forwarded-For": client_ip}, timeout=REQUEST_TIMEOUT_S
        )
        self._token = ""
        self._failures: Counter[str] = Counter()  # "GET /auth/me answered 503" -> times
        self._examples: dict[str, str] = {}  # the last answer's body, per kind of failure

    def forget_failures(self) -> None:
        self._failures.clear()
        self._examples.clear()

    @property
    def failures(self) -> str:
        """What went wrong since ``forget_failures()``, most frequent first, with an example."""
        if not self._failures:
            return "none"
        return "; ".join(
            f"{kind} x{times}" + (f" ({self._examples[kind]})" if self._examples[kind] else "")
            for kind, times in self._failures.most_common()
        )

    def sign_in(self, deadline: float) -> bool:
        """``POST /auth/login`` once, with the next account; keeps the access token."""
        account = next(self._accounts)
        response = self._request("POST", "/auth/login", deadline, json=login_body(account))
        if response is None:
            return False
        self._token = response.json()["access_token"]
        return True

    def signs_in(self, deadline: float) -> bool:
        """Sign in, trying again until ``deadline`` (a stack just restarted warms up)."""
        while not self.sign_in(deadline):
            if time.monotonic() >= deadline:
                return False
            time.sleep(READ_INTERVAL_S)
        return True

    def read(self, deadline: float) -> bool:
        """``GET /auth/me`` (always queries PostgreSQL) and ``GET /clinics/me``, both 200."""
        headers = {"Authorization": f"Bearer {self._token}"}
        return all(
            self._request("GET", path, deadline, headers=headers) is not None
            for path in ("/auth/me", "/clinics/me")
        )

    def reads_consistently(
        self, *, since: float, deadline: float, sign_in: bool = True
    ) -> tuple[float | None, int]:
        """Seconds from ``since`` until ``CONSISTENT_READS`` reads in a row succeed (and
        then a sign-in, when asked), and how many attempts failed on the way;
        ``None`` seconds when ``deadline`` comes first."""
        streak, streak_began, failures = 0, 0.0, 0
        while time.monotonic() < deadline:
            if self.read(deadline):
                streak += 1
                streak_began = time.monotonic() if streak == 1 else streak_began
                if streak >= CONSISTENT_READS:
                    if not sign_in or self.sign_in(deadline):
                        return streak_began - since, failures
                    streak = 0
                    failures += 1
            else:
                streak = 0
                failures += 1
            time.sleep(READ_INTERVAL_S)
        return None, failures

    def _request(self, method: str, path: str, deadline: float, **options) -> httpx.Response | None:
        import httpx

        timeout = min(REQUEST_TIMEOUT_S, max(0.2, deadline - time.monotonic()))
        try:
            response = self._client.request(method, path, timeout=timeout, **options)
        except httpx.HTTPError as error:
            self._failed(f"{method} {path}: {type(error).__name__}", str(error))
            return None
        if response.status_code != 200:
            self._failed(f"{method} {path} answered {response.status_code}", response.text)
            return None
        return response

    def _failed(self, kind: str, example: str) -> None:
        self._failures[kind] += 1
        self._examples[kind] = " ".join(example.split())[:160]

    def close(self) -> None:
        self._client.close()


# --- HAProxy's view ----------------------------------------------------------------


def haproxy_servers(stats_url: str) -> dict[str, dict[str, str]]:
    """``{"backend/server": row}`` from HAProxy's stats page at ``stats_url`` (``status``,
    ``check_status``, ``last_chk``...); ``NotReadyYet`` when it cannot be read."""
    import httpx

    from harness.exceptions import NotReadyYet
    from harness.providers.haproxy import server_rows

    try:
        text = httpx.get(f"{stats_url};csv", timeout=REQUEST_TIMEOUT_S).text
        return server_rows(text)
    except (httpx.HTTPError, NotReadyYet) as error:
        raise NotReadyYet(
            f"HAProxy's stats page at {stats_url}: {type(error).__name__}: {error}"
        ) from None


def describe_servers(stats_url: str) -> str:
    """HAProxy's view of every server, one ``name STATUS`` each (for evidence)."""
    from harness.exceptions import NotReadyYet

    try:
        rows = haproxy_servers(stats_url)
    except NotReadyYet as error:
        return f"stats page unreadable ({error})"
    return ", ".join(f"{name} {row['status']}" for name, row in sorted(rows.items()))


__all__ = [
    "CONSISTENT_READS",
    "RECOVERY_THRESHOLD_S",
    "Canary",
    "describe_servers",
    "haproxy_servers",
]
