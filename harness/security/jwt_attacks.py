"""The access-token attacks of DESIGN.md section 8, as data and one check.

``TokenForge`` builds tokens from a genuine one: unsigned (``alg: none`` in any
casing), stripped or altered signatures, HMAC-signed with the RSA public key
(HS/RS confusion), signed by an attacker's key that ``kid``/``jku``/``x5u``/
``jwk`` headers point at, and tokens signed with the *real* private key but
with bad claims (no or past ``exp``, future ``nbf``, wrong ``iss``/``aud``, a
``typ`` other than ``access``). ``attack_cases(forge, listener_url)`` lists
them all by name.

``check_token_rejected(targets, token, case=...)`` sends a token to every
target (one authenticated route per service) and raises
``SecurityCheckFailed`` unless each answers 401 in the error shape; it first
sends the genuine token to prove the route would have said yes.

``OutboundListener`` is a real HTTP server on 127.0.0.1 that serves the
attacker's JWKS and certificate and records every request it gets: after the
``jku``/``x5u`` cases it must have received none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import httpx
import jwt

from harness.security import SecurityCheckFailed

TIMEOUT_S = 10.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


@dataclass(frozen=True)
class Target:
    """An authenticated route to present tokens to (``GET``)."""

    base_url: str
    path: str
    client_ip: str

    def get(self, token: str | None) -> httpx.Response:
        headers = {"X-Forwarded-For": self.client_ip}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.get(f"{self.base_url}{self.path}", headers=headers, timeout=TIMEOUT_S)


class TokenForge:
    """Forges tokens, given a genuine access token and the stack's keys."""

    def __init__(
        self,
        genuine: str,
        *,
        private_key_pem: str,
        public_key_pem: str,
        issuer: str,
        audience: str,
    ) -> None:
        self.genuine = genuine
        self.private_key_pem = private_key_pem
        self.public_key_pem = public_key_pem
        self.issuer = issuer
        self.audience = audience
        self.claims: dict[str, Any] = jwt.decode(genuine, options={"verify_signature": False})
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.attacker_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    # -- building blocks

    def fresh_claims(self, **changes: Any) -> dict[str, Any]:
        """The genuine token's claims, valid now, with ``changes`` (None removes one)."""
        now = int(time.time())
        claims = {**self.claims, "iat": now, "nbf": now, "exp": now + 300}
        claims["jti"] = uuid.uuid4().hex
        for name, value in changes.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def sign(self, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        """RS256 with the stack's real private key."""
        return jwt.encode(claims, self.private_key_pem, algorithm="RS256", headers=headers)

    def sign_as_attacker(self, claims: dict[str, Any], headers: dict[str, Any]) -> str:
        return jwt.encode(claims, self.attacker_key, algorithm="RS256", headers=headers)

    def unsigned(self, alg: str, claims: dict[str, Any] | None = None) -> str:
        header = {"alg": alg, "typ": "JWT"}
        return f"{b64url_json(header)}.{b64url_json(claims or self.fresh_claims())}."

    def hmac_with_public_key(self, alg: str = "HS256") -> str:
        """The HS/RS confusion: HMAC over the token with the public key PEM as the secret."""
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        signing_input = (
            f"{b64url_json({'alg': alg, 'typ': 'JWT'})}.{b64url_json(self.fresh_claims())}"
        )
        signature = hmac.new(self.public_key_pem.encode(), signing_input.encode(), digest).digest()
        return f"{signing_input}.{b64url(signature)}"

    def attacker_jwk(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.attacker_key.public_key()))
        return {**jwk, "kid": "attacker", "use": "sig", "alg": "RS256"}

    # -- the genuine token, damaged

    def altered_signature(self) -> str:
        head, payload, signature = self.genuine.split(".")
        middle = len(signature) // 2  # not the last character: its low bits may be padding
        flipped = "A" if signature[middle] != "A" else "B"
        return f"{head}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"

    def altered_payload(self) -> str:
        head, _, signature = self.genuine.split(".")
        claims = {**self.claims, "role": "platform_admin"}
        return f"{head}.{b64url_json(claims)}.{signature}"


@dataclass(frozen=True)
class AttackCase:
    name: str
    token: Callable[[], str]


