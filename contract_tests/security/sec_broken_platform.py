"""Deliberately broken variants of the platform's services, for the proofs.

    python sec_broken_platform.py --defect NAME SERVICE --port P [--host H]

Each defect is one realistic mistake (a verifier that skips the signature, a
limiter with a check-then-set race, CORS that reflects any origin, ...). It is
applied inside this process only, to the real ``system_under_test`` code,
before the app starts; the configuration is the stack's (the same
``ATENDEAI_*`` environment). The security suites start a variant, run the
*same* check function they run against the real stack, and assert it fails.

Never import this from the platform or the harness: it exists to be wrong.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from aiohttp import web

from system_under_test import SERVICES
from system_under_test.config import Settings
from system_under_test.routing import Call

Middleware = Callable[[web.Request, Callable[[web.Request], Awaitable[web.StreamResponse]]], Any]
Defect = Callable[[Settings], tuple[Settings, list[Middleware]]]
DEFECTS: dict[str, Defect] = {}
log = logging.getLogger("atendeai.broken")


def defect(name: str) -> Callable[[Defect], Defect]:
    def register(function: Defect) -> Defect:
        DEFECTS[name] = function
        return function

    return register


def replace_handler(module: Any, method: str, path: str, handler: Callable[..., Any]) -> Callable:
    """Swap one route's handler in ``module.ROUTES``; return the original handler."""
    for index, route in enumerate(module.ROUTES):
        if (route.method, route.path) == (method, path):
            module.ROUTES[index] = dataclasses.replace(route, handler=handler)
            return route.handler
    raise LookupError(f"{method} {path} is not a route of {module.__name__}")


def _json_of(response: web.StreamResponse) -> Any:
    """The JSON body of a response the platform built (bytes, or a string payload)."""
    body = getattr(response, "body", None)
    body = getattr(body, "_value", body)  # aiohttp keeps a str body as a StringPayload
    return json.loads(body)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _claims_as_principal(claims: dict[str, Any], *, check_type: bool = True) -> Any:
    from system_under_test.tokens import InvalidToken, Principal

    if check_type and claims.get("typ") != "access":
        raise InvalidToken("not an access token")
    try:
        return Principal(
            user_id=uuid.UUID(claims["sub"]),
            clinic_id=uuid.UUID(claims["clinic_id"]),
            role=str(claims["role"]),
            session_family=uuid.UUID(claims["sid"]),
            token_id=str(claims["jti"]),
        )
    except (KeyError, ValueError, TypeError):
        raise InvalidToken("malformed claims") from None


