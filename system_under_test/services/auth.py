"""Auth service: login, refresh with rotation and reuse detection, logout, me.

Refresh tokens are single use. Presenting one that was already spent means
it leaked: the whole family (every token descended from the same login) is
revoked, in PostgreSQL and in Redis, so the access tokens of that family stop
working at once too.

While Redis is away (docs/platform.md, "When a dependency is away"): login
fails closed (503 ``rate_limiter_unavailable``: its brute-force limits live in
Redis), and a revocation (logout, reuse detected) is refused with 503
``session_store_unavailable``: the Redis mark is written inside the
PostgreSQL transaction, before it commits, and a failed mark rolls the
revocation back, so no revocation exists in PostgreSQL that Redis does not
know of once it is back (a mark sent to a frozen Redis may still land when it
thaws: that session then ends up refused, the safe side). Refreshing without
reuse and ``/auth/me`` need no Redis.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace

from aiohttp import web

from system_under_test.app import Platform, audit_event
from system_under_test.db import TenantContext, set_context
from system_under_test.errors import NotFound, RateLimited, StoreUnavailable, Unauthorized
from system_under_test.metrics import LOGINS, RATE_LIMIT_REJECTIONS, REFRESHES
from system_under_test.ratelimit import hit, tightest
from system_under_test.revocations import publish_revocation
from system_under_test.routing import ALL_ROLES, PUBLIC, Call, Route, json_response
from system_under_test.schemas import LoginRequest, RefreshRequest, TokenPair, User
from system_under_test.services.queries import SELECT_USER, USER_COLUMNS
from system_under_test.tokens import (
    InvalidToken,
    digest,
    new_refresh_token,
    refresh_token_clinic,
)

log = logging.getLogger("atendeai.auth")
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

INSERT_SESSION = """
INSERT INTO atendeai.sessions
    (clinic_id, user_id, family_id, parent_id, token_hash, refresh_token_hash,
     expires_at, ip_address, user_agent)
VALUES (atendeai.current_clinic_id(), %(user_id)s, %(family_id)s, %(parent_id)s,
        %(token_hash)s, %(refresh_token_hash)s, now() + make_interval(secs => %(ttl)s),
        %(ip)s::inet, %(user_agent)s)
