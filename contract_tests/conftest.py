"""Helpers shared by the contract suites (fixtures come from harness.pytest_plugin)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from jsonschema import Draft202012Validator

from harness.stack import Stack


@pytest.fixture
def redis_client(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def openapi_docs(stack: Stack) -> dict[str, dict[str, Any]]:
    """Each service's live OpenAPI document."""
    docs = {}
    for name, url in stack.services.items():
        response = httpx.get(f"{url}/openapi.json", timeout=10)
        response.raise_for_status()
        docs[name] = response.json()
    return docs


def wait_ready(url: str, status: int, *, timeout: float = 30, says: str | None = None) -> dict:
    """``GET {url}/ready``'s body once it answers ``status`` (and, when given, its
    ``"status"`` field says ``says``: ``ok``, ``degraded`` or ``down``)."""
    from harness.processes import wait_until

    def answered() -> dict | None:
        try:
            response = httpx.get(f"{url}/ready", timeout=5)
        except httpx.HTTPError:
            return None
        if response.status_code != status:
            return None
        body = response.json()
        return body if says is None or body["status"] == says else None

    what = f"{url}/ready -> {status}" + (f" {says}" if says else "")
    return wait_until(answered, timeout=timeout, interval=0.1, what=what)


def clear_of_window_edge(window: int = 60, margin: float = 20.0) -> None:
    """The platform's rate limits are fixed windows starting at multiples of
    ``window`` seconds: a burst straddling the edge legitimately gets two
    windows' worth. Wait out the last ``margin`` seconds of the window."""
    left = window - time.time() % window
    if left < margin:
        time.sleep(left + 0.5)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """The one error shape, with the expected status (and code), and no trace."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message", "request_id"} <= set(error), error
    assert error["request_id"] == response.headers["X-Request-ID"]
    if code is not None:
        assert error["code"] == code, error
    assert "Traceback" not in response.text and "psycopg" not in response.text
    return error


def validate_against_openapi(doc: dict[str, Any], method: str, path: str, response: httpx.Response):
    """Check status and body of ``response`` against the documented operation."""
    operation = doc["paths"][path][method.lower()]
    documented = operation["responses"]
    status = str(response.status_code)
    assert status in documented, (
        f"{method} {path} answered {status}, documented: {sorted(documented)}; {response.text}"
    )
    content = documented[status].get("content")
    if content is None:
        assert response.content == b"", f"{method} {path} {status} documents no body"
        return
    media_type = response.headers["Content-Type"].split(";")[0]
    assert media_type in content, f"{method} {path} answered {media_type}, documented {content}"
    if media_type != "application/json":
        return
    schema = content["application/json"]["schema"]
    Draft202012Validator({**schema, "components": doc["components"]}).validate(response.json())
