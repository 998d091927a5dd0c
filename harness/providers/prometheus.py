"""Prometheus in the local stack (Debian's prometheus), scraping every component.

``LocalPrometheus`` renders ``prometheus.yml`` from a list of ``ScrapeJob``
(``render_prometheus_config``) with short scrape and rule evaluation
intervals (1 s by default, so tests see data quickly;
``compose/prometheus/prometheus.yml`` uses 15 s; the release gate's stacks
evaluate the rules every 15 s too, ``at_deployment_evaluation_interval``)
and loads the alerting and recording rules of ``compose/prometheus/rules/``,
the same files the Docker deployment loads. ``render_rules`` copies them into
the run directory, optionally with every ``for:`` capped (the live alert test
uses that: same expressions, shorter waits; nothing hand-copied).

Job names and target labels are the same as in the compose config (one job
per service, ``haproxy``, ``postgres``, ``redis``, ``prometheus``), so the
rules and the Grafana dashboards work on both.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.exceptions import ConfigurationError, WaitTimeout
from harness.processes import wait_until
from harness.providers.daemon import HttpDaemon, find_binary

PACKAGE = "prometheus"
REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO_ROOT / "compose"
DEFAULT_RULES_DIR = COMPOSE_DIR / "prometheus" / "rules"
#: The Docker deployment's Prometheus configuration (scrape and evaluation every 15 s).
DEPLOYMENT_CONFIG = COMPOSE_DIR / "prometheus" / "prometheus.yml"

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$")


def parse_duration(text: str) -> float:
    """A Prometheus duration (``90s``, ``1m30s``, ``2h``) in seconds."""
    match = _DURATION.match(str(text).strip())
    if not match or not any(match.groups()):
        raise ConfigurationError(f"{text!r} is not a Prometheus duration (e.g. 30s, 5m, 1h)")
    days, hours, minutes, seconds, millis = (int(g) if g else 0 for g in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds + millis / 1000


def format_duration(seconds: float) -> str:
    """Seconds as a Prometheus duration (``1s``, ``500ms``, ``2m``)."""
    millis = round(seconds * 1000)
    if millis % 60_000 == 0 and millis:
        return f"{millis // 60_000}m"
    if millis % 1000 == 0:
        return f"{millis // 1000}s"
    return f"{millis}ms"


@dataclass(frozen=True)
class ScrapeJob:
    """One ``scrape_configs`` entry: a job name, its targets and extra target labels."""

    name: str
    targets: tuple[str, ...]
    labels: tuple[tuple[str, str], ...] = ()
    metrics_path: str = "/metrics"

    def to_config(self) -> dict[str, Any]:
        static: dict[str, Any] = {"targets": list(self.targets)}
        if self.labels:
            static["labels"] = dict(self.labels)
        config: dict[str, Any] = {"job_name": self.name, "static_configs": [static]}
        if self.metrics_path != "/metrics":
            config["metrics_path"] = self.metrics_path
        return config


@dataclass(frozen=True)
class PrometheusSettings:
    """How the local Prometheus runs.

    - ``scrape_interval_s`` / ``evaluation_interval_s``: short, so tests see data fast.
    - ``rules_dir``: the rule files to load (``*.yml``; ``None``: load none).
    - ``rule_for_cap_s``: cap every rule's ``for:`` at this many seconds (``None``: as written).
    - ``retention``: how long the TSDB keeps samples (the run directory is temporary anyway).
    """

    scrape_interval_s: float = 1.0
    evaluation_interval_s: float = 1.0
    rules_dir: Path | None = field(default=DEFAULT_RULES_DIR)
    rule_for_cap_s: float | None = None
    retention: str = "1d"

    def __post_init__(self) -> None:
        if self.rules_dir is not None and not isinstance(self.rules_dir, Path):
            object.__setattr__(self, "rules_dir", Path(self.rules_dir))
        if self.scrape_interval_s <= 0 or self.evaluation_interval_s <= 0:
            raise ConfigurationError("Prometheus scrape and evaluation intervals must be positive")
        if self.rule_for_cap_s is not None and self.rule_for_cap_s < 0:
            raise ConfigurationError(f"rule_for_cap_s must not be negative: {self.rule_for_cap_s}")


def deployment_interval_s(key: str, *, deployment_config: Path = DEPLOYMENT_CONFIG) -> float:
    """``global.<key>`` of the Docker deployment's ``prometheus.yml`` in seconds
    (``scrape_interval`` or ``evaluation_interval``: 15 s each)."""
    try:
        document = yaml.safe_load(deployment_config.read_text())
        return parse_duration(document["global"][key])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        raise ConfigurationError(
            f"{deployment_config}: cannot read global.{key} ({error!r})"
        ) from None


def at_deployment_evaluation_interval(
    settings: PrometheusSettings, *, deployment_config: Path = DEPLOYMENT_CONFIG
) -> PrometheusSettings:
    """``settings`` with the rules evaluated as often as the Docker deployment
    evaluates them (``evaluation_interval`` of ``compose/prometheus/prometheus.yml``,
    15 s); the scrape interval stays as it is.

    The release gate's stacks run this way: the gate reads no rule, and
    evaluating the recording rules every second, over samples scraped every
    second, was two thirds of Prometheus's CPU in the 1000-user ``sla`` run
    (about 0.16 ms per request), a cost the deployment does not have. The
    tests' stacks keep 1 s, so an alert test sees its alert within seconds.
    """
    interval = deployment_interval_s("evaluation_interval", deployment_config=deployment_config)
    return dataclasses.replace(settings, evaluation_interval_s=interval)


def rewrite_scrape_interval(config_path: Path, seconds: float) -> None:
    """Set the global scrape interval (and timeout) of the ``prometheus.yml`` at
    ``config_path``, written whole (a new file renamed over the old one, so a
    Prometheus reloading meanwhile never reads half of it)."""
    if seconds <= 0:
        raise ConfigurationError(f"a scrape interval must be positive, not {seconds:g} s")
    document = yaml.safe_load(config_path.read_text())
    interval = format_duration(seconds)
    document["global"]["scrape_interval"] = interval
    document["global"]["scrape_timeout"] = interval
    staged = config_path.with_name(config_path.name + ".new")
    staged.write_text(yaml.safe_dump(document, sort_keys=False))
    staged.chmod(config_path.stat().st_mode & 0o777)  # the container's Prometheus reads it
    staged.replace(config_path)


def await_scrape_interval(url: str, seconds: float, *, timeout_s: float = 30.0) -> None:
    """Return once the Prometheus at ``url`` runs with a ``seconds`` scrape interval
    (after a reload); ``WaitTimeout`` naming the interval it still has otherwise."""
    from harness.prometheus_api import PrometheusClient

    what = f"Prometheus at {url} to scrape every {seconds:g} s (its log says why if it refused)"
    with PrometheusClient(url) as reader:
        seen: list[float] = []

        def reloaded() -> bool:
            seen.append(reader.intervals_s()[0])
            return seen[-1] == seconds

        try:
            wait_until(reloaded, timeout=timeout_s, interval=0.2, what=what)
        except WaitTimeout as error:
            still = f"still scraping every {seen[-1]:g} s" if seen else None
            raise WaitTimeout(what, timeout_s, attempts=error.attempts, last_result=still) from None


def render_prometheus_config(
    jobs: Sequence[ScrapeJob],
    *,
    rule_files: Sequence[Path] = (),
    scrape_interval_s: float = 1.0,
    evaluation_interval_s: float = 1.0,
) -> dict[str, Any]:
    """``prometheus.yml`` as a dict (dump it with ``yaml.safe_dump``)."""
    names = [job.name for job in jobs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigurationError(f"duplicate scrape job names: {', '.join(duplicates)}")
    interval = format_duration(scrape_interval_s)
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": format_duration(evaluation_interval_s),
            "external_labels": {"stack": "local"},
        },
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [job.to_config() for job in jobs],
    }


def rule_files_in(rules_dir: Path) -> list[Path]:
    """The rule files of a directory (``*.yml``), sorted; an error when there are none."""
    if not rules_dir.is_dir():
        raise ConfigurationError(f"Prometheus rules directory {rules_dir} does not exist")
    files = sorted(rules_dir.glob("*.yml"))
    if not files:
        raise ConfigurationError(f"no rule files (*.yml) in {rules_dir}")
    return files


def render_rules(source: Path, target: Path, *, for_cap_s: float | None = None) -> dict[str, Any]:
    """Copy the rule file ``source`` to ``target``, every ``for:`` capped at ``for_cap_s``.

    Only ``for:`` changes: expressions, labels and annotations are the
    source's own, so a test of the rendered file is a test of the source.
    Returns the rendered document.
    """
    document = yaml.safe_load(source.read_text())
    if not isinstance(document, dict) or not isinstance(document.get("groups"), list):
        raise ConfigurationError(f"{source}: not a Prometheus rule file (no 'groups' list)")
    if for_cap_s is not None:
        for group in document["groups"]:
            for rule in group.get("rules", []):
                if "for" in rule and parse_duration(rule["for"]) > for_cap_s:
                    rule["for"] = format_duration(for_cap_s)
    target.write_text(
        f"# Rendered from {source} by harness/providers/prometheus.py"
        + (f" (every for: capped at {format_duration(for_cap_s)})" if for_cap_s else "")
        + "\n"
        + yaml.safe_dump(document, sort_keys=False)
    )
    return document


def promtool(*args: str, binary: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool`` with ``args`` (return code and output, never raises on failure)."""
    tool = find_binary("promtool", "promtool", package=PACKAGE, explicit=binary)
    return subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=120)


