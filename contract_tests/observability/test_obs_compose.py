"""The Docker deployment in compose/, checked statically with real tools (the
deployment suite, contract_tests/deployment, then starts it for real).

What is checked here:
- docker-compose.yml against the Compose Specification's JSON schema (the
  copy vendored by check-jsonschema, ``--builtin-schema vendor.compose-spec``);
- the spec's shape: every service present, a health check on every
  long-running one, network atendeai-network 172.20.0.0/16, named volumes,
  Redis with AOF and a password, two replicas per service, no secret in git;
- haproxy/haproxy.cfg with ``haproxy -c`` (Debian's HAProxy 2.6, as in the image);
- kong/kong.yml structurally (Kong's image exists only in a registry: it cannot run here);
- consistency: every Kong route and every HAProxy backend leads to paths the
  services' live OpenAPI documents serve; the health check path is served by
  every service; the compose and local Prometheus jobs are the same.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.deployment import PASSWORDS
from harness.providers.haproxy import GATEWAY_ROUTES, HEALTH_CHECK_PATH, check_config
from system_under_test import DEFAULT_PORTS, SERVICES

SPEC_SERVICES = {
    "postgres",
    "redis",
    "auth",
    "users",
    "clinics",
    "health",
    "kong",
    "haproxy",
    "prometheus",
    "grafana",
    "postgres-exporter",
    "redis-exporter",
}
#: Services that run once and exit: a health check means nothing for them.
ONE_SHOT_JOBS = {"migrate"}
#: Every secret the compose file needs (also what the deployment suite generates).
SECRET_VARIABLES = set(PASSWORDS)


def tool(name: str) -> str:
    """A command-line tool: the virtualenv's own first, then ``$PATH``."""
    beside_python = Path(sys.executable).with_name(name)
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (run `make test`, which installs it)")
    return found


def _validate_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


# ------------------------------------------------------------------ schema


