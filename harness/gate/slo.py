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
        min_samples: 20             # fewer requests in the window: NOT VERIFIABLE
        samples_query: sum(increase(..._count[$window]))   # derived when left out

``$window`` in a query is replaced by the evidence window's length (e.g.
``303s``) and the query is evaluated at its end. The evidence window is the
load window with a scrape of every target on each side and nothing but the
load in between (``harness.gate.scrapes``), so the figure covers the whole load.

A figure is only as good as what it was computed from. An objective is NOT
VERIFIABLE (it blocks a go like a failure, and says why) when its query
returned nothing, NaN or infinity, when it rests on fewer samples than
``min_samples``, or when a scrape target was down during the window
(``Evidence``). The sample count comes from ``samples_query``, or is derived:

- a percentile (``histogram_quantile(q, ... X_bucket{sel}[$window] ...)``)
  counts ``X_count{sel}``'s growth over the window (its sum at the end minus
  its sum at the start: exact, where ``increase()`` extrapolates), and needs
  at least ``1 / (1 - q)`` samples by default (20 for a p95, 100 for a p99):
  with fewer, not one sample is expected above the percentile, so the tail it
  is named after was never seen;
- a ratio (``unit: ratio``, ``A / B``) counts the growth of the denominator
  ``B``'s series over the window, and needs by default enough events for one of them to be told
  from the threshold: ``1 / t`` below a threshold ``t`` (100 for ``< 1 %``),
  ``1 / (1 - t)`` above it (1000 for ``> 99.9 %``).

``min_samples: 0`` asks for no minimum.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.exceptions import SloFileError
from harness.gate.status import Status, Verdict

DEFAULT_SLO_FILE = Path(__file__).with_name("slos") / "default.yaml"

Comparator = Literal["<", "<=", ">", ">="]
_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


