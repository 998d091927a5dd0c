"""Cross-cutting request handling, outermost first:

1. ``request_context``: request id, client IP (X-Forwarded-For only from
   trusted proxies), metrics (latency by route template, in-flight);
2. ``security_headers``: security headers and CORS on every response, and
   CORS preflights answered before routing;
3. ``json_errors``: every error becomes the one JSON shape, never a trace.

Fault injection (``ATENDEAI_FAULTS``) is no middleware: ``system_under_test.faults``
wraps the handlers of the routes its rules name.
"""

from __future__ import annotations

import functools
import ipaddress
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


def client_ip(request: web.Request, settings: Settings) -> str:
    """The caller's address: the peer, or the nearest untrusted hop of
    X-Forwarded-For when the peer is a trusted proxy."""
    peer = request.remote or ""
    proxies = settings.trusted_proxies
    if not _trusted(peer, proxies):
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
        if not _trusted(hop, proxies):
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


@functools.lru_cache(maxsize=4096)
def _trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    if not _is_address(address):
        return False
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in proxies)


def build_middlewares(settings: Settings) -> list:
    allowed_origins = frozenset(settings.cors_origins)

    @web.middleware
    async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else secrets.token_hex(16)
        request["request_id"] = request_id
        request["client_ip"] = client_ip(request, settings)
        started = time.perf_counter()
        status = 500
        REQUESTS_IN_FLIGHT.inc()
        try:
            response = await handler(request)
            status = response.status
            response.headers["X-Request-ID"] = request_id
            return response
        finally:
            REQUESTS_IN_FLIGHT.dec()
            route = request.match_info.route.resource
            template = route.canonical if route is not None else "unmatched"
            REQUEST_DURATION.labels(request.method, template, str(status)).observe(
                time.perf_counter() - started
            )

    @web.middleware
    async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        origin_allowed = origin is not None and origin in allowed_origins
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if not origin_allowed:
                response: web.StreamResponse = _error_response(
                    Forbidden("origin not allowed", code="cors_origin_denied"),
                    request["request_id"],
                )
            else:
                response = web.Response(status=204)
                response.headers["Access-Control-Allow-Methods"] = CORS_ALLOW_METHODS
                response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
                response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if origin is not None:
            response.headers["Vary"] = "Origin"
        if origin_allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
        return response

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
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

    return [request_context, security_headers, json_errors]


def _error_response(error: ApiError, request_id: str) -> web.Response:
    return web.json_response(
        error.body(request_id), status=error.status, headers=error.headers or None
    )
