"""The observability pieces' own logic, without a stack (real haproxy -c where it says so)."""

from __future__ import annotations

import io

import pytest

from harness import cli
from harness.exceptions import ComponentNotInstalled, ConfigurationError
from harness.providers.daemon import find_binary
from harness.providers.haproxy import (
    GATEWAY_ROUTES,
    Backend,
    check_config,
    render_haproxy_config,
    server_checks,
)
from harness.providers.local import LocalStackConfig
from harness.providers.prometheus import (
    PrometheusSettings,
    ScrapeJob,
    at_deployment_evaluation_interval,
    format_duration,
    parse_duration,
    render_prometheus_config,
)
from harness.stack import Credentials, PostgresEndpoints, Stack


def _backends() -> list[Backend]:
    return [
        Backend(name, prefixes, ((f"{name}-1", "127.0.0.1:1"), (f"{name}-2", "127.0.0.1:2")))
        for name, prefixes in GATEWAY_ROUTES.items()
    ]


# ------------------------------------------------------------------ durations, configs


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0),
        ("15s", 15),
        ("1m", 60),
        ("1m30s", 90),
        ("2h", 7200),
        ("500ms", 0.5),
        ("1d", 86400),
    ],
)
def test_prometheus_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_durations_format_back():
    assert [format_duration(s) for s in (1, 0.5, 60, 90, 3)] == ["1s", "500ms", "1m", "90s", "3s"]
    with pytest.raises(ConfigurationError, match="not a Prometheus duration"):
        parse_duration("five minutes")


def test_duplicate_scrape_jobs_are_refused():
    with pytest.raises(ConfigurationError, match="duplicate scrape job names: auth"):
        render_prometheus_config([ScrapeJob("auth", ("a:1",)), ScrapeJob("auth", ("b:1",))])


def test_prometheus_settings_and_stack_config_refuse_nonsense():
    with pytest.raises(ConfigurationError, match="must be positive"):
        PrometheusSettings(scrape_interval_s=0)
    with pytest.raises(ConfigurationError, match="instances_per_service"):
        LocalStackConfig(instances_per_service=0)


def test_the_gate_s_rule_evaluation_interval_is_the_deployment_s(tmp_path):
    # read from compose/prometheus/prometheus.yml (15 s), the scrape left at 1 s
    settings = at_deployment_evaluation_interval(PrometheusSettings(scrape_interval_s=1.0))
    assert (settings.scrape_interval_s, settings.evaluation_interval_s) == (1.0, 15.0)
    changed = tmp_path / "prometheus.yml"
    changed.write_text("global:\n  scrape_interval: 15s\n  evaluation_interval: 30s\n")
    moved = at_deployment_evaluation_interval(PrometheusSettings(), deployment_config=changed)
    assert moved.evaluation_interval_s == 30.0
    changed.write_text("global:\n  scrape_interval: 15s\n")
    with pytest.raises(
        ConfigurationError, match=r"prometheus\.yml: cannot read global\.evaluation"
    ):
        at_deployment_evaluation_interval(PrometheusSettings(), deployment_config=changed)
    with pytest.raises(ConfigurationError, match=r"missing\.yml: cannot read"):
        at_deployment_evaluation_interval(
            PrometheusSettings(), deployment_config=tmp_path / "missing.yml"
        )


def test_a_missing_binary_names_its_debian_package(tmp_path):
    with pytest.raises(ComponentNotInstalled) as raised:
        find_binary("haproxy", "haproxy", package="haproxy", explicit=tmp_path / "nope")
    assert "apt-get install -y haproxy" in str(raised.value)


# ------------------------------------------------------------------ HAProxy


def test_rendered_haproxy_config_passes_haproxy_c_without_a_warning(tmp_path):
    path = tmp_path / "haproxy.cfg"
    path.write_text(
        render_haproxy_config(_backends(), bind="127.0.0.1:1", stats_bind="127.0.0.1:2")
    )
    result = check_config(path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Configuration file is valid" in output
    assert "WARNING" not in output and "ALERT" not in output, output


def test_haproxy_c_rejects_a_broken_config(tmp_path):
    path = tmp_path / "haproxy.cfg"
    text = render_haproxy_config(_backends(), bind="127.0.0.1:1", stats_bind="127.0.0.1:2")
    path.write_text(text.replace("balance roundrobin", "balance sideways", 1))
    result = check_config(path)
    assert result.returncode != 0
    assert "balance only supports" in result.stdout + result.stderr


def test_gateway_paths_are_prefixes_not_substrings():
    text = render_haproxy_config(_backends(), bind="127.0.0.1:1", stats_bind="127.0.0.1:2")
    assert "acl is_auth path /auth\n" in text and "acl is_auth path_beg /auth/\n" in text
    assert "path_beg /auth\n" not in text  # /authx must not reach auth
    with pytest.raises(ConfigurationError, match="must start with /"):
        Backend("auth", ("auth",), (("a", "127.0.0.1:1"),))
    with pytest.raises(ConfigurationError, match="no servers"):
        Backend("auth", ("/auth",), ())


def test_server_checks_read_the_stats_csv():
    csv = (
        "# pxname,svname,status,check_status\n"
        "gateway,FRONTEND,OPEN,\n"
        "auth,auth-1,UP,L7OK\n"
        "auth,auth-2,DOWN,L4CON\n"
        "auth,BACKEND,UP,\n"
    )
    assert server_checks(csv) == {"auth/auth-1": "L7OK", "auth/auth-2": "L4CON"}


# ------------------------------------------------------------------ Stack


def _monitored_stack() -> Stack:
    return Stack(
        provider="local",
        postgres=PostgresEndpoints("a", "b", "c", "127.0.0.1", 1, "atendeai"),
        redis_url="redis://x",
        services={"auth": "http://127.0.0.1:1"},
        platform_admin=Credentials("a@b.c", "password1"),
        service_instances={"auth": ("http://127.0.0.1:1", "http://127.0.0.1:2")},
        haproxy_url="http://127.0.0.1:3",
        haproxy_stats_url="http://127.0.0.1:4/stats",
        prometheus_url="http://127.0.0.1:5",
        exporters={"redis": "http://127.0.0.1:6/metrics"},
        extra={"prometheus_targets": "12"},
    )


def test_stack_json_keeps_the_monitoring_endpoints(tmp_path):
    stack = _monitored_stack()
    stack.write_json(tmp_path / "stack.json")
    assert Stack.read_json(tmp_path / "stack.json") == stack


def test_atendeai_up_prints_haproxy_prometheus_and_every_instance():
    out = io.StringIO()
    cli.print_endpoints(_monitored_stack(), cold_start_s=4.2, out=out)
    text = out.getvalue()
    assert "cold start 4.20 s" in text
    assert "http://127.0.0.1:1  http://127.0.0.1:2" in text  # both auth instances
    assert "haproxy:    http://127.0.0.1:3" in text and "stats     http://127.0.0.1:4/stats" in text
    assert "prometheus: http://127.0.0.1:5  (12 targets" in text
    assert "redis     http://127.0.0.1:6/metrics" in text
