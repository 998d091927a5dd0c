"""The Grafana dashboards: well formed, up to date, and every query runs.

Grafana itself does not run here (its image exists only in a registry): the
dashboards are checked as the JSON Grafana provisions, and every PromQL
expression of every panel is run against the local stack's Prometheus after
traffic that exercises what they chart. Each must run without error and
return at least one finite value, except the panels listed in
``NO_DATA_LOCALLY`` with their reason (and those must return nothing here,
so the list cannot go stale silently).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.processes import wait_until
from harness.prometheus_api import PrometheusClient, PrometheusError

SPEC_DASHBOARDS = {
    "infrastructure-overview.json": "AtendeAI / Infrastructure overview",
    "application-performance.json": "AtendeAI / Application performance",
    "database-performance.json": "AtendeAI / Database performance",
    "business-metrics.json": "AtendeAI / Business metrics",
}
#: Grafana's interval variable, replaced before a query goes to Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}
#: Panel titles whose queries cannot return data on the local stack, and why.
NO_DATA_LOCALLY = {
    "Kong requests per second by status": "Kong runs only with the compose profile `gateway`",
    "Kong latency p95 (time spent in Kong)": "Kong runs only with the compose profile `gateway`",
}


def _builder(compose_dir: Path) -> Any:
    path = compose_dir / "grafana" / "build_dashboards.py"
    spec = importlib.util.spec_from_file_location("build_dashboards", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def _dashboards(compose_dir: Path) -> dict[str, dict[str, Any]]:
    folder = compose_dir / "grafana" / "dashboards"
    return {path.name: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def _queries(compose_dir: Path) -> list[tuple[str, str, str]]:
    """``(dashboard title, panel title, PromQL)`` of every target of every panel."""
    found = []
    for dashboard in _dashboards(compose_dir).values():
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                found.append((dashboard["title"], panel["title"], expr))
    return found


def test_the_four_dashboards_of_the_spec(compose_dir):
    dashboards = _dashboards(compose_dir)
    assert {name: d["title"] for name, d in dashboards.items()} == SPEC_DASHBOARDS
    assert len({d["uid"] for d in dashboards.values()}) == len(dashboards)


def test_dashboard_json_is_what_the_builder_writes(compose_dir):
    folder = compose_dir / "grafana" / "dashboards"
    for name, text in _builder(compose_dir).rendered().items():
        assert (folder / name).read_text() == text, (
            f"{name} is stale: run .venv/bin/python compose/grafana/build_dashboards.py"
        )


def test_panels_are_well_formed_and_use_the_provisioned_datasource(compose_dir):
    provisioned = yaml.safe_load(
        (compose_dir / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]["uid"]
    for name, dashboard in _dashboards(compose_dir).items():
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        assert dashboard["templating"]["list"] == []
        for panel in dashboard["panels"]:
            where = f"{name}: {panel['title']}"
            assert panel["type"] in ("timeseries", "stat"), where
            assert panel["datasource"]["uid"] == provisioned, where
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where
            assert panel["targets"], where
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), where
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == provisioned, where
                assert target["expr"].strip(), where
                leftover = target["expr"]
                for variable in GRAFANA_VARIABLES:
                    leftover = leftover.replace(variable, "")
                assert "$" not in leftover, f"{where}: unknown Grafana variable in {leftover}"


def test_no_data_list_names_real_panels(compose_dir):
    titles = {panel for _, panel, _ in _queries(compose_dir)}
    assert set(NO_DATA_LOCALLY) <= titles


@pytest.mark.usefixtures("tenant")
def test_every_dashboard_query_runs_and_returns_data(compose_dir, prometheus, api_traffic):
    api_traffic(rounds=3, pause_s=1.2)
    queries = _queries(compose_dir)

    def outcome() -> dict[tuple[str, str, str], str]:
        problems = {}
        for query in queries:
            _, panel, expr = query
            try:
                result = prometheus.query(expr)
            except PrometheusError as error:
                problems[query] = f"error: {error}"
                continue
            finite = [s for s in result if math.isfinite(float(s["value"][1]))]
            if panel in NO_DATA_LOCALLY:
                if result:
                    problems[query] = f"returned data, but is listed as {NO_DATA_LOCALLY[panel]!r}"
            elif not finite:
                problems[query] = f"no finite value ({len(result)} series)"
        return problems

    # Recording rules and rate() windows need a scrape or two after the traffic.
    last: dict[tuple[str, str, str], str] = {}

    def settled() -> bool:
        last.clear()
        last.update(outcome())
        return not last or any(v.startswith("error") for v in last.values())

    # 20 s on the tests' stack (scrapes and rules every second); four more scrapes
    # or rule evaluations where they are slower (the compose deployment does both
    # every 15 s, as the spec says; the release gate's stacks evaluate every 15 s)
    timeout = 20 + 4 * max(prometheus.intervals_s())
    wait_until(settled, timeout=timeout, interval=1.0, what="every dashboard query to return data")
    report = "\n".join(f"  {d} / {p}: {e}\n    {problem}" for (d, p, e), problem in last.items())
    assert last == {}, f"{len(last)} of {len(queries)} dashboard queries fail:\n{report}"


def test_a_query_error_is_reported_not_hidden(prometheus: PrometheusClient):
    with pytest.raises(PrometheusError, match="bad_data"):
        prometheus.query("sum(rate(http_server_request_duration_seconds_count[1m])")