class LocalPrometheus(HttpDaemon):
    """Prometheus on a free loopback port with a rendered config and the compose rules."""

    component = "prometheus"
    binary_name = "prometheus"
    package = PACKAGE
    hint = "read the log tail; `promtool check config prometheus.yml` in the run directory"

    def __init__(
        self,
        directory: Path,
        *,
        jobs: Sequence[ScrapeJob],
        settings: PrometheusSettings | None = None,
        **options,
    ) -> None:
        super().__init__(directory, **options)
        self.settings = settings or PrometheusSettings()
        self.jobs = list(jobs)
        self.rule_files: list[Path] = []

    @property
    def config_path(self) -> Path:
        return self.directory / "prometheus.yml"

    def add_job(self, job: ScrapeJob) -> None:
        """Add a job before the start (the provider adds ``prometheus`` itself last)."""
        self.jobs.append(job)

    def _configure(self, ports: Sequence[int]) -> None:
        self.rule_files = []
        if self.settings.rules_dir is not None:
            rules_out = self.directory / "rules"
            rules_out.mkdir(exist_ok=True)
            for source in rule_files_in(self.settings.rules_dir):
                target = rules_out / source.name
                render_rules(source, target, for_cap_s=self.settings.rule_for_cap_s)
                self.rule_files.append(target)
        jobs = [job for job in self.jobs if job.name != "prometheus"]
        jobs.append(ScrapeJob("prometheus", (f"{self.host}:{ports[0]}",)))
        config = render_prometheus_config(
            jobs,
            rule_files=self.rule_files,
            scrape_interval_s=self.settings.scrape_interval_s,
            evaluation_interval_s=self.settings.evaluation_interval_s,
        )
        self.jobs = jobs
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _command(self, binary: Path, ports: Sequence[int]) -> list[str]:
        return [
            str(binary),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--storage.tsdb.retention.time={self.settings.retention}",
            f"--web.listen-address={self.host}:{ports[0]}",
            "--log.level=warn",
        ]

    def _ready(self) -> bool:
        self._get("/-/ready")
        return True

    def scrape_every(self, seconds: float) -> None:
        """Scrape every target every ``seconds`` from now on: the config rewritten
        (a restart keeps it) and reloaded with SIGHUP; returns once it runs so."""
        if self.process is None or self.process.pid is None:
            raise ConfigurationError("prometheus is not running: nothing to reconfigure")
        rewrite_scrape_interval(self.config_path, seconds)
        self.settings = dataclasses.replace(self.settings, scrape_interval_s=seconds)
        os.kill(self.process.pid, signal.SIGHUP)
        await_scrape_interval(self.url(), seconds)

    @property
    def target_count(self) -> int:
        return sum(len(job.targets) for job in self.jobs)


__all__ = [
    "DEFAULT_RULES_DIR",
    "DEPLOYMENT_CONFIG",
    "LocalPrometheus",
    "PrometheusSettings",
    "ScrapeJob",
    "at_deployment_evaluation_interval",
    "await_scrape_interval",
    "deployment_interval_s",
    "format_duration",
    "parse_duration",
    "promtool",
    "render_prometheus_config",
    "render_rules",
    "rewrite_scrape_interval",
    "rule_files_in",
]