@defect("none")
def _none(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """The real code; the defect, if any, is in the configuration the test passes."""
    return settings, []


# --- tokens --------------------------------------------------------------------------


@defect("verify_no_signature")
def _verify_no_signature(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Decodes the token without checking the signature (any alg, any key)."""
    from system_under_test.tokens import TokenSigner

    def verify(self: TokenSigner, token: str) -> Any:
        from system_under_test.tokens import InvalidToken

        try:  # reads the payload and trusts it
            claims = json.loads(_b64decode(token.split(".")[1]))
        except (IndexError, ValueError) as error:
            raise InvalidToken(str(error)) from None
        return _claims_as_principal(claims)

    TokenSigner.verify_access_token = verify  # type: ignore[method-assign]
    return settings, []


@defect("hs_rs_confusion")
def _hs_rs_confusion(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Trusts the token's alg: an HS256 token is checked with the RSA public key as secret."""
    from system_under_test.tokens import InvalidToken, TokenSigner

    original = TokenSigner.verify_access_token

    def verify(self: TokenSigner, token: str) -> Any:
        header_part, payload_part, signature_part = [*token.split("."), "", ""][:3]
        header = json.loads(_b64decode(header_part))
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
        if str(header.get("alg", "")).upper() in digest:
            expected = hmac.new(
                self.public_key.encode(),
                f"{header_part}.{payload_part}".encode(),
                digest[str(header["alg"]).upper()],
            ).digest()
            if not hmac.compare_digest(expected, _b64decode(signature_part)):
                raise InvalidToken("bad HMAC")
            return _claims_as_principal(json.loads(_b64decode(payload_part)))
        return original(self, token)

    TokenSigner.verify_access_token = verify  # type: ignore[method-assign]
    return settings, []


@defect("jku_fetch")
def _jku_fetch(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Fetches the verification key from the token's ``jku`` (or ``x5u``) header."""
    from system_under_test.tokens import InvalidToken, TokenSigner

    original = TokenSigner.verify_access_token

    def verify(self: TokenSigner, token: str) -> Any:
        header = jwt.get_unverified_header(token)
        url = header.get("jku") or header.get("x5u")
        if not url:
            return original(self, token)
        with urllib.request.urlopen(url, timeout=2) as answer:  # the defect: an outbound call
            keys = json.loads(answer.read())["keys"]
        key = jwt.PyJWK(keys[0]).key
        try:
            claims = jwt.decode(token, key, algorithms=["RS256"], options={"verify_aud": False})
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from None
        return _claims_as_principal(claims)

    TokenSigner.verify_access_token = verify  # type: ignore[method-assign]
    return settings, []


@defect("lax_claims")
def _lax_claims(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Checks the signature but not exp, nbf, iss or aud, and requires no claim."""
    from system_under_test.tokens import InvalidToken, TokenSigner

    def verify(self: TokenSigner, token: str) -> Any:
        try:
            claims = jwt.decode(
                token,
                self.public_key,
                algorithms=["RS256"],
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iss": False,
                    "verify_aud": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from None
        return _claims_as_principal(claims)

    TokenSigner.verify_access_token = verify  # type: ignore[method-assign]
    return settings, []


@defect("no_type_check")
def _no_type_check(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Accepts any signed token as an access token, whatever its ``typ``."""
    from system_under_test.tokens import InvalidToken, TokenSigner

    def verify(self: TokenSigner, token: str) -> Any:
        try:
            claims = jwt.decode(
                token,
                self.public_key,
                algorithms=["RS256"],
                audience=self.audience,
                issuer=self.issuer,
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from None
        return _claims_as_principal(claims, check_type=False)

    TokenSigner.verify_access_token = verify  # type: ignore[method-assign]
    return settings, []


# --- refresh, logout ------------------------------------------------------------------


@defect("no_rotation")
def _no_rotation(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """A refresh token stays valid after use: it is never left spent."""
    from system_under_test.services import auth
    from system_under_test.tokens import digest, refresh_token_clinic

    original = auth.refresh

    async def refresh(call: Call) -> web.StreamResponse:
        response = await original(call)
        token = call.body.refresh_token
        async with call.platform.db.tenant(call.tenant(refresh_token_clinic(token))) as conn:
            await conn.execute(
                "UPDATE atendeai.sessions SET used_at = NULL WHERE refresh_token_hash = %s",
                (digest(token),),
            )
        return response

    replace_handler(auth, "POST", "/auth/refresh", refresh)
    return settings, []


@defect("no_family_revocation")
def _no_family_revocation(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Reuse of a spent refresh token is refused, but its family is not revoked."""
    from system_under_test.services import auth

    auth.REVOKE_FAMILY = "SELECT %(family_id)s::uuid, %(reason)s::text"  # read at call time
    return settings, []


@defect("logout_no_revoke")
def _logout_no_revoke(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Logout answers 204 and forgets to revoke anything."""
    from system_under_test.services import auth

    async def logout(call: Call) -> web.StreamResponse:
        return web.Response(status=204, headers=auth.NO_STORE)

    replace_handler(auth, "POST", "/auth/logout", logout)
    return settings, []


# --- passwords, enumeration, secrets, caching -------------------------------------------


@defect("truncating_passwords")
def _truncating_passwords(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Accepts passwords of any length and lets bcrypt look at the first 72 bytes only."""
    import bcrypt

    from system_under_test import passwords, schemas

    schemas.MAX_PASSWORD_BYTES = 10_000  # the validators read it at call time

    async def verify(self, password: str, password_hash: str | None) -> bool:
        target = password_hash.encode() if password_hash else passwords._DUMMY_HASH
        return bcrypt.checkpw(password.encode()[:72], target) and password_hash is not None

    async def hash(self, password: str) -> str:
        return bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(self.rounds)).decode()

    passwords.PasswordHasher.verify = verify  # type: ignore[method-assign]
    passwords.PasswordHasher.hash = hash  # type: ignore[method-assign]
    return settings, []


@defect("user_enumeration")
def _user_enumeration(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Says when an e-mail has no account, and skips bcrypt for it (fast and different)."""
    from system_under_test.errors import Unauthorized
    from system_under_test.services import auth

    original = auth.login

    async def login(call: Call) -> web.StreamResponse:
        async with call.platform.db.unscoped() as conn:
            cursor = await conn.execute(
                "SELECT id FROM atendeai.find_user_for_login(%s, %s)",
                (call.body.clinic_slug.lower(), call.body.email.lower()),
            )
            known = await cursor.fetchone()
        if known is None:
            raise Unauthorized("no account with that e-mail", code="unknown_user")
        return await original(call)

    replace_handler(auth, "POST", "/auth/login", login)
    return settings, []


@defect("low_bcrypt_cost")
def _low_bcrypt_cost(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Hashes new passwords with cost 4 (fast, and cheap to crack)."""
    return dataclasses.replace(settings, bcrypt_rounds=4), []


@defect("secrets_in_audit_and_logs")
def _secrets_in_audit_and_logs(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Audits the login request body and logs the tokens it issued ("for debugging")."""
    from system_under_test.app import audit_event
    from system_under_test.db import TenantContext
    from system_under_test.services import auth

    original = auth.login

    async def login(call: Call) -> web.StreamResponse:
        response = await original(call)
        pair = _json_of(response)
        log.warning("login issued %s / %s", pair["access_token"], pair["refresh_token"])
        context = TenantContext(clinic_id=uuid.UUID(pair["user"]["clinic_id"]))
        async with call.platform.db.tenant(context) as conn:
            await audit_event(
                conn,
                "debug.login",
                details={"email": call.body.email, "password": call.body.password},
            )
        return response

    replace_handler(auth, "POST", "/auth/login", login)
    return settings, []


@defect("cacheable_tokens")
def _cacheable_tokens(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Token responses say they may be cached."""

    @web.middleware
    async def cacheable(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        if request.path in ("/auth/login", "/auth/refresh"):
            response.headers["Cache-Control"] = "private, max-age=300"
            response.headers.popall("Pragma", None)
        return response

    return settings, [cacheable]


# --- rate limits ----------------------------------------------------------------------


@defect("racy_ratelimit")
def _racy_ratelimit(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Fixed window with a check-then-set race: GET the count, decide, SET count + 1."""
    import asyncio

    from system_under_test import ratelimit
    from system_under_test.services import auth

    async def hit(redis: Any, name: str, key: str, limit: Any) -> Any:
        now = time.time()
        window = int(now // limit.window_seconds)
        redis_key = f"atendeai:ratelimit:{name}:{key}:{window}"
        count = int(await redis.get(redis_key) or 0) + 1
        await asyncio.sleep(0.005)  # any await between the read and the write opens the race
        await redis.set(redis_key, count, ex=limit.window_seconds + 1)
        reset = max(1, int((window + 1) * limit.window_seconds - now + 0.999))
        return ratelimit.RateLimitDecision(name, limit, count, reset)

    auth.hit = hit  # type: ignore[assignment]
    return settings, []


@defect("local_ratelimit")
def _local_ratelimit(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Counts in process memory: every instance has its own limit (not shared in Redis)."""
    from system_under_test import ratelimit
    from system_under_test.services import auth

    counts: Counter[str] = Counter()

    async def hit(redis: Any, name: str, key: str, limit: Any) -> Any:
        now = time.time()
        window = int(now // limit.window_seconds)
        local_key = f"{name}:{key}:{window}"
        counts[local_key] += 1
        reset = max(1, int((window + 1) * limit.window_seconds - now + 0.999))
        return ratelimit.RateLimitDecision(name, limit, counts[local_key], reset)

    auth.hit = hit  # type: ignore[assignment]
    return settings, []


# --- HTTP hardening ----------------------------------------------------------------------


@defect("cors_reflect_any_origin")
def _cors_reflect_any_origin(settings: Settings) -> tuple[Settings, list[Middleware]]:
    @web.middleware
    async def reflect(request: web.Request, handler: Any) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PATCH, DELETE"
        else:
            response = await handler(request)
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
        return response

    return settings, [reflect]


@defect("cors_wildcard_with_credentials")
def _cors_wildcard(settings: Settings) -> tuple[Settings, list[Middleware]]:
    @web.middleware
    async def wildcard(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Allow-Credentials"] = "true"
        return response

    return settings, [wildcard]


@defect("headers_missing_on_errors")
def _headers_missing_on_errors(settings: Settings) -> tuple[Settings, list[Middleware]]:
    @web.middleware
    async def strip(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        if response.status >= 400:
            for name in ("X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy"):
                response.headers.popall(name, None)
        return response

    return settings, [strip]


@defect("leaky_errors")
def _leaky_errors(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Error bodies carry the stack and the SQL ("debug mode left on")."""

    @web.middleware
    async def leak(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        if response.status >= 400 and response.content_type == "application/json":
            body = _json_of(response)
            body["error"]["debug"] = (
                'Traceback (most recent call last):\n  File "/app/users.py", line 42\n'
                "psycopg.errors.UndefinedColumn: SELECT password FROM atendeai.users WHERE id = $1"
            )
            leaky = web.json_response(body, status=response.status)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "content-type"):
                    leaky.headers[name] = value
            return leaky
        return response

    return settings, [leak]


# --- object-level authorization, fuzzing ------------------------------------------------


@defect("existence_oracle")
def _existence_oracle(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """Answers 403 "not yours" for another clinic's user and 404 only when there is none.

    Needs a connection that sees every clinic (the test runs it as the superuser).
    """
    from system_under_test.errors import Forbidden
    from system_under_test.services import users

    def guarded(original: Callable[[Call], Awaitable[web.StreamResponse]]) -> Callable:
        async def handler(call: Call) -> web.StreamResponse:
            user_id = call.path_id("user_id")
            async with call.platform.db.unscoped() as conn:
                cursor = await conn.execute(
                    "SELECT clinic_id FROM atendeai.users WHERE id = %s", (user_id,)
                )
                row = await cursor.fetchone()
            if row is not None and row["clinic_id"] != call.user.clinic_id:
                raise Forbidden("that user belongs to another clinic")
            return await original(call)

        return handler

    for route in list(users.ROUTES):
        if route.path == "/users/{user_id}":
            replace_handler(users, route.method, route.path, guarded(route.handler))
    return settings, []


@defect("clinic_cache_before_ownership")
def _clinic_cache_before_ownership(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """``GET /clinics/{clinic_id}`` serves the cache by the path's id first, and checks
    that the clinic is the caller's only on a miss (the ownership check guards the
    database read, not the cache-aside read in front of it). Another clinic's data
    leaks exactly while it is cached.
    """
    from system_under_test.services import clinics

    original = clinics.get_clinic

    async def get_clinic(call: Call) -> web.StreamResponse:
        cached = await call.platform.redis.get(clinics.cache_key(call.path_id("clinic_id")))
        if cached is not None:
            return web.Response(
                text=cached, content_type="application/json", headers={"X-Cache": "HIT"}
            )
        return await original(call)  # the miss: _target_clinic answers 404 for another's

    replace_handler(clinics, "GET", "/clinics/{clinic_id}", get_clinic)
    return settings, []


@defect("crash_on_create_user")
def _crash_on_create_user(settings: Settings) -> tuple[Settings, list[Middleware]]:
    from system_under_test.services import users

    async def create_user(call: Call) -> web.StreamResponse:
        raise RuntimeError(f"unexpected name {call.body.name!r}")

    replace_handler(users, "POST", "/users", create_user)
    return settings, []


@defect("me_schema_drift")
def _me_schema_drift(settings: Settings) -> tuple[Settings, list[Middleware]]:
    """``GET /auth/me`` answers without the documented ``email`` field."""
    from system_under_test.services import auth

    original = auth.me

    async def me(call: Call) -> web.StreamResponse:
        response = await original(call)
        body = _json_of(response)
        body.pop("email", None)
        return web.json_response(body)

    replace_handler(auth, "GET", "/auth/me", me)
    return settings, []


# --- entry point --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sec_broken_platform.py")
    parser.add_argument("--defect", required=True, choices=sorted(DEFECTS))
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s {args.service}[{args.defect}] %(name)s: %(message)s",
    )
    settings, middlewares = DEFECTS[args.defect](settings)
    from system_under_test.app import create_app

    app = create_app(args.service, settings)
    for index, middleware in enumerate(middlewares):
        app.middlewares.insert(index, middleware)  # outermost: sees the final response
    log.warning("running %s with the defect %r on purpose", args.service, args.defect)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
