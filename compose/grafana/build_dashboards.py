"""Write the four Grafana dashboards of the spec into ``dashboards/*.json``.

The panels are defined here once, as data (title, kind, PromQL, unit); the
JSON files are what Grafana's provisioning loads. Edit this file, run

    .venv/bin/python compose/grafana/build_dashboards.py

and commit both; ``make test`` fails when the JSON is not what this script
writes (contract_tests/observability/test_obs_dashboards.py), and runs every
query of every panel against the local stack's Prometheus.

Queries use Grafana's ``$__rate_interval`` in ``rate()``/``increase()``
windows; the live test substitutes ``1m`` for it. Nothing else is templated.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}

API = 'tier="service",route!~"/(health|ready|metrics)"'
SERVICES = 'proxy=~"auth|users|clinics|health"'
DB = 'datname="atendeai"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # timeseries | stat
    unit: str = "short"
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


INFRASTRUCTURE = Dashboard(
    uid="atendeai-infrastructure",
    title="AtendeAI / Infrastructure overview",
    description="Is every component up: scrape targets, HAProxy backends, "
    "service processes, Redis, Kong.",
    panels=(
        Panel("Scrape targets up", (q("sum(up)", "up"),), kind="stat"),
        Panel("Scrape targets down", (q("count(up == 0) or vector(0)", "down"),), kind="stat"),
        Panel(
            "Alerts firing",
            (q('count(ALERTS{alertstate="firing"}) or vector(0)', "firing"),),
            kind="stat",
        ),
        Panel(
            "Redis AOF persistence",
            (q("max(redis_aof_enabled)", "AOF on"),),
            kind="stat",
            description="1 when Redis writes its append-only file.",
        ),
        Panel("Targets up by job", (q("sum by (job) (up)", "{{job}}"),)),
        Panel(
            "Healthy instances per HAProxy backend",
            (q(f"haproxy_backend_active_servers{{{SERVICES}}}", "{{proxy}}"),),
            description="Servers passing HAProxy's GET /ready check.",
        ),
        Panel(
            "HAProxy requests per second by backend",
            (
                q(
                    f"sum by (proxy) (rate(haproxy_backend_http_requests_total{{{SERVICES}}}"
                    "[$__rate_interval]))",
                    "{{proxy}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "HAProxy backend response time (average of the last 1024 requests)",
            (q(f"haproxy_backend_response_time_average_seconds{{{SERVICES}}}", "{{proxy}}"),),
            unit="s",
        ),
        Panel(
            "Service CPU (cores)",
            (
                q(
                    'sum by (job, instance) (rate(process_cpu_seconds_total{tier="service"}'
                    "[$__rate_interval]))",
                    "{{instance}}",
                ),
            ),
            unit="short",
            description="One service process can use one core; the alert is at 0.8.",
        ),
        Panel(
            "Service memory (resident)",
            (q('process_resident_memory_bytes{tier="service"}', "{{instance}}"),),
            unit="bytes",
            description="The alert is at 80 % of the 512 MiB container limit.",
        ),
        Panel(
            "Redis memory used",
            (q("redis_memory_used_bytes", "used"), q("redis_memory_max_bytes", "max")),
            unit="bytes",
        ),
        Panel(
            "Redis commands per second",
            (q("sum(rate(redis_commands_processed_total[$__rate_interval]))", "commands"),),
            unit="ops",
        ),
        Panel("Redis connected clients", (q("redis_connected_clients", "clients"),)),
        Panel(
            "Kong requests per second by status",
            (
                q(
                    "sum by (code) (rate(kong_http_requests_total[$__rate_interval]))",
                    "{{code}}",
                ),
            ),
            unit="reqps",
            description="Only in the Docker deployment (Kong does not run locally).",
        ),
        Panel(
            "Kong latency p95 (time spent in Kong)",
            (
                q(
                    "histogram_quantile(0.95, sum by (le) "
                    "(rate(kong_kong_latency_ms_bucket[$__rate_interval])))",
                    "p95",
                ),
            ),
            unit="ms",
            description="The spec's gateway SLA is < 20 ms. Only in the Docker deployment.",
        ),
    ),
)

APPLICATION = Dashboard(
    uid="atendeai-application",
    title="AtendeAI / Application performance",
    description="The API's traffic, latency, errors and SLO, by service and route "
    "(probes and scrapes excluded).",
    panels=(
        Panel(
            "Requests per second by service",
            (
                q(
                    "sum by (job) (rate(http_server_request_duration_seconds_count"
                    f"{{{API}}}[$__rate_interval]))",
                    "{{job}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "p95 latency by service (5 m)",
            (q("job:http_server_request_duration_seconds:p95_5m", "{{job}}"),),
            unit="s",
            description="SLO: 200 ms. Alert: above 500 ms for 2 minutes.",
        ),
        Panel(
            "p95 latency by route",
            (
                q(
                    "histogram_quantile(0.95, sum by (job, route, le) "
                    f"(rate(http_server_request_duration_seconds_bucket{{{API}}}"
                    "[$__rate_interval])))",
                    "{{job}} {{route}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Latency percentiles, all services",
            tuple(
                q(
                    f"histogram_quantile({quantile}, sum by (le) "
                    f"(rate(http_server_request_duration_seconds_bucket{{{API}}}"
                    "[$__rate_interval])))",
                    label,
                )
                for quantile, label in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))
            ),
            unit="s",
        ),
        Panel(
            "Error ratio (5xx) by service",
            (q("job:http_server_errors:ratio_rate1m", "{{job}}"),),
            unit="percentunit",
            description="Alert: above 5 % for 1 minute.",
        ),
        Panel(
            "Responses per second by status",
            (
                q(
                    "sum by (status) (rate(http_server_request_duration_seconds_count"
                    f"{{{API}}}[$__rate_interval]))",
                    "{{status}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Requests answered within 200 ms (5 m)",
            (q("1 - job:http_server_slow_requests:ratio_rate5m", "{{job}}"),),
            unit="percentunit",
            description="The latency SLO holds while this stays at or above 95 %.",
        ),
        Panel(
            "Latency SLO error-budget burn rate (1 h)",
            (q("job:http_server_slow_requests:ratio_rate1h / 0.05", "{{job}}"),),
            description="1 = spending the budget exactly; the fast-burn alert is at 14.4.",
        ),
        Panel(
            "Requests in flight",
            (q('sum by (job) (http_server_requests_in_flight{tier="service"})', "{{job}}"),),
        ),
        Panel(
            "Rate-limit rejections per second",
            (
                q(
                    "sum by (limit) (rate(rate_limit_rejections_total[$__rate_interval]))",
                    "{{limit}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Clinic cache hit ratio",
            (
                q(
                    'sum(rate(cache_requests_total{result="hit"}[$__rate_interval])) '
                    "/ sum(rate(cache_requests_total[$__rate_interval]))",
                    "hit ratio",
                ),
            ),
            unit="percentunit",
        ),
    ),
)

DATABASE = Dashboard(
    uid="atendeai-database",
    title="AtendeAI / Database performance",
    description="PostgreSQL 15 through the PostgreSQL exporter, and the services' "
    "connection pools.",
    panels=(
        Panel("PostgreSQL up", (q("pg_up", "up"),), kind="stat"),
        Panel(
            "Database size",
            (q(f"pg_database_size_bytes{{{DB}}}", "atendeai"),),
            kind="stat",
            unit="bytes",
        ),
        Panel(
            "Connections by state",
            (q(f"sum by (state) (pg_stat_activity_count{{{DB}}})", "{{state}}"),),
        ),
        Panel(
            "Connections in use vs. max_connections",
            (
                q("sum(pg_stat_database_numbackends)", "in use"),
                q("pg_settings_max_connections", "max"),
            ),
        ),
        Panel(
            "Transactions per second",
            (
                q(f"rate(pg_stat_database_xact_commit{{{DB}}}[$__rate_interval])", "commit"),
                q(f"rate(pg_stat_database_xact_rollback{{{DB}}}[$__rate_interval])", "rollback"),
            ),
            unit="ops",
        ),
        Panel(
            "Rows per second",
            tuple(
                q(f"rate(pg_stat_database_tup_{what}{{{DB}}}[$__rate_interval])", what)
                for what in ("fetched", "inserted", "updated", "deleted")
            ),
            unit="ops",
        ),
        Panel(
            "Buffer cache hit ratio",
            (
                q(
                    f"rate(pg_stat_database_blks_hit{{{DB}}}[$__rate_interval]) / "
                    f"(rate(pg_stat_database_blks_hit{{{DB}}}[$__rate_interval]) + "
                    f"rate(pg_stat_database_blks_read{{{DB}}}[$__rate_interval]))",
                    "hit ratio",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Locks by mode",
            (q(f"sum by (mode) (pg_locks_count{{{DB}}})", "{{mode}}"),),
        ),
        Panel(
            "Longest running transaction",
            (q(f"max(pg_stat_activity_max_tx_duration{{{DB}}})", "longest"),),
            unit="s",
        ),
        Panel(
            "Deadlocks (1 h)",
            (q(f"increase(pg_stat_database_deadlocks{{{DB}}}[1h])", "deadlocks"),),
        ),
        Panel(
            "Service connection pools",
            (
                q(
                    'sum by (job, state) (db_pool_connections{tier="service"})',
                    "{{job}} {{state}}",
                ),
            ),
        ),
    ),
)

BUSINESS = Dashboard(
    uid="atendeai-business",
    title="AtendeAI / Business metrics",
    description="Clinics, users, sessions and sign-ins across every tenant (aggregate "
    "counts from atendeai_monitoring.business_counts(); no tenant data).",
    panels=(
        Panel(
            "Active clinics",
            (q('sum(atendeai_clinics_count{status="active"})', "active"),),
            kind="stat",
        ),
        Panel(
            "Active users",
            (q('sum(atendeai_users_count{status="active"})', "active"),),
            kind="stat",
        ),
        Panel("Active sessions", (q("sum(atendeai_sessions_active)", "sessions"),), kind="stat"),
        Panel(
            "Clinics by status",
            (q("sum by (status) (atendeai_clinics_count)", "{{status}}"),),
        ),
        Panel(
            "Active users by role",
            (q('sum by (role) (atendeai_users_count{status="active"})', "{{role}}"),),
        ),
        Panel(
            "Sign-ins per second by outcome",
            (q("sum by (outcome) (rate(auth_logins_total[$__rate_interval]))", "{{outcome}}"),),
            unit="reqps",
        ),
        Panel(
            "Sign-in success ratio",
            (
                q(
                    'sum(rate(auth_logins_total{outcome="success"}[$__rate_interval])) '
                    "/ sum(rate(auth_logins_total[$__rate_interval]))",
                    "success",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Token refreshes per second by outcome",
            (
                q(
                    "sum by (outcome) (rate(auth_refreshes_total[$__rate_interval]))",
                    "{{outcome}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Accounts created per second",
            (
                q(
                    "sum by (job) (rate(http_server_request_duration_seconds_count"
                    '{tier="service",method="POST",route=~"/users|/clinics",status="201"}'
                    "[$__rate_interval]))",
                    "{{job}}",
                ),
            ),
            unit="reqps",
            description="Users (POST /users) and clinics (POST /clinics) created.",
        ),
        Panel(
            "Access denied (403) per second",
            (
                q(
                    "sum by (job) (rate(http_server_request_duration_seconds_count"
                    f'{{{API},status="403"}}[$__rate_interval]))',
                    "{{job}}",
                ),
            ),
            unit="reqps",
        ),
    ),
)

DASHBOARDS = (INFRASTRUCTURE, APPLICATION, DATABASE, BUSINESS)
FILE_NAMES = {
    "atendeai-infrastructure": "infrastructure-overview.json",
    "atendeai-application": "application-performance.json",
    "atendeai-database": "database-performance.json",
    "atendeai-business": "business-metrics.json",
}


def panel_json(panel: Panel, panel_id: int, grid: dict[str, int]) -> dict:
    targets = [
        {
            "datasource": DATASOURCE,
            "expr": query.expr,
            "legendFormat": query.legend,
            "range": True,
            "refId": chr(ord("A") + index),
        }
        for index, query in enumerate(panel.queries)
    ]
    options: dict = (
        {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
        if panel.kind == "stat"
        else {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
    )
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": options,
        "targets": targets,
    }


def dashboard_json(dashboard: Dashboard) -> dict:
    panels = []
    x = y = 0
    row_height = 0
    for panel_id, panel in enumerate(dashboard.panels, start=1):
        width, height = (6, 4) if panel.kind == "stat" else (12, 8)
        if x + width > 24:
            x, y = 0, y + row_height
            row_height = 0
        panels.append(panel_json(panel, panel_id, {"h": height, "w": width, "x": x, "y": y}))
        x += width
        row_height = max(row_height, height)
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["atendeai"],
        "editable": False,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 38,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


def rendered() -> dict[str, str]:
    """``{file name: JSON text}`` for every dashboard."""
    return {
        FILE_NAMES[d.uid]: json.dumps(dashboard_json(d), indent=2, ensure_ascii=False) + "\n"
        for d in DASHBOARDS
    }


def main() -> int:
    DASHBOARDS_DIR.mkdir(exist_ok=True)
    for name, text in rendered().items():
        (DASHBOARDS_DIR / name).write_text(text)
        print(f"wrote {DASHBOARDS_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