class Objective(BaseModel):
    """One objective. ``source: prometheus`` (default) takes ``query`` as PromQL;
    ``source: locust`` takes it as the name of a load-generator figure
    (``users_peak``, ``requests_per_second``, ...); ``source: drill`` as the name
    of a figure of the resilience drill (``unaffected_read_availability``,
    ``worst_served_again_s``, ``lost_writes``, ``run_availability``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    description: str = ""
    query: Annotated[str, Field(min_length=1)]
    source: Literal["prometheus", "locust", "drill"] = "prometheus"
    unit: Literal["seconds", "ratio", "count", "requests_per_second"] = "seconds"
    comparator: Comparator
    threshold: float
    warning: float | None = None
    max_regression: Annotated[float, Field(gt=0, le=10)] | None = None
    required: bool = True
    # the load profiles it applies to (None: every profile)
    profiles: tuple[str, ...] | None = None
    # the fewest samples the figure may rest on (None: the default, see the module)
    min_samples: Annotated[int, Field(ge=0, strict=True)] | None = None
    # PromQL counting the window's samples (None: derived from the query, if it can be)
    samples_query: Annotated[str, Field(min_length=1)] | None = None

    def applies_to(self, profile: str | None) -> bool:
        return self.profiles is None or profile is None or profile in self.profiles

    @property
    def lower_is_better(self) -> bool:
        return self.comparator in ("<", "<=")

    @property
    def quantile(self) -> float | None:
        """``q`` of a ``histogram_quantile(q, ...)`` query (None for anything else)."""
        if self.source != "prometheus":
            return None
        match = _QUANTILE.search(self.query)
        return float(match.group(1)) if match else None

    @property
    def sample_count_query(self) -> str | None:
        """PromQL for the number of samples in the window (``$window`` unset), or None
        when the file gives none and none can be derived from the query."""
        if self.source != "prometheus":
            return None
        if self.samples_query is not None:
            return self.samples_query
        if self.quantile is not None:
            return derive_percentile_samples_query(self.query)
        if self.unit == "ratio":
            return derive_ratio_samples_query(self.query)
        return None

    @property
    def required_samples(self) -> int | None:
        """The fewest samples this objective accepts (None: no minimum)."""
        if self.min_samples is not None:
            return self.min_samples or None
        if self.source != "prometheus" or self.sample_count_query is None:
            return None
        q = self.quantile
        if q is not None:
            return math.ceil(round(1 / (1 - q), 6)) if 0 < q < 1 else None
        if self.unit == "ratio" and 0 < self.threshold < 1:
            share = self.threshold if self.lower_is_better else 1 - self.threshold
            return math.ceil(round(1 / share, 6))
        return None

    @model_validator(mode="after")
    def _samples_can_be_counted(self) -> Objective:
        if self.samples_query is not None:
            if self.source != "prometheus":
                raise ValueError("samples_query is PromQL: it applies to source: prometheus only")
            if "$window" not in self.samples_query:
                raise ValueError(
                    "samples_query must count over the load window: use [$window] in it"
                )
        countable = self.sample_count_query is not None
        if self.quantile is not None and not countable and self.min_samples is None:
            raise ValueError(
                "a percentile must say how many samples it rests on, and none can be derived "
                "from this query (one histogram_quantile over one X_bucket selection is): add "
                "samples_query (PromQL, e.g. sum(increase(<metric>_count[$window]))), or "
                "min_samples: 0 to accept any count"
            )
        if self.min_samples and self.source == "prometheus" and not countable:
            raise ValueError(
                f"min_samples ({self.min_samples}) needs a count of the window's samples, and "
                "none can be derived from this query: add samples_query (PromQL, e.g. "
                "sum(increase(<metric>_count[$window])))"
            )
        return self

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


# --- deriving the sample count from an objective's query ------------------------

_QUANTILE = re.compile(r"histogram_quantile\s*\(\s*([0-9.]+(?:[eE][-+]?[0-9]+)?)\s*,")
# a range selector over the load window: metric, optional {matchers}, [$window]
_WINDOW_SELECTOR = re.compile(
    r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{(?:[^{}\"]|\"(?:[^\"\\]|\\.)*\")*\})?\s*\[\s*\$window\s*\]"
)


def _window_selectors(promql: str) -> set[tuple[str, str]]:
    return {(m.group(1), m.group(2) or "") for m in _WINDOW_SELECTOR.finditer(promql)}


def derive_percentile_samples_query(query: str) -> str | None:
    """``X_count{sel}``'s growth over the window (``window_growth``) for a quantile
    over ``X_bucket{sel}``; None unless the query reads exactly one bucket series
    selection."""
    buckets = {(m, sel) for m, sel in _window_selectors(query) if m.endswith("_bucket")}
    if len(buckets) != 1:
        return None
    ((metric, matchers),) = buckets
    if re.search(r"\ble\s*[=!]", matchers):
        return None  # a bucket picked by le: its count is not the histogram's
    return window_growth(f"{metric.removesuffix('_bucket')}_count{matchers}")


def window_growth(series: str) -> str:
    """PromQL for how much the counters ``series`` grew over the window: their sum
    at its end minus their sum at its start (0 for a series born in it), exact
    where ``increase()`` would extrapolate to the window's edges. A counter reset
    in the window (a restarted process) makes it short, never long; the gate's
    evidence window (``harness.gate.scrapes``) has a scrape of every target at
    both edges and no restart."""
    return f"sum({series}) - (sum({series} offset $window) or vector(0))"


def _top_level_divisions(promql: str) -> list[int]:
    """Offsets of the ``/`` operators outside brackets and string literals."""
    depth, quote, escaped, found = 0, "", False, []
    for index, char in enumerate(promql):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
        elif char == "/" and depth == 0:
            found.append(index)
    return found


def derive_ratio_samples_query(query: str) -> str | None:
    """For ``A / B``: the growth of B's series over the window (``window_growth``),
    the events the ratio is a share of; None unless the denominator reads exactly
    one series selection."""
    divisions = _top_level_divisions(query)
    if not divisions:
        return None
    selectors = _window_selectors(query[divisions[-1] + 1 :])
    if len(selectors) != 1:
        return None
    ((metric, matchers),) = selectors
    return window_growth(f"{metric}{matchers}")


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


#: Statuses that make the verdict no-go.
BLOCKING = frozenset({Status.FAIL, Status.NOT_VERIFIABLE})


@dataclass(frozen=True)
class TargetUptime:
    """One scrape target's up-ness over the window (``up`` series, per job and instance)."""

    job: str
    instance: str
    min_up: float  # 0: at least one scrape in the window failed
    avg_up: float  # the share of the window's scrapes that succeeded
    scrapes: int  # how many scrapes the window holds

    @property
    def label(self) -> str:
        return f"{self.job}/{self.instance}"

    @property
    def down_in_window(self) -> bool:
        return self.min_up < 1


@dataclass(frozen=True)
class Evidence:
    """What a figure rests on, read over the same window as the figure.

    - ``samples``: how many samples (requests, observations) the figure was
      computed from; None when they could not be counted;
    - ``targets``: every scrape target's up-ness over the window; None when it
      could not be read (only Prometheus objectives look at it).
    """

    samples: float | None
    targets: tuple[TargetUptime, ...] | None = ()


@dataclass(frozen=True)
class ObjectiveResult:
    objective: Objective
    value: float | None  # None when the query returned nothing, NaN or infinity
    status: Status
    margin: float | None  # distance to the threshold, positive on the passing side
    baseline: float | None
    reason: str
    samples: float | None = None  # what the value rests on (None: not counted)
    min_samples: int | None = None  # the fewest samples it needed (None: no minimum)

    @property
    def verifiable(self) -> bool:
        return self.status is not Status.NOT_VERIFIABLE


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _unusable_value(objective: Objective, value: float | None) -> str:
    if value is None:
        return "the query returned no data for the window"
    if math.isnan(value):
        return "the query returned NaN for the window (0/0: nothing observed)"
    if value > 0 and objective.quantile is not None:
        return (
            "the query returned +Inf: the percentile lies above the histogram's largest "
            "bucket bound, so its value is unknown"
        )
    return f"the query returned {'+' if value > 0 else '-'}Inf for the window (a division by 0)"


