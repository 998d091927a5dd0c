"""Fuzzing from the OpenAPI documents with schemathesis (hypothesis underneath).

``fuzz_service(doc, base_url, ...)`` generates requests for every operation of
one service's document, valid ones (positive) and, for operations that take
parameters or a body, invalid ones (negative), sends them, and checks every
answer: no 5xx, a documented status, a documented content type, a body that
matches the documented schema. It counts the cases per operation and raises
``SecurityCheckFailed`` listing every failing operation with schemathesis'
report (a curl command to reproduce it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.security import SecurityCheckFailed

#: ``headers_for(operation_path, operation_x_roles) -> headers`` for one case.
HeadersFor = Callable[[str, tuple[str, ...]], dict[str, str]]


@dataclass
class FuzzReport:
    service: str
    cases: Counter[str] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.cases.values())


def fuzz_service(
    service: str,
    doc: Mapping[str, Any],
    base_url: str,
    *,
    headers_for: HeadersFor,
    examples: int,
    skip: tuple[str, ...] = (),
    derandomize: bool = False,
) -> FuzzReport:
    """Fuzz every operation of ``doc`` against ``base_url`` (see the module docstring)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from requests.exceptions import RequestException
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import FailureGroup
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    schema = schemathesis.openapi.from_dict(dict(doc))
    report = FuzzReport(service)
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        if label in skip:
            continue
        raw = doc["paths"][operation.path][operation.method.lower()]
        roles = tuple(raw.get("x-roles", ()))
        modes = [schemathesis.GenerationMode.POSITIVE]
        if raw.get("parameters") or raw.get("requestBody"):
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:
            key = f"{label} ({mode.value})"
            call = _case_runner(report, key, base_url, headers_for, operation.path, roles, checks)
            run = settings(
                max_examples=examples,
                derandomize=derandomize,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
            )(given(case=operation.as_strategy(generation_mode=mode))(call))
            try:
                run()
            except (AssertionError, FailureGroup, RequestException) as error:
                # schemathesis' failures (with a curl command) and dropped connections
                report.failures[key] = f"{type(error).__name__}: {error}"[:3000]
    if report.failures:
        listing = "\n\n".join(f"== {key}\n{text}" for key, text in report.failures.items())
        raise SecurityCheckFailed(
            f"fuzzing {service} ({report.total} cases): {len(report.failures)} operation(s) "
            f"failed:\n{listing}"
        )
    return report


def _case_runner(
    report: FuzzReport,
    key: str,
    base_url: str,
    headers_for: HeadersFor,
    path: str,
    roles: tuple[str, ...],
    checks: list[Any],
) -> Callable[[Any], None]:
    def run(case: Any) -> None:
        report.cases[key] += 1
        case.call_and_validate(base_url=base_url, headers=headers_for(path, roles), checks=checks)

    return run


__all__ = ["FuzzReport", "fuzz_service"]
