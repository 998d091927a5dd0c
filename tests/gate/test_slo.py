"""The SLO file and its evaluation: pure code, no server."""

from __future__ import annotations

import math
import textwrap

import pytest

from harness.gate.slo import (
    DEFAULT_SLO_FILE,
    Evidence,
    Objective,
    SloFileError,
    Status,
    TargetUptime,
    Verdict,
    evaluate,
    evaluate_objective,
    load_slo_file,
    parse_slo_text,
    render_query,
    render_samples_query,
    verdict,
    window_growth,
)


def objective(**overrides) -> Objective:
    fields = {"name": "p95", "query": "q[$window]", "comparator": "<", "threshold": 0.2}
    return Objective(**{**fields, **overrides})


def test_the_default_file_holds_the_spec_objectives():
    slo = load_slo_file(DEFAULT_SLO_FILE)
    by_name = {o.name: o for o in slo.objectives}
    assert by_name["p95_overall"].threshold == 0.2 and by_name["p95_overall"].comparator == "<"
    assert by_name["p95_login"].threshold == 0.1
    assert by_name["availability"].threshold == 0.999 and by_name["availability"].comparator == ">"
    assert (
        by_name["users_reached"].source == "locust" and by_name["users_reached"].threshold == 1000
    )
    for o in slo.objectives:
        if o.source == "prometheus":
            assert "$window" in o.query, o.name


@pytest.mark.parametrize(
    ("value", "status"),
    [
        (0.05, Status.PASS),
        (0.149, Status.PASS),
        (0.15, Status.WARN),
        (0.19, Status.WARN),
        (0.2, Status.FAIL),
        (0.5, Status.FAIL),
        (None, Status.NOT_VERIFIABLE),
        (math.nan, Status.NOT_VERIFIABLE),
        (math.inf, Status.NOT_VERIFIABLE),
    ],
)
def test_lower_is_better_with_a_warning_band(value, status):
    result = evaluate_objective(objective(warning=0.15), value)
    assert result.status is status, result.reason


@pytest.mark.parametrize(
    ("value", "status"),
    [
        (1.0, Status.PASS),
        (0.9996, Status.PASS),
        (0.9995, Status.WARN),
        (0.9991, Status.WARN),
        (0.999, Status.FAIL),
        (0.9, Status.FAIL),
    ],
)
def test_higher_is_better_with_a_warning_band(value, status):
    availability = objective(comparator=">", threshold=0.999, warning=0.9995, unit="ratio")
    assert evaluate_objective(availability, value).status is status


def test_margin_is_positive_on_the_passing_side():
    assert evaluate_objective(objective(), 0.05).margin == pytest.approx(0.15)
    assert evaluate_objective(objective(), 0.25).margin == pytest.approx(-0.05)
    higher = objective(comparator=">=", threshold=1000, unit="count")
    assert evaluate_objective(higher, 1200).margin == 200


def test_regression_against_the_last_passing_run():
    o = objective(max_regression=0.10)
    assert evaluate_objective(o, 0.054, baseline=0.05).status is Status.PASS  # 8 % worse
    failed = evaluate_objective(o, 0.056, baseline=0.05)  # 12 % worse
    assert failed.status is Status.FAIL and "worse than the last passing run" in failed.reason
    assert evaluate_objective(o, 0.03, baseline=0.05).status is Status.PASS  # better
    assert evaluate_objective(o, 0.056, baseline=None).status is Status.PASS  # first run


def test_optional_objective_without_data_only_warns():
    assert evaluate_objective(objective(required=False), None).status is Status.WARN


def test_verdict_is_no_go_on_any_failure_or_missing_data_but_not_on_warnings():
    slo = parse_slo_text(
        textwrap.dedent(
            """
            version: 1
            objectives:
              - {name: a, query: "x[$window]", comparator: "<", threshold: 1, warning: 0.5}
              - {name: b, query: "y[$window]", comparator: ">", threshold: 1}
            """
        )
    )
    assert verdict(evaluate(slo, {"a": 0.1, "b": 2})) is Verdict.GO
    assert verdict(evaluate(slo, {"a": 0.7, "b": 2})) is Verdict.GO  # a warning only
    assert verdict(evaluate(slo, {"a": 1.5, "b": 2})) is Verdict.NO_GO
    assert verdict(evaluate(slo, {"a": 0.1})) is Verdict.NO_GO  # b has no data