def test_compose_file_matches_the_compose_specification_schema(compose_dir):
    result = _validate_compose(compose_dir / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_an_invalid_compose_file(compose_file, tmp_path):
    broken = dict(compose_file)
    broken["services"] = {
        **compose_file["services"],
        "redis": {**compose_file["services"]["redis"], "healthcheck": {"test": 5, "tries": 3}},
    }
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = _validate_compose(path)
    assert result.returncode != 0
    assert "healthcheck" in result.stdout + result.stderr


# ------------------------------------------------------------------ the spec's shape


def test_every_service_of_the_spec_is_there(compose_file):
    assert set(compose_file["services"]) >= SPEC_SERVICES, sorted(
        SPEC_SERVICES - set(compose_file["services"])
    )


def test_every_long_running_service_has_a_healthcheck(compose_file):
    services = compose_file["services"]
    missing = [
        name
        for name, service in services.items()
        if name not in ONE_SHOT_JOBS and not service.get("healthcheck", {}).get("test")
    ]
    assert missing == []
    for job in ONE_SHOT_JOBS:  # a one-shot job really is one: it ends, others wait for it
        assert services[job]["restart"] == "no"
        waiting = [
            name
            for name, service in services.items()
            if service.get("depends_on", {}).get(job, {}).get("condition")
            == "service_completed_successfully"
        ]
        assert {"auth", "users", "clinics", "health"} <= set(waiting)


def test_network_and_volumes(compose_file):
    network = compose_file["networks"]["atendeai-network"]
    assert network["name"] == "atendeai-network"
    assert network["ipam"]["config"] == [{"subnet": "172.20.0.0/16"}]
    for name, service in compose_file["services"].items():
        assert service.get("networks") == ["atendeai-network"], name
    named = set(compose_file["volumes"])
    wanted = {
        "postgres": "/var/lib/postgresql/data",
        "redis": "/data",
        "prometheus": "/prometheus",
        "grafana": "/var/lib/grafana",
    }
    for service, target in wanted.items():
        mounts = [m.split(":") for m in compose_file["services"][service]["volumes"]]
        persistent = [source for source, mount_target, *_ in mounts if mount_target == target]
        assert persistent and persistent[0] in named, f"{service}: {target} is not a named volume"


#: Images only a registry has: behind a profile that is off by default.
PULLED_ONLY = {"kong": ("kong:3.4", "gateway"), "grafana": ("grafana/grafana:", "dashboards")}


def test_every_image_is_built_by_the_project_but_kong_and_grafana(compose_dir, compose_file):
    for name, service in compose_file["services"].items():
        image = service["image"]
        if name in PULLED_ONLY:
            prefix, profile = PULLED_ONLY[name]
            assert image.startswith(prefix), name
            assert service.get("profiles") == [profile], f"{name} must sit behind {profile}"
            continue
        component = "platform" if name in SERVICES or name == "migrate" else name
        assert image == (
            f"${{ATENDEAI_IMAGE_PREFIX:-atendeai}}/{component}:${{ATENDEAI_IMAGE_TAG:-0.1.0}}"
        ), name
        assert (compose_dir / "images" / component / "Dockerfile").is_file(), component
        assert "profiles" not in service, f"{name} runs without a profile"
    # the spec's versions: PostgreSQL 15 and Redis 7 (Debian 12's); checked live
    # by the deployment suite too
    assert "postgresql-15" in (compose_dir / "images" / "postgres" / "Dockerfile").read_text()


def test_redis_has_aof_and_a_password(compose_dir, compose_file):
    conf = (compose_dir / "redis" / "redis.conf").read_text()
    assert re.search(r"^appendonly yes$", conf, re.M)
    assert re.search(r"^maxmemory-policy noeviction$", conf, re.M)
    redis = compose_file["services"]["redis"]
    assert '--requirepass "$$REDIS_PASSWORD"' in " ".join(redis["entrypoint"])
    # The password never lives in a committed file.
    assert not re.search(r"^\s*requirepass", conf, re.M)


def test_the_services_run_two_replicas_within_the_memory_the_alert_assumes(
    compose_dir, compose_file
):
    rules = (compose_dir / "prometheus" / "rules" / "atendeai.yml").read_text()
    assumed = re.search(
        r"process_resident_memory_bytes\{[^}]*\} / \((\d+) \* 1024 \* 1024\)", rules
    )
    assert assumed, "ServiceHighMemory no longer divides by a limit in MiB"
    for name in SERVICES:
        deploy = compose_file["services"][name]["deploy"]
        assert deploy["replicas"] >= 2, name
        assert deploy["resources"]["limits"]["memory"] == f"{assumed.group(1)}M", name


def test_no_secret_is_committed(compose_dir, compose_file):
    example = dict(
        line.split("=", 1)
        for line in (compose_dir / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    text = (compose_dir / "docker-compose.yml").read_text()
    referenced = set(re.findall(r"\$\{([A-Z_]+)", text))
    assert referenced <= set(example), sorted(referenced - set(example))
    assert {name: example[name] for name in SECRET_VARIABLES} == dict.fromkeys(
        SECRET_VARIABLES, "change-me"
    )
    for name in SECRET_VARIABLES:  # required, never defaulted in the compose file
        assert re.search(rf"\$\{{{name}:\?", text), f"{name} must be required (${{{name}:?...}})"
    ignored = (compose_dir / ".gitignore").read_text().split()
    assert ".env" in ignored and "secrets/" in ignored


# ------------------------------------------------------------------ HAProxy


def _haproxy_routes(text: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(backend -> path prefixes, backend -> server-template address) of a haproxy.cfg."""
    acl_paths: dict[str, list[str]] = {}
    for acl, kind, path in re.findall(r"^\s*acl (\S+) (path|path_beg) (\S+)$", text, re.M):
        if kind == "path":
            acl_paths.setdefault(acl, []).append(path)
    routes = {
        backend: acl_paths[acl]
        for backend, acl in re.findall(r"^\s*use_backend (\S+) if (\S+)$", text, re.M)
    }
    templates = dict(
        re.findall(r"^backend (\S+)\n(?:.*\n)*?\s*server-template \S+ \d+ (\S+)", text, re.M)
    )
    return routes, templates


def test_compose_haproxy_config_passes_haproxy_c(compose_dir):
    result = check_config(compose_dir / "haproxy" / "haproxy.cfg")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    warnings = [line for line in output.splitlines() if "[WARNING]" in line]
    # Without Docker's DNS the replicas' names cannot resolve; init-addr none
    # lets HAProxy start anyway. Any other warning is a finding.
    unexpected = [line for line in warnings if "could not resolve address" not in line]
    assert unexpected == [], output


def test_compose_haproxy_routes_like_the_local_one(compose_dir):
    text = (compose_dir / "haproxy" / "haproxy.cfg").read_text()
    routes, templates = _haproxy_routes(text)
    assert routes == {name: list(prefixes) for name, prefixes in GATEWAY_ROUTES.items()}
    assert templates == {name: f"{name}:{DEFAULT_PORTS[name]}" for name in SERVICES}
    assert text.count(f"option httpchk GET {HEALTH_CHECK_PATH}") == len(SERVICES)
    assert re.search(r"^\s*bind :8404$", text, re.M) and "stats enable" in text
    assert "use-service prometheus-exporter" in text


# ------------------------------------------------------------------ Kong


def _kong(compose_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((compose_dir / "kong" / "kong.yml").read_text())


def test_kong_declarative_config_is_well_formed(compose_dir):
    kong = _kong(compose_dir)
    assert kong["_format_version"] == "3.0"
    names = [s["name"] for s in kong["services"]]
    routes = [r["name"] for s in kong["services"] for r in s["routes"]]
    assert len(names) == len(set(names)) and len(routes) == len(set(routes))
    for service in kong["services"]:
        assert service["url"] == "http://haproxy:80", service["name"]
        assert service["retries"] == 0, "Kong must not replay a POST"
        for route in service["routes"]:
            assert route["paths"] and all(p.startswith("/") for p in route["paths"])
            assert route["strip_path"] is False
    plugins = {p["name"]: p["config"] for p in kong["plugins"]}
    assert {"rate-limiting", "cors", "response-transformer", "prometheus"} <= set(plugins)
    limit = plugins["rate-limiting"]
    assert limit["policy"] == "redis" and limit["minute"] > 0
    assert limit["redis_password"].startswith("{vault://env/"), "no literal password in kong.yml"
    cors = plugins["cors"]
    assert "*" not in cors["origins"] or not cors["credentials"], "never * with credentials"
    headers = dict(h.split(":", 1) for h in plugins["response-transformer"]["add"]["headers"])
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    kong_env = compose_dir / "docker-compose.yml"
    assert 'KONG_DATABASE: "off"' in kong_env.read_text()


def test_kong_routes_lead_to_paths_the_services_serve(compose_dir, openapi_docs):
    kong = _kong(compose_dir)
    for service in kong["services"]:
        served = set(openapi_docs[service["name"]]["paths"])
        for route in service["routes"]:
            for prefix in route["paths"]:
                matches = {p for p in served if p == prefix or p.startswith(prefix + "/")}
                assert matches, f"Kong route {prefix} reaches nothing {service['name']} serves"
                # ... and HAProxy sends that prefix to the same service.
                assert prefix in GATEWAY_ROUTES[service["name"]]


def test_haproxy_backends_lead_to_paths_the_services_serve(openapi_docs):
    for name, prefixes in GATEWAY_ROUTES.items():
        served = set(openapi_docs[name]["paths"])
        assert HEALTH_CHECK_PATH in served, f"{name} does not serve the health check path"
        for prefix in prefixes:
            assert any(p == prefix or p.startswith(prefix + "/") for p in served), (
                f"HAProxy sends {prefix} to {name}, which serves none of it: {sorted(served)}"
            )
        others = {p for other, doc in openapi_docs.items() if other != name for p in doc["paths"]}
        stolen = {p for p in others for prefix in prefixes if p.startswith(prefix)}
        assert stolen == set(), f"{name}'s prefixes also match other services' paths: {stolen}"


def test_every_api_path_is_reachable_through_the_gateway(openapi_docs):
    common = {"/health", "/ready", "/metrics", "/openapi.json"}
    for name, doc in openapi_docs.items():
        api_paths = set(doc["paths"]) - common
        unreachable = {
            p
            for p in api_paths
            if not any(p == x or p.startswith(x + "/") for x in GATEWAY_ROUTES[name])
        }
        assert unreachable == set(), f"{name}: no gateway route for {sorted(unreachable)}"


# ------------------------------------------------------------------ Prometheus and Grafana


def test_compose_prometheus_jobs_are_the_local_ones(compose_dir):
    config = yaml.safe_load((compose_dir / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    local = set(SERVICES) | {"haproxy", "postgres", "redis", "prometheus"}
    assert jobs == local | {"kong"}  # Kong runs only in Docker
    assert config["global"]["scrape_interval"] == "15s"
    for job in config["scrape_configs"]:
        if job["job_name"] in SERVICES:
            (sd,) = job["dns_sd_configs"]
            assert sd["port"] == DEFAULT_PORTS[job["job_name"]]
            assert {"target_label": "tier", "replacement": "service"} in job["relabel_configs"]
    command = compose_file_command(compose_dir, "prometheus")
    assert "--storage.tsdb.retention.time=15d" in command


def compose_file_command(compose_dir: Path, service: str) -> list[str]:
    compose = yaml.safe_load((compose_dir / "docker-compose.yml").read_text())
    return list(compose["services"][service]["command"])


def test_grafana_provisioning_points_the_dashboards_at_the_datasource(compose_dir):
    grafana = compose_dir / "grafana"
    datasources = yaml.safe_load(
        (grafana / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    assert [(d["uid"], d["type"], d["url"]) for d in datasources] == [
        ("prometheus", "prometheus", "http://prometheus:9090")
    ]
    providers = yaml.safe_load(
        (grafana / "provisioning" / "dashboards" / "atendeai.yml").read_text()
    )["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize("path", ["postgres/initdb/10-monitoring-role.sh"])
def test_shell_scripts_parse(compose_dir, path):
    result = subprocess.run(["sh", "-n", str(compose_dir / path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
