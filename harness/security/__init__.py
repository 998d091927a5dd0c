"""Security verification: the checks behind ``contract_tests/security``.

Every check is a plain function that either returns findings or raises
``SecurityCheckFailed`` (an ``AssertionError``) with the evidence, so the
same function is used by the real test (against the stack) and by the test
that proves it turns red when its defect is injected (against a scratch
database or a deliberately broken scratch service instance).

- ``scratch``: a PostgreSQL cluster of its own with the platform migrated,
  for defects that must not touch the shared stack (roles are cluster-wide).
- ``instances``: extra service processes with the stack's configuration
  (a second auth instance sharing Redis; broken variants for the proofs).
- ``isolation``: the RLS isolation state machine (hypothesis).
- ``rls_paths``: reads and writes through the paths behind the known RLS CVEs
  (CTEs, inlined SQL functions, security_invoker views, MERGE, generic plans,
  role switches).
- ``uniqueness``: unique constraints as cross-tenant existence oracles.
- ``bola``: the object-level authorization sweep built from OpenAPI documents.
- ``jwt_attacks`` / ``auth_checks``: DESIGN.md section 8, case by case.
- ``http_checks``: rate limits under concurrency, CORS, security headers,
  error bodies.
- ``fuzz``: schemathesis against every service's OpenAPI document.
"""

from __future__ import annotations


class SecurityCheckFailed(AssertionError):
    """A security check found its defect; the message carries the evidence."""


__all__ = ["SecurityCheckFailed"]
