"""Cross-cutting request handling, in one middleware (``build_middlewares``),
outermost first:

1. request context: request id, client IP (X-Forwarded-For only from trusted
   proxies), metrics (latency by route template, in-flight);
2. security headers and CORS on every response, and CORS preflights answered
   before routing;
3. JSON errors: every error becomes the one JSON shape, never a trace.

One middleware, not three: each aiohttp middleware is a coroutine frame and a
call of its own on every request, and these three always run together.

Fault injection (``ATENDEAI_FAULTS``) is no middleware: ``system_under_test.faults``
wraps the handlers of the routes its rules name.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from system_under_test.config import Settings
from system_under_test.errors import (
    ApiError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from system_under_test.metrics import REQUEST_DURATION, REQUESTS_IN_FLIGHT

log = logging.getLogger("atendeai.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
    # aiohttp would answer "Python/3.11 aiohttp/3.x": no library names or versions.
    "Server": "atendeai",
}
CORS_ALLOW_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID"
CORS_EXPOSE_HEADERS = (
    "X-Request-ID, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, X-Cache"
)


def client_ip(request: web.Request, trusted: Callable[[str], bool]) -> str:
    """The caller's address: the peer, or the nearest untrusted hop of
    X-Forwarded-For when the peer is a trusted proxy (``trusted``: see
    ``trusted_proxy_check``)."""
    peer = request.remote or ""
    if not trusted(peer):
        return peer
    # A proxy may add its own X-Forwarded-For line instead of extending the
    # client's (HAProxy's `option forwardfor` does): all the lines, in order,
    # are one list (RFC 9110 5.3). Reading only the first would trust the
    # address the client wrote itself.
    chain = ",".join(request.headers.getall("X-Forwarded-For", []))
    hops = [h.strip() for h in chain.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_address(hop):
            return peer  # a malformed chain is not trusted
        if not trusted(hop):
            return hop
    return hops[0] if hops else peer


# Every request asks these of the same few addresses (the gateway's, the
# clients'): parsed once each, not on every request. Bounded, so addresses
# written into X-Forwarded-For cannot grow them.
@functools.lru_cache(maxsize=4096)
def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def trusted_proxy_check(proxies: tuple[Network, ...]) -> Callable[[str], bool]:
    """Whether an address is one of ``proxies``, answered once per address (the
    cache is keyed by the address alone: a tuple of networks as part of the key
    would be hashed, network by network in Python, on every request)."""

    @functools.lru_cache(maxsize=4096)
    def trusted(address: str) -> bool:
        if not _is_address(address):
            return False
        ip = ipaddress.ip_address(address)
        return any(ip in network for network in proxies)

    return trusted


class RequestIds:
    """Request ids for requests that bring none (or an unsafe one): a random
    prefix per process and a counter, 32 hex digits, unique across instances.
    Not secret (every response shows its own), so not drawn from the kernel's
    random source on every request."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):016x}"


#: The latency series of each (method, route template, status), looked up once.
@functools.lru_cache(maxsize=1024)
def _latency_series(method: str, template: str, status: int):
    return REQUEST_DURATION.labels(method, template, str(status))


def build_middlewares(settings: Settings) -> list:
    allowed_origins = frozenset(settings.cors_origins)
    trusted = trusted_proxy_check(settings.trusted_proxies)
    request_ids = RequestIds()

    @web.middleware
    async def platform_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else request_ids.next()
        request["request_id"] = request_id
        request["client_ip"] = client_ip(request, trusted)
        started = time.perf_counter()
        status = 500
        REQUESTS_IN_FLIGHT.inc()
        try:
            origin = request.headers.get("Origin")
            origin_allowed = origin is not None and origin in allowed_origins
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                response = _preflight(origin_allowed, request_id)
            else:
                response = await _answered(request, handler, settings)
            headers = response.headers
            for name, value in SECURITY_HEADERS.items():
                headers.setdefault(name, value)
            if origin is not None:
                headers["Vary"] = "Origin"
            if origin_allowed:
                headers["Access-Control-Allow-Origin"] = origin
                headers["Access-Control-Allow-Credentials"] = "true"
                headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
            status = response.status
            headers["X-Request-ID"] = request_id
            return response
        finally:
            REQUESTS_IN_FLIGHT.dec()
            route = request.match_info.route.resource
            template = route.canonical if route is not None else "unmatched"
            _latency_series(request.method, template, status).observe(time.perf_counter() - started)

    return [platform_middleware]


def _preflight(origin_allowed: bool, request_id: str) -> web.StreamResponse:
    """The answer to a CORS preflight (before routing): 204 for an allowed origin."""
    if not origin_allowed:
        return _error_response(
            Forbidden("origin not allowed", code="cors_origin_denied"), request_id
        )
    response = web.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = CORS_ALLOW_METHODS
    response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
    response.headers["Access-Control-Max-Age"] = "600"
    return response


async def _answered(
    request: web.Request, handler: Handler, settings: Settings
) -> web.StreamResponse:
    """The handler's response, or its error in the one JSON shape (never a trace)."""
    try:
        return await handler(request)
    except ApiError as error:
        return _error_response(error, request["request_id"])
    except web.HTTPRequestEntityTooLarge:
        error = PayloadTooLarge(f"the body is larger than {settings.max_body_bytes} bytes")
        return _error_response(error, request["request_id"])
    except web.HTTPNotFound:
        return _error_response(NotFound("no such route"), request["request_id"])
    except web.HTTPMethodNotAllowed as exc:
        error = MethodNotAllowed(
            f"{request.method} is not allowed here",
            headers={"Allow": ", ".join(sorted(exc.allowed_methods))},
        )
        return _error_response(error, request["request_id"])
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = ApiError(exc.reason, code="http_error")
        response = _error_response(error, request["request_id"])
        response.set_status(exc.status)
        return response
    except Exception:
        log.exception("unhandled error answering %s %s", request.method, request.path)
        error = ApiError("internal error; quote the request id when reporting it")
        return _error_response(error, request["request_id"])


def _error_response(error: ApiError, request_id: str) -> web.Response:
    return web.json_response(
        error.body(request_id), status=error.status, headers=error.headers or None
    )
