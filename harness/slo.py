"""Service level objectives as data, and their evaluation as pure code.

An SLO file (YAML) lists objectives; each has a PromQL query, a comparator,
a threshold, an optional warning band and an optional comparison with the
last passing run. ``load_slo_file`` validates the file and names the line and
field of every mistake; ``evaluate`` turns plain numbers into verdicts with no
server involved (the gate fetches the numbers from Prometheus).

    version: 1
    objectives:
      - name: p95_overall
        description: 95th percentile latency of API requests
        query: histogram_quantile(0.95, sum by (le) (rate(..._bucket[$window])))
        unit: seconds
        comparator: "<"
        threshold: 0.2
        warning: 0.15               # pass below, warn from here to the threshold
        max_regression: 0.10        # fail if >10 % worse than the last passing run

``$window`` in a query is replaced by the load window (e.g. ``300s``) and the
query is evaluated at the window's end, so the figure covers exactly the load.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_SLO_FILE = Path(__file__).with_name("slos") / "default.yaml"

Comparator = Literal["<", "<=", ">", ">="]
_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


class SloFileError(ValueError):
    """The SLO file is unreadable or invalid; ``problems`` has one line per mistake."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: invalid SLO file:\n" + "\n".join(f"  {p}" for p in problems))


class Objective(BaseModel):
    """One objective. ``source: prometheus`` (default) takes ``query`` as PromQL;
    ``source: locust`` takes it as the name of a load-generator figure
    (``users_peak``, ``requests_per_second``, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    description: str = ""
    query: Annotated[str, Field(min_length=1)]
    source: Literal["prometheus", "locust"] = "prometheus"
    unit: Literal["seconds", "ratio", "count", "requests_per_second"] = "seconds"
    comparator: Comparator
    threshold: float
    warning: float | None = None
    max_regression: Annotated[float, Field(gt=0, le=10)] | None = None
    required: bool = True
    # the load profiles it applies to (None: every profile)
    profiles: tuple[str, ...] | None = None

    def applies_to(self, profile: str | None) -> bool:
        return self.profiles is None or profile is None or profile in self.profiles

    @property
    def lower_is_better(self) -> bool:
        return self.comparator in ("<", "<=")

    @model_validator(mode="after")
    def _warning_inside_the_pass_side(self) -> Objective:
        if self.warning is None:
            return self
        if self.lower_is_better and self.warning > self.threshold:
            raise ValueError(
                f"warning ({self.warning}) must not be above the threshold ({self.threshold}) "
                f"when lower is better ({self.comparator})"
            )
        if not self.lower_is_better and self.warning < self.threshold:
            raise ValueError(
                f"warning ({self.warning}) must not be below the threshold ({self.threshold}) "
                f"when higher is better ({self.comparator})"
            )
        return self


class SloFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    objectives: Annotated[list[Objective], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_names(self) -> SloFile:
        seen: set[str] = set()
        for objective in self.objectives:
            if objective.name in seen:
                raise ValueError(f"objective name {objective.name!r} is used twice")
            seen.add(objective.name)
        return self


# --- loading with line numbers ----------------------------------------------


def _to_python(
    loader: yaml.SafeLoader, node: yaml.Node, lines: dict[tuple[Any, ...], int], path: tuple
) -> Any:
    """Plain Python data from a YAML node, remembering the line of every path."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node)
            result[key] = _to_python(loader, value_node, lines, (*path, key))
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(loader, item, lines, (*path, i)) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def parse_slo_text(text: str, source: str = "<slo>") -> SloFile:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise SloFileError(source, ["line 1: the file is empty"])
        lines: dict[tuple[Any, ...], int] = {}
        data = _to_python(loader, root, lines, ())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or error
        raise SloFileError(source, [f"{where}not valid YAML ({problem})"]) from None
    finally:
        loader.dispose()
    try:
        return SloFile.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False, include_input=False):
            loc = tuple(item["loc"])
            line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), 1)
            problems.append(f"line {line}: {_field_name(loc, data)}: {item['msg']}")
        raise SloFileError(source, problems) from None