def test_render_query_sets_the_window():
    assert render_query(objective(), 300) == "q[300s]"
    with pytest.raises(ValueError):
        render_query(objective(), 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "line 1: the file is empty"),
        ("version: 1\nobjectives: [\n", "line 3: not valid YAML"),
        ("version: 2\nobjectives: []\n", "line 1: version: Input should be 1"),
        (
            "version: 1\nobjectives:\n  - name: p95\n    query: up\n    comparator: '=='\n"
            "    threshold: 1\n",
            "line 5: objectives[0] (p95).comparator",
        ),
        (
            "version: 1\nobjectives:\n  - name: p95\n    query: up\n    comparator: '<'\n"
            "    threshold: fast\n",
            "line 6: objectives[0] (p95).threshold",
        ),
        (
            "version: 1\nobjectives:\n  - name: p95\n    query: up\n    comparator: '<'\n"
            "    threshold: 0.2\n    warning: 0.3\n",
            "line 3: objectives[0] (p95): Value error, warning (0.3) must not be above",
        ),
        (
            "version: 1\nobjectives:\n  - name: p95\n    query: up\n    comparator: '<'\n"
            "    threshold: 0.2\n    treshold: 0.1\n",
            "line 7: objectives[0] (p95).treshold: Extra inputs are not permitted",
        ),
        ("version: 1\n", "line 1: objectives: Field required"),
    ],
)
def test_malformed_files_name_the_line_and_field(text, expected):
    with pytest.raises(SloFileError) as raised:
        parse_slo_text(text, "slo.yaml")
    assert any(p.startswith(expected) for p in raised.value.problems), raised.value.problems
    assert str(raised.value).startswith("slo.yaml: invalid SLO file")


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(SloFileError, match="cannot read the file"):
        load_slo_file(tmp_path / "missing.yaml")


def test_objectives_can_be_limited_to_profiles():
    slo = parse_slo_text(
        "version: 1\nobjectives:\n"
        "  - {name: users, query: users_peak, source: locust, comparator: '>=', threshold: 1000,"
        " profiles: [sla]}\n"
        "  - {name: p95, query: 'q[$window]', comparator: '<', threshold: 0.2}\n"
    )
    assert [r.objective.name for r in evaluate(slo, {"p95": 0.1}, profile="smoke")] == ["p95"]
    assert [r.objective.name for r in evaluate(slo, {"p95": 0.1}, profile="sla")] == [
        "users",
        "p95",
    ]


# --- NOT VERIFIABLE: not enough evidence is a verdict of its own --------------------------

HISTOGRAM = "http_server_request_duration_seconds"
P95_QUERY = (
    f'histogram_quantile(0.95, sum by (le) (rate({HISTOGRAM}_bucket{{route!~"/health|/ready"}}'
    "[$window])))"
)
RATIO_QUERY = (
    f'(sum(increase({HISTOGRAM}_count{{status=~"5.."}}[$window])) or vector(0))'
    f" / sum(increase({HISTOGRAM}_count[$window]))"
)
UP = (TargetUptime("auth", "127.0.0.1:1", 1.0, 1.0, 60),)


def p95(**overrides) -> Objective:
    return objective(query=P95_QUERY, **overrides)


def test_the_default_file_counts_every_prometheus_objectives_samples():
    slo = load_slo_file(DEFAULT_SLO_FILE)
    by_name = {o.name: o for o in slo.objectives}
    # the counter at the window's end minus at its start: no extrapolation
    login = f'{HISTOGRAM}_count{{route="/auth/login"}}'
    assert render_samples_query(by_name["p95_login"], 60) == (
        f"sum({login}) - (sum({login} offset 60s) or vector(0))"
    )
    # a ratio is a share of its denominator's requests
    assert render_samples_query(by_name["availability"], 60) == (
        f"sum({HISTOGRAM}_count) - (sum({HISTOGRAM}_count offset 60s) or vector(0))"
    )
    for o in slo.objectives:
        if o.source == "prometheus":
            assert o.sample_count_query is not None and o.required_samples, o.name
    assert by_name["availability"].required_samples == 1000
    assert by_name["error_ratio"].required_samples == 100
    assert by_name["p95_overall"].required_samples == 20


