"""Access tokens (RS256 JWT) and refresh tokens (opaque, stored hashed).

The access token is verified with the algorithm pinned to RS256 and every
claim required, so ``alg: none``, HS/RS key confusion, missing ``exp`` and
``kid``/``jku``/``x5u`` headers get nowhere: the key is ours, never fetched.

A refresh token reads ``rt1.<clinic id>.<secret>``: the clinic id lets the
refresh run inside that tenant's RLS context; only ``sha256(token)`` is stored.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)

ALGORITHM = "RS256"
ACCESS_TYPE = "access"
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub", "jti", "sid", "clinic_id", "role", "typ")


class InvalidToken(Exception):
    pass


@dataclass(frozen=True)
class Principal:
    """The signed-in caller, from a verified access token."""

    user_id: uuid.UUID
    clinic_id: uuid.UUID
    role: str
    session_family: uuid.UUID
    token_id: str
    expires_at: float = 0.0  # the token's exp (0: unknown, so never kept by VerifiedTokens)


@dataclass(frozen=True)
class TokenSigner:
    issuer: str
    audience: str
    public_key: str
    private_key: str | None = None
    # The PEM texts parsed once: PyJWT given a PEM string parses (and, for a
    # private key, checks) it on every call, which cost two thirds of the auth
    # service's CPU under load.
    _verifying_key: object = field(init=False, repr=False, compare=False)
    _signing_key: object = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_verifying_key", load_pem_public_key(self.public_key.encode()))
        signing = (
            load_pem_private_key(self.private_key.encode(), password=None)
            if self.private_key is not None
            else None
        )
        object.__setattr__(self, "_signing_key", signing)

    def issue_access_token(
        self, *, user_id: uuid.UUID, clinic_id: uuid.UUID, role: str, family: uuid.UUID, ttl: int
    ) -> tuple[str, str]:
        """Return ``(token, jti)``."""
        if self._signing_key is None:
            raise RuntimeError("this service has no signing key (only auth issues tokens)")
        now = int(time.time())
        jti = uuid.uuid4().hex
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(user_id),
            "clinic_id": str(clinic_id),
            "role": role,
            "sid": str(family),
            "jti": jti,
            "typ": ACCESS_TYPE,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
        }
        return jwt.encode(claims, self._signing_key, algorithm=ALGORITHM), jti

    def verify_access_token(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._verifying_key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": list(REQUIRED_CLAIMS), "verify_signature": True},
                leeway=0,
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from None
        if claims.get("typ") != ACCESS_TYPE:
            raise InvalidToken("not an access token")
        try:
            return Principal(
                user_id=uuid.UUID(claims["sub"]),
                clinic_id=uuid.UUID(claims["clinic_id"]),
                role=str(claims["role"]),
                session_family=uuid.UUID(claims["sid"]),
                token_id=str(claims["jti"]),
                expires_at=float(claims["exp"]),
            )
        except (ValueError, TypeError):
            raise InvalidToken("malformed claims") from None


class VerifiedTokens:
    """Access tokens this process has verified, by their exact text, until they expire.

    A client sends the same access token on every request until it refreshes;
    verifying its RS256 signature and claims each time cost about a tenth of a
    service's CPU. A token found here is the very string that was verified
    (any change to it is another key, verified afresh), and it is served only
    while ``time.time() < exp`` (leeway 0, as ``verify_access_token``); an
    expired one is dropped and verified again, which refuses it with the usual
    error. Revocation is not cached: it is checked on every request
    (``Platform.session_revoked``). At most ``max_entries`` are kept, the oldest
    dropped first.
    """

    def __init__(self, signer: TokenSigner, *, max_entries: int = 10_000) -> None:
        self.signer = signer
        self.max_entries = max_entries
        self._entries: dict[str, Principal] = {}

    def principal(self, token: str) -> Principal:
        """The verified caller of ``token``; ``InvalidToken`` as ``verify_access_token``."""
        known = self._entries.get(token)
        if known is not None:
            if time.time() < known.expires_at:
                return known
            del self._entries[token]
        principal = self.signer.verify_access_token(token)
        if time.time() < principal.expires_at:
            if len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[token] = principal
        return principal


REFRESH_PREFIX = "rt1"


def new_refresh_token(clinic_id: uuid.UUID) -> str:
    return f"{REFRESH_PREFIX}.{clinic_id}.{secrets.token_urlsafe(32)}"


def refresh_token_clinic(token: str) -> uuid.UUID:
    """The clinic a refresh token belongs to; InvalidToken when malformed."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != REFRESH_PREFIX or len(parts[2]) < 32:
        raise InvalidToken("malformed refresh token")
    try:
        return uuid.UUID(parts[1])
    except ValueError:
        raise InvalidToken("malformed refresh token") from None


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