"""
REVOKE_FAMILY = """
UPDATE atendeai.sessions SET revoked_at = now(), revoked_reason = %(reason)s
WHERE family_id = %(family_id)s AND revoked_at IS NULL
"""


async def _issue_pair(
    call: Call, conn, user: User, *, family: uuid.UUID, parent: uuid.UUID | None
) -> TokenPair:
    settings = call.platform.settings
    access_token, jti = call.platform.signer.issue_access_token(
        user_id=user.id,
        clinic_id=user.clinic_id,
        role=user.role,
        family=family,
        ttl=settings.access_token_ttl_seconds,
    )
    refresh_token = new_refresh_token(user.clinic_id)
    await conn.execute(
        INSERT_SESSION,
        {
            "user_id": user.id,
            "family_id": family,
            "parent_id": parent,
            "token_hash": digest(jti),
            "refresh_token_hash": digest(refresh_token),
            "ttl": settings.refresh_token_ttl_seconds,
            "ip": call.client_ip or None,
            "user_agent": call.request.headers.get("User-Agent", "")[:500] or None,
        },
    )
    return TokenPair(
        access_token=access_token,
        refresh_token=refresh_token,
        token_type="Bearer",
        expires_in=settings.access_token_ttl_seconds,
        refresh_expires_in=settings.refresh_token_ttl_seconds,
        user=user,
    )


def _invalid_credentials(headers: dict[str, str]) -> Unauthorized:
    return Unauthorized(
        "clinic, email or password is wrong", code="invalid_credentials", headers=headers
    )


async def login(call: Call) -> web.Response:
    body: LoginRequest = call.body
    platform: Platform = call.platform
    settings = platform.settings
    email = body.email.strip().lower()
    clinic_slug = body.clinic_slug.strip().lower()
    # An account is an e-mail address within a clinic: the per-account budget
    # is kept per (clinic, e-mail), whether or not that account exists.
    account_key = digest(f"{clinic_slug}\n{email}")
    try:
        async with platform.redis_guard.available("sign-in") as redis:
            decision = tightest(
                [
                    await hit(
                        redis, "login_client", call.client_ip, settings.login_limit_per_client
                    ),
                    await hit(
                        redis, "login_account", account_key, settings.login_limit_per_account
                    ),
                ]
            )
    except StoreUnavailable as error:
        # Fail closed: no attempt is checked against a password unless it was counted.
        LOGINS.labels("unavailable").inc()
        raise StoreUnavailable(
            "sign-in is paused: login attempts cannot be counted right now; retry shortly",
            code="rate_limiter_unavailable",
            headers=error.headers,
        ) from None
    headers = decision.headers()
    if not decision.allowed:
        LOGINS.labels("rate_limited").inc()
        RATE_LIMIT_REJECTIONS.labels(decision.name).inc()
        raise RateLimited("too many login attempts; retry later", headers=headers)

    found = await platform.db.read(
        None, "SELECT * FROM atendeai.find_user_for_login(%s, %s)", (clinic_slug, email)
    )
    account = found[0] if found else None
    password_ok = await platform.passwords.verify(
        body.password, account["password_hash"] if account else None
    )
    if account is None:
        LOGINS.labels("invalid_credentials").inc()
        log.info("login failed: unknown account (request %s)", call.request_id)
        raise _invalid_credentials(headers)

    context = TenantContext(
        clinic_id=account["clinic_id"],
        user_id=account["id"],
        ip_address=call.client_ip or None,
        user_agent=call.request.headers.get("User-Agent", "")[:500] or None,
        request_id=call.request_id,
    )
    inactive = account["status"] != "active" or account["clinic_status"] != "active"
    if not password_ok or inactive:
        reason = "inactive" if password_ok else "wrong_password"
        async with platform.db.tenant(context) as conn:
            await audit_event(
                conn,
                "auth.login_failed",
                table_name="users",
                record_id=account["id"],
                details={"reason": reason},
            )
        LOGINS.labels("inactive" if password_ok else "invalid_credentials").inc()
        raise _invalid_credentials(headers)

    async with platform.db.tenant(context) as conn:
        cursor = await conn.execute(
            f"UPDATE atendeai.users SET last_login = now() WHERE id = %s RETURNING {USER_COLUMNS}",
            (account["id"],),
        )
        user = User.model_validate(await cursor.fetchone())
        pair = await _issue_pair(call, conn, user, family=uuid.uuid4(), parent=None)
        await audit_event(conn, "auth.login_succeeded", table_name="users", record_id=user.id)
    LOGINS.labels("success").inc()
    return json_response(pair, headers={**headers, **NO_STORE})


async def _mark_revoked(platform: Platform, family: uuid.UUID, reason: str) -> None:
    """The Redis mark that stops the family's access tokens, published to every
    process (``revocations``); ``StoreUnavailable`` (503 ``session_store_unavailable``)
    when Redis is away. Called inside the transaction that revokes the family in
    PostgreSQL, so that one rolls back."""
    try:
        async with platform.redis_guard.available("sign-out") as redis:
            await publish_revocation(
                redis, family, reason, platform.settings.access_token_ttl_seconds
            )
    except StoreUnavailable as error:
        raise StoreUnavailable(
            "sign-out is paused: sessions cannot be revoked right now; retry shortly",
            code="session_store_unavailable",
            headers=error.headers,
        ) from None
    # every process's subscription received it in the same pass as this one's
    await platform.revocations.seen(family)


@dataclass(frozen=True)
class _RefreshOutcome:
    pair: TokenPair | None = None
    reuse_of_family: uuid.UUID | None = None


async def refresh(call: Call) -> web.Response:
    body: RefreshRequest = call.body
    platform: Platform = call.platform
    try:
        clinic_id = refresh_token_clinic(body.refresh_token)
    except InvalidToken:
        REFRESHES.labels("invalid").inc()
        raise Unauthorized("invalid refresh token", code="invalid_token") from None

    outcome = _RefreshOutcome()
    async with platform.db.tenant(call.tenant(clinic_id)) as conn:
        cursor = await conn.execute(
            "SELECT id, user_id, family_id, used_at, revoked_at, expires_at < now() AS expired "
            "FROM atendeai.sessions WHERE refresh_token_hash = %s FOR UPDATE",
            (digest(body.refresh_token),),
        )
        session = await cursor.fetchone()
        if session is not None:  # from here on, act as the session's user
            await set_context(conn, replace(call.tenant(clinic_id), user_id=session["user_id"]))
        if session is None:
            pass
        elif session["used_at"] is not None and session["revoked_at"] is None:
            # A spent token came back: it leaked. Revoke the whole family.
            await conn.execute(
                REVOKE_FAMILY, {"family_id": session["family_id"], "reason": "reuse_detected"}
            )
            await audit_event(
                conn,
                "auth.refresh_reuse_detected",
                table_name="sessions",
                record_id=session["id"],
                details={"family_id": str(session["family_id"])},
            )
            # Before the commit: a revocation Redis never heard of would be skipped once it is back.
            await _mark_revoked(platform, session["family_id"], "reuse_detected")
            outcome = _RefreshOutcome(reuse_of_family=session["family_id"])
        elif session["revoked_at"] is None and not session["expired"]:
            cursor = await conn.execute(SELECT_USER, (session["user_id"],))
            row = await cursor.fetchone()
            if row is not None and row["status"] == "active":
                user = User.model_validate(row)
                await conn.execute(
                    "UPDATE atendeai.sessions SET used_at = now() WHERE id = %s", (session["id"],)
                )
                pair = await _issue_pair(
                    call, conn, user, family=session["family_id"], parent=session["id"]
                )
                await audit_event(
                    conn, "auth.refreshed", table_name="sessions", record_id=session["id"]
                )
                outcome = _RefreshOutcome(pair=pair)

    if outcome.reuse_of_family is not None:
        REFRESHES.labels("reuse_detected").inc()
        log.warning("refresh token reuse detected; family %s revoked", outcome.reuse_of_family)
        raise Unauthorized("refresh token already used; session revoked", code="invalid_token")
    if outcome.pair is None:
        REFRESHES.labels("invalid").inc()
        raise Unauthorized("invalid refresh token", code="invalid_token")
    REFRESHES.labels("success").inc()
    return json_response(outcome.pair, headers=NO_STORE)


async def logout(call: Call) -> web.Response:
    platform: Platform = call.platform
    family = call.user.session_family
    async with platform.db.tenant(call.tenant()) as conn:
        await conn.execute(REVOKE_FAMILY, {"family_id": family, "reason": "logout"})
        await audit_event(
            conn, "auth.logout", table_name="sessions", details={"family_id": str(family)}
        )
        await _mark_revoked(platform, family, "logout")  # before the commit, as in refresh
    return web.Response(status=204, headers=NO_STORE)


async def me(call: Call) -> web.Response:
    rows = await call.platform.db.read(call.tenant(), SELECT_USER, (call.user.user_id,))
    row = rows[0] if rows else None
    if row is None:
        raise NotFound("your account no longer exists")
    return json_response(User.model_validate(row))


ROUTES = [
    Route(
        "POST",
        "/auth/login",
        login,
        "Sign in with e-mail and password",
        PUBLIC,
        body=LoginRequest,
        responses={200: TokenPair},
        errors=(401, 429),
    ),
    Route(
        "POST",
        "/auth/refresh",
        refresh,
        "Trade a refresh token for a new pair (single use)",
        PUBLIC,
        body=RefreshRequest,
        responses={200: TokenPair},
        errors=(401,),
    ),
    Route(
        "POST",
        "/auth/logout",
        logout,
        "Sign out: revoke this session",
        ALL_ROLES,
        responses={204: None},
    ),
    Route(
        "GET", "/auth/me", me, "The signed-in user", ALL_ROLES, responses={200: User}, errors=(404,)
    ),
]