@pytest.mark.parametrize(
    ("query", "fields", "needed"),
    [
        (P95_QUERY, {}, 20),
        (P95_QUERY.replace("0.95", "0.99"), {}, 100),
        (P95_QUERY.replace("0.95", "0.5"), {}, 2),
        (P95_QUERY, {"min_samples": 500}, 500),
        (P95_QUERY, {"min_samples": 0}, None),  # asked for no minimum
        (RATIO_QUERY, {"unit": "ratio", "threshold": 0.01}, 100),
        (RATIO_QUERY, {"unit": "ratio", "comparator": ">", "threshold": 0.999}, 1000),
        ("sum(rate(x_total[$window]))", {"unit": "requests_per_second"}, None),
    ],
)
def test_default_minimum_samples(query, fields, needed):
    assert objective(query=query, **fields).required_samples == needed


def test_a_route_with_a_slash_inside_its_matcher_is_not_a_division():
    # the "/" of the route regex is inside a string: the only division is the top-level one
    ratio = objective(query=RATIO_QUERY.replace('"5.."', '"5..",route!~"/health|/x"'), unit="ratio")
    assert ratio.sample_count_query == window_growth(f"{HISTOGRAM}_count")
    two_histograms = f"{P95_QUERY} - {P95_QUERY.replace('route!~', 'route=~')}"
    with pytest.raises(ValueError, match="a percentile must say how many samples it rests on"):
        objective(query=two_histograms)  # which count? the file must say
    assert objective(query=two_histograms, min_samples=0).required_samples is None


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("min_samples: -1", "line 7: objectives[0] (p95).min_samples: Input should be greater"),
        ("min_samples: many", "line 7: objectives[0] (p95).min_samples: Input should be a valid"),
        ("min_samples: 2.5", "line 7: objectives[0] (p95).min_samples: Input should be a valid"),
        ("min_samples: true", "line 7: objectives[0] (p95).min_samples: Input should be a valid"),
        ("min_samples: 50", "line 3: objectives[0] (p95): Value error, min_samples (50) needs"),
        ("samples_query: sum(x)", "line 3: objectives[0] (p95): Value error, samples_query must"),
    ],
)
def test_a_bad_minimum_names_the_file_objective_and_field(field, expected):
    text = (
        "version: 1\nobjectives:\n  - name: p95\n    query: 'q[$window]'\n    comparator: '<'\n"
        f"    threshold: 0.2\n    {field}\n"
    )
    with pytest.raises(SloFileError) as raised:
        parse_slo_text(text, "my-slo.yaml")
    assert str(raised.value).startswith("my-slo.yaml: invalid SLO file")
    assert any(p.startswith(expected) for p in raised.value.problems), raised.value.problems


def test_a_samples_query_makes_any_objective_countable():
    o = objective(min_samples=50, samples_query="sum(increase(x_count[$window]))")
    assert o.required_samples == 50
    assert render_samples_query(o, 30) == "sum(increase(x_count[30s]))"
    with pytest.raises(ValueError, match="applies to source: prometheus only"):
        objective(source="locust", query="users_peak", samples_query="x[$window]")


def test_enough_samples_and_every_target_up_leave_the_verdict_to_the_value():
    good = evaluate_objective(p95(), 0.05, evidence=Evidence(500, UP))
    assert (good.status, good.samples, good.min_samples) == (Status.PASS, 500, 20)
    bad = evaluate_objective(p95(), 0.5, evidence=Evidence(500, UP))
    assert bad.status is Status.FAIL and bad.verifiable