def attack_cases(forge: TokenForge, listener_url: str) -> list[AttackCase]:
    """Every access-token attack of DESIGN.md section 8, by name."""
    head, payload, _ = forge.genuine.split(".")
    past = int(time.time()) - 120
    cases = [
        *(AttackCase(f"alg {alg}", lambda alg=alg: forge.unsigned(alg)) for alg in ALG_NONE),
        AttackCase(
            "alg none keeping the genuine signature",
            lambda: forge.unsigned("none")[:-1] + "." + forge.genuine.split(".")[2],
        ),
        AttackCase("signature stripped (trailing dot)", lambda: f"{head}.{payload}."),
        AttackCase("signature stripped (two parts)", lambda: f"{head}.{payload}"),
        AttackCase("signature altered", forge.altered_signature),
        AttackCase("payload altered (role escalated)", forge.altered_payload),
        *(
            AttackCase(
                f"{alg} signed with the RSA public key", lambda a=alg: forge.hmac_with_public_key(a)
            )
            for alg in ("HS256", "HS384", "HS512")
        ),
        AttackCase(
            "kid path traversal, attacker's key",
            lambda: forge.sign_as_attacker(
                forge.fresh_claims(), {"kid": "../../../../../../dev/null"}
            ),
        ),
        AttackCase(
            "kid SQL injection, attacker's key",
            lambda: forge.sign_as_attacker(forge.fresh_claims(), {"kid": "x' OR '1'='1"}),
        ),
        AttackCase(
            "jku pointing at the attacker's JWKS",
            lambda: forge.sign_as_attacker(
                forge.fresh_claims(), {"kid": "attacker", "jku": f"{listener_url}/jwks.json"}
            ),
        ),
        AttackCase(
            "x5u pointing at the attacker's certificate",
            lambda: forge.sign_as_attacker(
                forge.fresh_claims(), {"kid": "attacker", "x5u": f"{listener_url}/jwks.json"}
            ),
        ),
        AttackCase(
            "embedded jwk of the attacker's key",
            lambda: forge.sign_as_attacker(forge.fresh_claims(), {"jwk": forge.attacker_jwk()}),
        ),
        AttackCase("exp missing", lambda: forge.sign(forge.fresh_claims(exp=None))),
        AttackCase("exp in the past", lambda: forge.sign(forge.fresh_claims(exp=past))),
        AttackCase(
            "nbf in the future",
            lambda: forge.sign(forge.fresh_claims(nbf=int(time.time()) + 3600)),
        ),
        AttackCase("iss wrong", lambda: forge.sign(forge.fresh_claims(iss="https://evil.test"))),
        AttackCase("iss missing", lambda: forge.sign(forge.fresh_claims(iss=None))),
        AttackCase("aud wrong", lambda: forge.sign(forge.fresh_claims(aud="another-api"))),
        AttackCase("aud missing", lambda: forge.sign(forge.fresh_claims(aud=None))),
        AttackCase("typ refresh", lambda: forge.sign(forge.fresh_claims(typ="refresh"))),
        AttackCase("typ missing", lambda: forge.sign(forge.fresh_claims(typ=None))),
    ]
    return cases


ALG_NONE = ("none", "None", "NONE", "nOnE")
#: Which attack cases each group of the catalogue covers (for the proofs).
SIGNATURE_CASES = (
    *(f"alg {alg}" for alg in ALG_NONE),
    "alg none keeping the genuine signature",
    "signature stripped (trailing dot)",
    "signature stripped (two parts)",
    "signature altered",
    "payload altered (role escalated)",
)
KEY_CONFUSION_CASES = tuple(
    f"{alg} signed with the RSA public key" for alg in ("HS256", "HS384", "HS512")
)
KEY_HEADER_CASES = (
    "kid path traversal, attacker's key",
    "kid SQL injection, attacker's key",
    "jku pointing at the attacker's JWKS",
    "x5u pointing at the attacker's certificate",
    "embedded jwk of the attacker's key",
)
CLAIM_CASES = (
    "exp missing",
    "exp in the past",
    "nbf in the future",
    "iss wrong",
    "iss missing",
    "aud wrong",
    "aud missing",
)
TYPE_CASES = ("typ refresh", "typ missing")


def check_token_rejected(targets: Sequence[Target], token: str, *, case: str) -> None:
    """Every target answers 401 (in the error shape) to ``token``; else raise with evidence."""
    problems = []
    for target in targets:
        response = target.get(token)
        if response.status_code != 401:
            problems.append(
                f"{target.base_url}{target.path} answered {response.status_code} "
                f"{response.text[:200]!r}"
            )
            continue
        body = response.json()
        if set(body) != {"error"} or body["error"].get("code") not in (
            "invalid_token",
            "unauthorized",
        ):
            problems.append(f"{target.path}: 401 without the error shape: {body}")
    if problems:
        raise SecurityCheckFailed(f"token attack {case!r} was not refused: " + "; ".join(problems))


def check_genuine_token_accepted(targets: Sequence[Target], token: str) -> None:
    """The control: the genuine token works on every target (so a 401 means something)."""
    for target in targets:
        response = target.get(token)
        if response.status_code != 200:
            raise SecurityCheckFailed(
                f"control failed: the genuine token got {response.status_code} from "
                f"{target.base_url}{target.path}: {response.text[:200]}"
            )


class OutboundListener:
    """An HTTP server on 127.0.0.1 (free port) that records every request it receives.

    It serves ``/jwks.json`` (the attacker's JWKS, so a vulnerable verifier would
    succeed) once ``jwks`` is set; everything else is 404.
    """

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.jwks: dict[str, Any] = {"keys": []}
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                listener.requests.append(f"GET {self.path} from {self.client_address[0]}")
                if self.path.startswith("/jwks.json"):
                    body = json.dumps(listener.jwks).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_error(404)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def check_no_calls(self) -> None:
        if self.requests:
            raise SecurityCheckFailed(
                f"a service fetched a key from a URL in a token header: {self.requests}"
            )


def iter_cases(cases: Sequence[AttackCase], names: Sequence[str]) -> Iterator[AttackCase]:
    by_name = {case.name: case for case in cases}
    for name in names:
        yield by_name[name]


__all__ = [
    "CLAIM_CASES",
    "KEY_CONFUSION_CASES",
    "KEY_HEADER_CASES",
    "SIGNATURE_CASES",
    "TYPE_CASES",
    "AttackCase",
    "OutboundListener",
    "Target",
    "TokenForge",
    "attack_cases",
    "check_genuine_token_accepted",
    "check_token_rejected",
]