def _missing_evidence(objective: Objective, evidence: Evidence) -> str | None:
    """Why ``evidence`` cannot carry a verdict for ``objective`` (None: it can)."""
    if objective.source == "prometheus":
        if evidence.targets is None:
            return "the scrape targets' up-ness over the window could not be read"
        if not evidence.targets:
            return "no scrape target was scraped during the window"
        down = [t for t in evidence.targets if t.down_in_window]
        if down:
            shown = ", ".join(f"{t.label} (up {t.avg_up:.0%} of the window)" for t in down)
            return f"scrape target(s) down during the window: {shown}"
    needed = objective.required_samples
    if needed is None:
        return None
    if evidence.samples is None:
        return f"the window's samples could not be counted (at least {needed:,} needed)"
    if not math.isfinite(evidence.samples) or evidence.samples < needed:
        return f"{format_count(evidence.samples)} samples in the window, at least {needed:,} needed"
    return None


def format_count(samples: float) -> str:
    """A sample count as read: a ``samples_query`` with ``increase()`` extrapolates,
    so 19.7 is shown as 19.7 (never rounded up to a minimum it does not reach)."""
    if not math.isfinite(samples):
        return str(samples)
    return f"{samples:,.0f}" if samples == round(samples) else f"{samples:,.1f}"


def _judge(objective: Objective, value: float, baseline: float | None) -> tuple[Status, float, str]:
    """Status, margin and reason of a usable value (the evidence aside)."""
    passes = _COMPARE[objective.comparator](value, objective.threshold)
    margin = (
        (objective.threshold - value)
        if objective.lower_is_better
        else (value - objective.threshold)
    )
    shown = f"{value:.6g} {objective.comparator} {objective.threshold:g}"
    if not passes:
        return Status.FAIL, margin, f"{shown} is false"
    if objective.max_regression is not None and _usable(baseline) and baseline:
        assert baseline is not None
        change = (value - baseline) / abs(baseline)
        worse = change if objective.lower_is_better else -change
        if worse > objective.max_regression:
            return (
                Status.FAIL,
                margin,
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
            return (
                Status.WARN,
                margin,
                f"{shown} holds, but inside the warning band (from {objective.warning:g})",
            )
    return Status.PASS, margin, f"{shown} holds"


def evaluate_objective(
    objective: Objective,
    value: float | None,
    baseline: float | None = None,
    evidence: Evidence | None = None,
) -> ObjectiveResult:
    """The verdict for one objective given its measured ``value``.

    With ``evidence`` (what the gate always passes), a value that rests on too
    few samples or on a window with a scrape target down is NOT VERIFIABLE;
    without it, only the value itself is judged. A value that is missing, NaN
    or infinite is NOT VERIFIABLE either way. An objective with
    ``required: false`` that is not verifiable only warns.
    """
    samples = None if evidence is None else evidence.samples
    needed = objective.required_samples

    def not_verifiable(why: str, shown: float | None, margin: float | None) -> ObjectiveResult:
        status = Status.NOT_VERIFIABLE if objective.required else Status.WARN
        reason = f"not verifiable: {why}"
        return ObjectiveResult(objective, shown, status, margin, baseline, reason, samples, needed)

    if not _usable(value):
        return not_verifiable(_unusable_value(objective, value), None, None)
    assert value is not None
    status, margin, reason = _judge(objective, value, baseline)
    missing = None if evidence is None else _missing_evidence(objective, evidence)
    if missing is not None:
        why = f"{missing}; the figure alone would {status.value}: {reason}"
        return not_verifiable(why, value, margin)
    return ObjectiveResult(objective, value, status, margin, baseline, reason, samples, needed)


def evaluate(
    slo: SloFile,
    values: Mapping[str, float | None],
    baselines: Mapping[str, float] | None = None,
    *,
    profile: str | None = None,
    evidence: Mapping[str, Evidence] | None = None,
) -> list[ObjectiveResult]:
    """Results for the objectives that apply to ``profile`` (all when None).

    ``evidence`` (by objective name) is what each value rests on; when given,
    an objective missing from it has no evidence (not verifiable if it needs
    samples or is read from Prometheus).
    """
    baselines = baselines or {}
    return [
        evaluate_objective(
            o,
            values.get(o.name),
            baselines.get(o.name),
            None if evidence is None else evidence.get(o.name, Evidence(None, None)),
        )
        for o in slo.objectives
        if o.applies_to(profile)
    ]


def verdict(results: Iterable[ObjectiveResult]) -> Verdict:
    """No-go when any objective failed or a required one was not verifiable."""
    return Verdict.NO_GO if any(r.status in BLOCKING for r in results) else Verdict.GO


def render_query(objective: Objective, window_seconds: int) -> str:
    """The objective's PromQL with ``$window`` set to the load window."""
    return _set_window(objective.query, window_seconds)


def render_samples_query(objective: Objective, window_seconds: int) -> str | None:
    """The PromQL counting the objective's samples over the load window (None: none)."""
    query = objective.sample_count_query
    return None if query is None else _set_window(query, window_seconds)


def _set_window(query: str, window_seconds: int) -> str:
    if window_seconds < 1:
        raise ValueError("the window must be at least one second")
    return query.replace("$window", f"{int(window_seconds)}s")