@pytest.mark.parametrize("value", [0.05, 0.5])
def test_too_few_samples_are_not_verifiable_whatever_the_value_says(value):
    result = evaluate_objective(p95(), value, evidence=Evidence(3, UP))
    assert result.status is Status.NOT_VERIFIABLE and not result.verifiable
    assert "3 samples in the window, at least 20 needed" in result.reason
    assert ("alone would pass" if value < 0.2 else "alone would fail") in result.reason
    assert result.value == value and result.samples == 3  # still shown beside its count
    assert verdict([result]) is Verdict.NO_GO


def test_exactly_the_minimum_is_enough():
    assert evaluate_objective(p95(), 0.05, evidence=Evidence(20, UP)).status is Status.PASS
    assert evaluate_objective(p95(), 0.05, evidence=Evidence(19.9, UP)).verifiable is False


def test_a_target_down_during_the_window_makes_prometheus_figures_not_verifiable():
    down = (*UP, TargetUptime("users", "127.0.0.1:2", 0.0, 0.75, 60))
    result = evaluate_objective(p95(), 0.05, evidence=Evidence(5000, down))
    assert result.status is Status.NOT_VERIFIABLE
    assert "users/127.0.0.1:2 (up 75% of the window)" in result.reason
    # the load generator's own figures do not come from a scrape
    users = objective(name="users", source="locust", query="users_peak", comparator=">=",
                      threshold=10, unit="count")  # fmt: skip
    assert evaluate_objective(users, 20, evidence=Evidence(60, down)).status is Status.PASS


@pytest.mark.parametrize(
    ("evidence", "why"),
    [
        (Evidence(500, None), "up-ness over the window could not be read"),
        (Evidence(500, ()), "no scrape target was scraped during the window"),
        (Evidence(None, UP), "samples could not be counted (at least 20 needed)"),
        (Evidence(math.nan, UP), "nan samples in the window"),
    ],
)
def test_evidence_that_could_not_be_read_is_not_verifiable(evidence, why):
    result = evaluate_objective(p95(), 0.05, evidence=evidence)
    assert result.status is Status.NOT_VERIFIABLE and why in result.reason, result.reason


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "returned no data"),
        (math.nan, "returned NaN"),
        (math.inf, "above the histogram's largest bucket bound"),
        (-math.inf, "returned -Inf"),
    ],
)
def test_no_figure_nan_or_inf_is_not_verifiable_and_says_which(value, why):
    result = evaluate_objective(p95(), value, evidence=Evidence(500, UP))
    assert result.status is Status.NOT_VERIFIABLE and why in result.reason, result.reason
    assert result.value is None and verdict([result]) is Verdict.NO_GO


def test_an_optional_objective_without_evidence_warns_and_says_why():
    result = evaluate_objective(p95(required=False), 0.05, evidence=Evidence(3, UP))
    assert result.status is Status.WARN and result.reason.startswith("not verifiable: 3 samples")
    assert verdict([result]) is Verdict.GO


def test_no_minimum_asked_means_any_count_will_do():
    result = evaluate_objective(p95(min_samples=0), 0.05, evidence=Evidence(1, UP))
    assert result.status is Status.PASS and result.min_samples is None


def test_evaluate_with_evidence_holds_every_objective_to_it():
    slo = parse_slo_text(
        "version: 1\nobjectives:\n"
        f"  - {{name: a, query: '{P95_QUERY}', comparator: '<', threshold: 1}}\n"
        f"  - {{name: b, query: '{P95_QUERY}', comparator: '<', threshold: 1}}\n"
    )
    values = {"a": 0.1, "b": 0.1}
    assert verdict(evaluate(slo, values)) is Verdict.GO  # no evidence asked for: value only
    enough = {"a": Evidence(100, UP), "b": Evidence(100, UP)}
    assert verdict(evaluate(slo, values, evidence=enough)) is Verdict.GO
    results = evaluate(slo, values, evidence={"a": Evidence(100, UP)})  # b's was never read
    assert [r.status for r in results] == [Status.PASS, Status.NOT_VERIFIABLE]
    assert verdict(results) is Verdict.NO_GO


def test_the_old_status_name_is_the_new_status():
    assert Status.NO_DATA is Status.NOT_VERIFIABLE and Status("not_verifiable") is Status.NO_DATA
