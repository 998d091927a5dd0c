"""The SLO file and its evaluation: pure code, no server."""

from __future__ import annotations

import math
import textwrap

import pytest

from harness.slo import (
    DEFAULT_SLO_FILE,
    Objective,
    SloFileError,
    Status,
    Verdict,
    evaluate,
    evaluate_objective,
    load_slo_file,
    parse_slo_text,
    render_query,
    verdict,
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
        (None, Status.NO_DATA),
        (math.nan, Status.NO_DATA),
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