def _field_name(loc: tuple[Any, ...], data: Any) -> str:
    parts: list[str] = []
    node = data
    for step in loc:
        if isinstance(step, int):
            name = (
                node[step].get("name")
                if isinstance(node, list) and isinstance(node[step], dict)
                else None
            )
            parts[-1] += f"[{step}]" + (f" ({name})" if name else "")
        else:
            parts.append(str(step))
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(parts) or "(top level)"


def load_slo_file(path: Path | str = DEFAULT_SLO_FILE) -> SloFile:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SloFileError(path, [f"cannot read the file ({error.strerror})"]) from None
    try:
        return parse_slo_text(text, str(path))
    except SloFileError as error:
        raise SloFileError(path, error.problems) from None


# --- evaluation (pure) --------------------------------------------------------


class Status(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    NO_DATA = "no_data"


@dataclass(frozen=True)
class ObjectiveResult:
    objective: Objective
    value: float | None
    status: Status
    margin: float | None  # distance to the threshold, positive on the passing side
    baseline: float | None
    reason: str


def _usable(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def evaluate_objective(
    objective: Objective, value: float | None, baseline: float | None = None
) -> ObjectiveResult:
    """The verdict for one objective given its measured ``value``."""
    if not _usable(value):
        status = Status.NO_DATA if objective.required else Status.WARN
        return ObjectiveResult(objective, None, status, None, baseline, "no data for the window")
    assert value is not None
    passes = _COMPARE[objective.comparator](value, objective.threshold)
    margin = (
        (objective.threshold - value)
        if objective.lower_is_better
        else (value - objective.threshold)
    )
    shown = f"{value:.6g} {objective.comparator} {objective.threshold:g}"
    if not passes:
        return ObjectiveResult(objective, value, Status.FAIL, margin, baseline, f"{shown} is false")
    if objective.max_regression is not None and _usable(baseline) and baseline:
        assert baseline is not None
        change = (value - baseline) / abs(baseline)
        worse = change if objective.lower_is_better else -change
        if worse > objective.max_regression:
            return ObjectiveResult(
                objective,
                value,
                Status.FAIL,
                margin,
                baseline,
                f"{worse:.1%} worse than the last passing run ({baseline:.6g}); "
                f"allowed {objective.max_regression:.0%}",
            )
    if objective.warning is not None:
        in_band = (
            value >= objective.warning
            if objective.lower_is_better
            else (value <= objective.warning)
        )
        if in_band:
            return ObjectiveResult(
                objective,
                value,
                Status.WARN,
                margin,
                baseline,
                f"{shown} holds, but inside the warning band (from {objective.warning:g})",
            )
    return ObjectiveResult(objective, value, Status.PASS, margin, baseline, f"{shown} holds")


def evaluate(
    slo: SloFile,
    values: Mapping[str, float | None],
    baselines: Mapping[str, float] | None = None,
    *,
    profile: str | None = None,
) -> list[ObjectiveResult]:
    """Results for the objectives that apply to ``profile`` (all when None)."""
    baselines = baselines or {}
    return [
        evaluate_objective(o, values.get(o.name), baselines.get(o.name))
        for o in slo.objectives
        if o.applies_to(profile)
    ]


class Verdict(StrEnum):
    GO = "go"
    NO_GO = "no-go"


def verdict(results: Iterable[ObjectiveResult]) -> Verdict:
    """No-go when any objective failed or a required one had no data."""
    bad = {Status.FAIL, Status.NO_DATA}
    return Verdict.NO_GO if any(r.status in bad for r in results) else Verdict.GO


def render_query(objective: Objective, window_seconds: int) -> str:
    """The objective's PromQL with ``$window`` set to the load window."""
    if window_seconds < 1:
        raise ValueError("the window must be at least one second")
    return objective.query.replace("$window", f"{int(window_seconds)}s")
