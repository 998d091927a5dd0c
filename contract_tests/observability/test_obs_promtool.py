"""The Prometheus config and rules, checked by promtool (no stack needed).

- ``promtool check config`` on compose/prometheus/prometheus.yml (it also
  checks the rule files it names) and on a config the local provider renders;
- ``promtool check rules`` and ``promtool test rules`` (the unit tests in
  compose/prometheus/tests: a firing and a quiet case for every alert);
- the unit tests are sensitive: the same tests against the rules rendered
  with every ``for:`` removed must fail;
- every alert of the spec is there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from harness.providers.prometheus import (
    ScrapeJob,
    parse_duration,
    promtool,
    render_prometheus_config,
    render_rules,
    rule_files_in,
)

#: The spec's alerts, and ours on top of them (every one must be unit-tested).
SPEC_ALERTS = {
    "ServiceDown": "service down: immediately",
    "HighErrorRate": "error rate > 5 % for 1 minute",
    "HighLatencyP95": "p95 latency > 500 ms",
    "ServiceHighCpu": "CPU > 80 %",
    "ServiceHighMemory": "memory > 80 %",
    "LatencySLOBudgetBurnFast": "burn rate of the 200 ms latency SLO (fast)",
    "LatencySLOBudgetBurnSlow": "burn rate of the 200 ms latency SLO (slow)",
}


def _rules_dir(compose_dir: Path) -> Path:
    return compose_dir / "prometheus" / "rules"


def _alerts(compose_dir: Path) -> dict[str, dict]:
    alerts = {}
    for path in rule_files_in(_rules_dir(compose_dir)):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    alerts[rule["alert"]] = rule
    return alerts


def _ok(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_promtool_check_config_on_the_compose_config(compose_dir):
    output = _ok(promtool("check", "config", str(compose_dir / "prometheus" / "prometheus.yml")))
    assert "SUCCESS" in output and "rule files found" in output, output


def test_promtool_check_config_on_a_rendered_local_config(compose_dir, tmp_path):
    rules = []
    for source in rule_files_in(_rules_dir(compose_dir)):
        render_rules(source, tmp_path / source.name)
        rules.append(tmp_path / source.name)
    config = render_prometheus_config(
        [ScrapeJob("auth", ("127.0.0.1:1", "127.0.0.1:2"), labels=(("tier", "service"),))],
        rule_files=rules,
    )
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    _ok(promtool("check", "config", str(path)))


def test_promtool_check_rules(compose_dir):
    files = [str(p) for p in rule_files_in(_rules_dir(compose_dir))]
    output = _ok(promtool("check", "rules", *files))
    assert "SUCCESS" in output


def test_promtool_unit_tests_of_the_rules(compose_dir):
    tests = sorted((compose_dir / "prometheus" / "tests").glob("*.test.yml"))
    assert tests, "no rule unit tests in compose/prometheus/tests"
    output = _ok(promtool("test", "rules", *map(str, tests)))
    assert "SUCCESS" in output


def test_every_spec_alert_exists_with_its_threshold(compose_dir):
    alerts = _alerts(compose_dir)
    assert set(SPEC_ALERTS) <= set(alerts), sorted(set(SPEC_ALERTS) - set(alerts))
    assert "for" not in alerts["ServiceDown"] or parse_duration(alerts["ServiceDown"]["for"]) == 0
    assert parse_duration(alerts["HighErrorRate"]["for"]) == 60
    assert "> 0.05" in alerts["HighErrorRate"]["expr"]
    assert "> 0.5" in alerts["HighLatencyP95"]["expr"]
    assert "> 0.8" in alerts["ServiceHighCpu"]["expr"]
    assert "> 0.8" in alerts["ServiceHighMemory"]["expr"]
    for name in ("LatencySLOBudgetBurnFast", "LatencySLOBudgetBurnSlow"):
        assert alerts[name]["labels"]["slo"] == "latency-200ms"


def test_every_alert_has_a_firing_and_a_quiet_unit_test(compose_dir):
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in (compose_dir / "prometheus" / "tests").glob("*.test.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts(compose_dir))
    assert alerts - firing == set(), f"alerts never shown firing: {sorted(alerts - firing)}"
    assert alerts - quiet == set(), f"alerts never shown quiet: {sorted(alerts - quiet)}"


def test_unit_tests_fail_when_the_for_durations_are_dropped(compose_dir, tmp_path):
    # The tests say "pending, not firing yet" at some points: rules without
    # their `for:` must make them fail, or the tests do not test `for:`.
    (tmp_path / "rules").mkdir()
    for source in rule_files_in(_rules_dir(compose_dir)):
        render_rules(source, tmp_path / "rules" / source.name, for_cap_s=0)
    (tmp_path / "tests").mkdir()
    for test in (compose_dir / "prometheus" / "tests").glob("*.test.yml"):
        shutil.copy(test, tmp_path / "tests" / test.name)
    result = promtool("test", "rules", *map(str, sorted((tmp_path / "tests").glob("*.test.yml"))))
    assert result.returncode != 0, result.stdout
    for alert in ("HighErrorRate", "HighLatencyP95", "ServiceHighCpu", "ServiceHighMemory"):
        assert f"alertname: {alert}" in result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: up ==\n"
    )
    result = promtool("check", "rules", str(broken))
    assert result.returncode != 0
    assert "parse error" in (result.stdout + result.stderr).lower()


def test_rendered_rules_change_only_the_for_durations(compose_dir, tmp_path):
    for source in rule_files_in(_rules_dir(compose_dir)):
        original = yaml.safe_load(source.read_text())
        rendered = render_rules(source, tmp_path / source.name, for_cap_s=3)
        assert yaml.safe_load((tmp_path / source.name).read_text()) == rendered
        for group_a, group_b in zip(original["groups"], rendered["groups"], strict=True):
            for a, b in zip(group_a["rules"], group_b["rules"], strict=True):
                assert {k: v for k, v in a.items() if k != "for"} == {
                    k: v for k, v in b.items() if k != "for"
                }
                if "for" in a:
                    assert parse_duration(b["for"]) == min(parse_duration(a["for"]), 3)
