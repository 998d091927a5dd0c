"""Everything one gate run found, as plain data for the report writers."""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.exceptions import ConfigurationError
from harness.gate.acceptance import CriterionResult
from harness.gate.buckets import Bucket
from harness.gate.cpu import CpuUse
from harness.gate.crosscheck import CrossCheck
from harness.gate.drill import DrillResult
from harness.gate.loadrun import ClientFigures
from harness.gate.slo import ObjectiveResult, TargetUptime, Verdict
from harness.gate.suites import SuiteResults

Series = list[tuple[float, float]]


@dataclass(frozen=True)
class GateResult:
    run_id: str
    profile: str
    provider: str
    load_mode: str  # "closed (1-3 s think time)" or "open arrival, N req/s"
    verdict: Verdict
    window: tuple[float, float] | None
    objectives: tuple[ObjectiveResult, ...]
    queries: dict[str, str]  # objective -> the PromQL that ran
    cross_checks: tuple[CrossCheck, ...]
    acceptance: tuple[CriterionResult, ...]
    suites: SuiteResults | None
    client: ClientFigures | None
    memory_mb: dict[str, float | None] = field(default_factory=dict)  # idle / peak
    cpu: CpuUse | None = None  # the stack's CPU over the load window
    series: dict[str, Series] = field(default_factory=dict)  # name -> points
    targets: tuple[int, int] | None = None
    notes: tuple[str, ...] = ()
    timings_s: dict[str, float] = field(default_factory=dict)
    baseline_from: str | None = None
    recovery: DrillResult | None = None  # the resilience drill (None: not part of this run)
    # server-side p95 per endpoint over the window, in ms, keyed "METHOD /route"
    # like the load generator's endpoint labels
    endpoint_p95_ms: dict[str, float] = field(default_factory=dict)
    sample_queries: dict[str, str] = field(default_factory=dict)  # objective -> its count
    # every scrape target's up-ness over the load window (None: it could not be read)
    target_uptime: tuple[TargetUptime, ...] | None = ()
    # the histogram bucket each percentile objective's value falls in (seconds)
    buckets: dict[str, Bucket] = field(default_factory=dict)
    # how often the stack's Prometheus scraped and evaluated its rules, in s
    # (None: not read; every scrape costs each target CPU, in the figures)
    prometheus_intervals_s: tuple[float, float] | None = None
    # what the server-side figures were read over: the load window with a scrape
    # of every target on each side (harness.gate.scrapes); None: the load window
    evidence_window: tuple[float, float] | None = None
    # password hashing's p95 per operation and phase (queued, running) over the
    # window, in ms: why a sign-in takes longer than bcrypt's CPU
    hashing_p95_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The run as JSON-ready data (what report.json holds)."""
        return plain(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GateResult:
        """A run back from ``to_json``'s data (a stored report.json)."""
        return from_plain(cls, data)

    @classmethod
    def read(cls, path: Path) -> GateResult:
        """A stored run; ``ConfigurationError`` naming the file when it is not one."""
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except OSError as error:
            raise ConfigurationError(f"{path}: cannot read it ({error.strerror})") from None
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigurationError(f"{path}: not a gate report.json ({error})") from None

    def objective_values(self) -> dict[str, float]:
        """Each objective's measured value, by name (those that have one)."""
        return {r.objective.name: r.value for r in self.objectives if r.value is not None}


def plain(value: Any) -> Any:
    """JSON-ready data from dataclasses, enums, paths and tuples."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        for name in (
            "label", "users_peak", "duration_s", "difference", "recovery_s", "down_in_window",
            "verifiable", "availability", "total_s", "ms_per_request", "cores_busy",
            "hashing_s", "platform_ms_without_hashing", "hashing_ms_each", "late_share",
            "unreliable_because", "reliable",
        ):  # fmt: skip
            if hasattr(type(value), name) and isinstance(getattr(type(value), name), property):
                data[name] = plain(getattr(value, name))
        return data
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def from_plain(kind: Any, data: Any) -> Any:
    """The inverse of ``plain``: ``data`` (parsed JSON) as an instance of the type
    ``kind`` (a dataclass, pydantic model, enum, Path, or tuple/list/dict/union
    of those). Fields ``plain`` added from properties are left out; a missing
    field takes its default."""
    if data is None or kind is Any:
        return data
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return from_plain(options[0], data)
        for option in options:  # e.g. float | str: the first that takes the value
            if isinstance(option, type) and isinstance(data, option):
                return data
        return data
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_plain(args[0], item) for item in data)
        return tuple(from_plain(a, item) for a, item in zip(args, data, strict=True))
    if origin is list:
        return [from_plain(args[0], item) for item in data]
    if origin is dict:
        return {k: from_plain(args[1], v) for k, v in data.items()}
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(
            **{
                f.name: from_plain(hints[f.name], data[f.name])
                for f in dataclasses.fields(kind)
                if f.init and f.name in data
            }
        )
    if hasattr(kind, "model_validate"):
        return kind.model_validate(data)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind(data)
    if kind is Path:
        return Path(data)
    if kind is float and isinstance(data, int):
        return float(data)
    return data
