"""The gate's four reports, written from one ``GateResult``:

- ``report.html`` for a person: the verdict first, then every objective with
  value, the samples it rests on, threshold, margin and query; the scrape
  targets' up-ness over the window; the cross-check; plots over time; the
  recovery drill's steps; the acceptance criteria; the suites;
- ``report.json`` for machines; ``junit.xml`` for CI; ``summary.md`` for a
  pull request comment.

Files are written to a temporary name and renamed, so a reader never sees a
half-written report.
"""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from harness.gate.acceptance import CriterionStatus
from harness.gate.buckets import Bucket, bucket_text
from harness.gate.cpu import LATE_MS, VERY_LATE_MS, CpuUse, GeneratorUse
from harness.gate.drill import DrillResult, FaultResult
from harness.gate.recovery import DrillStatus
from harness.gate.result import GateResult, Series, plain
from harness.gate.slo import ObjectiveResult, Status, TargetUptime, Verdict, format_count

STATUS_COLOURS = {
    "pass": "#1a7f37", "PASS": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "FAIL": "#cf222e",
    "NOT VERIFIABLE": "#cf222e", "NOT VERIFIABLE HERE": "#57606a",
}  # fmt: skip


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_reports(result: GateResult, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "json": _write(out_dir / "report.json", json.dumps(plain(result), indent=2) + "\n"),
        "markdown": _write(out_dir / "summary.md", render_markdown(result)),
        "junit": _write(out_dir / "junit.xml", render_junit(result)),
        "html": _write(out_dir / "report.html", render_html(result)),
    }


# --- shared formatting -------------------------------------------------------


def format_value(result: ObjectiveResult, value: float | None = None) -> str:
    value = result.value if value is None else value
    if value is None:
        return "no data"
    unit = result.objective.unit
    if unit == "seconds":
        return f"{value * 1000:.1f} ms"
    if unit == "ratio":
        return f"{value * 100:.3f} %"
    return f"{value:,.0f}" if unit == "count" else f"{value:.2f}"


def value_with_bucket(result: ObjectiveResult, buckets: dict[str, Bucket]) -> str:
    """``243.0 ms (bucket 200-250 ms)``: the interpolated value and what it truly says."""
    bucket = buckets.get(result.objective.name)
    shown = format_value(result)
    return f"{shown} ({bucket_text(bucket)})" if bucket is not None else shown


def _threshold(result: ObjectiveResult) -> str:
    o = result.objective
    return f"{o.comparator} {format_value(result, o.threshold)}"


def _margin(result: ObjectiveResult) -> str:
    return (
        ""
        if result.margin is None
        else format_value(result, abs(result.margin))
        + (" to spare" if result.margin > 0 else " over")
    )


def status_text(result: ObjectiveResult) -> str:
    """``pass``, ``warn``, ``fail`` or ``NOT VERIFIABLE`` (not enough evidence: blocks a go)."""
    return "NOT VERIFIABLE" if result.status is Status.NOT_VERIFIABLE else result.status.value


def format_samples(result: ObjectiveResult) -> str:
    """The samples a value rests on, beside the minimum it needed."""
    if result.samples is None:
        return "not counted" + (
            f" (at least {result.min_samples:,} needed)" if result.min_samples else ""
        )
    shown = format_count(result.samples)
    if result.min_samples is None:
        return shown
    if result.samples < result.min_samples:
        return f"{shown} (too few: at least {result.min_samples:,} needed)"
    return f"{shown} (at least {result.min_samples:,} needed)"


def _uptime(target: TargetUptime) -> str:
    if not target.down_in_window:
        return f"up at all {target.scrapes} scrapes"
    return f"DOWN at times: up {target.avg_up:.1%} of {target.scrapes} scrapes"


def targets_line(result: GateResult) -> str:
    """One sentence on the scrape targets over the window."""
    targets = result.target_uptime
    if targets is None:
        return (
            "Scrape targets over the window: could not be read (every Prometheus "
            "objective is NOT VERIFIABLE)."
        )
    if not targets:
        return "Scrape targets over the window: none was scraped."
    down = [t for t in targets if t.down_in_window]
    if not down:
        return f"Scrape targets over the window: all {len(targets)} up at every scrape."
    return (
        f"Scrape targets over the window: {len(down)} of {len(targets)} down at times: "
        + "; ".join(f"{t.label} {_uptime(t)}" for t in down)
        + "."
    )


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _headline(result: GateResult) -> str:
    warnings = sum(1 for r in result.objectives if r.status is Status.WARN)
    failed = [r.objective.name for r in result.objectives if r.status is Status.FAIL]
    unverified = [r.objective.name for r in result.objectives if r.status is Status.NOT_VERIFIABLE]
    text = "GO" if result.verdict is Verdict.GO else "NO-GO"
    if failed:
        text += f": {', '.join(failed)} broke"
    if unverified:
        text += ("; " if failed else ": ") + f"{', '.join(unverified)} not verifiable"
    if warnings:
        text += f" ({warnings} warning{'s' if warnings > 1 else ''})"
    if result.recovery is not None and result.recovery.status is DrillStatus.FAIL:
        text += "; the resilience drill failed"
    return text


def _seconds(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def _drill_line(drill: DrillResult) -> str:
    return f"Resilience drill: {drill.status.value}, {drill.reason}."


def _drill_summary(drill: DrillResult) -> list[str]:
    """The whole drill's figures, one line each (Markdown and HTML)."""
    lines = [
        f"Users: {drill.users:,}. Steady state before the first fault: {drill.steady.describe()}.",
        f"Whole drill: {drill.run.describe()}.",
        f"Reads that do not depend on the failed component: {drill.unaffected_reads.describe()}.",
    ]
    if drill.ledger is not None:
        lines.append(f"Ledger of writes: {drill.ledger.summary()}.")
        lines += [f"Ledger: {example}" for example in drill.ledger.examples]
    elif drill.ledger_note:
        lines.append(f"Ledger of writes: NOT VERIFIABLE ({drill.ledger_note}).")
    return lines


def _server(fault: FaultResult) -> str:
    if fault.server is None:
        return fault.server_note
    text = f"{fault.server.requests:,} requests, {fault.server.failures:,} 5xx"
    return f"{text}; {fault.server_note}" if fault.server_note else text


# --- Markdown ------------------------------------------------------------------


def cpu_line(cpu: CpuUse) -> str:
    """``CPU per request: platform 2.41 ms (auth 1.80, ...)``, with the window's totals."""
    per = cpu.ms_per_request
    parts = ", ".join(f"{group} {_num(per[group])}" for group in cpu.seconds)
    text = (
        f"CPU per request served: platform {_num(per['platform'])} ms ({parts}); "
        f"{cpu.total_s:.1f} CPU-seconds over {cpu.window_s:.0f} s ({_num(cpu.cores_busy)} cores) "
        f"for {cpu.requests:,} requests"
    )
    if cpu.hashing_s is not None:
        each = cpu.hashing_ms_each
        counts = ", ".join(
            f"{count:,} {op} at {_num(each[op])} ms each" for op, (_, count) in cpu.hashing.items()
        )
        text += (
            f"; of which password hashing {cpu.hashing_s:.1f} s ({counts}): without it "
            f"{_num(cpu.platform_ms_without_hashing)} ms per request"
        )
    return text + (f"; {cpu.note}" if cpu.note else "") + "."


def generator_line(generator: GeneratorUse) -> str:
    """The load generator's own cost and whether it kept up."""
    busiest = generator.busiest_core_share
    text = (
        f"Load generator: {_num(generator.cpu_s)} CPU-seconds, "
        f"{_num(generator.ms_per_request)} ms per request; busiest core "
        + ("not sampled" if busiest is None else f"{busiest:.0%}")
        + f" (limit {generator.busy_limit:.0%})"
    )
    if (late := generator.late_starts) is not None:
        text += (
            f"; {late.late:,} of {late.scheduled:,} scheduled requests started over "
            f"{LATE_MS:g} ms late ({late.very_late:,} over {VERY_LATE_MS:g} ms, the latest by "
            f"{late.max_late_ms:.0f} ms)"
        )
    why = generator.unreliable_because
    return text + (f". CLIENT FIGURES UNRELIABLE: {'; '.join(why)}." if why else ". It kept up.")


def render_markdown(result: GateResult) -> str:
    lines = [
        f"## Release gate: **{_headline(result)}**",
        "",
        f"Run `{result.run_id}`, profile `{result.profile}`, provider `{result.provider}`, "
        f"load {result.load_mode}.",
    ]
    if result.window:
        lines.append(
            f"Load window {_when(result.window[0])} → {_when(result.window[1])} "
            f"({result.window[1] - result.window[0]:.0f} s)."
        )
    lines += [
        "",
        "| objective | value | samples | threshold | status |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in result.objectives:
        lines.append(
            f"| {r.objective.name} | {value_with_bucket(r, result.buckets)} | {format_samples(r)} "
            f"| {_threshold(r)} "
            f"| {status_text(r)} |"
        )
    lines += [f"- {r.objective.name}: {r.reason}" for r in result.objectives if not r.verifiable]
    lines += ["", targets_line(result)]
    if result.cross_checks:
        lines += [
            "",
            "| figure | server | client | difference | tolerance | agrees |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for c in result.cross_checks:
            lines.append(
                f"| {c.objective} | {_num(c.server)} {c.unit} | {_num(c.client)} {c.unit} | "
                f"{_num(c.difference)} | {c.tolerance} | {_agreement(c.agrees)} |"
            )
        lines += sorted({f"- {c.note}" for c in result.cross_checks if c.note})
    if result.client and result.client.endpoints:
        lines += [
            "",
            "| endpoint | client p95 | server p95 | requests | failures |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {p.label} | {_num(p.p95_ms)} ms | {_num(result.endpoint_p95_ms.get(p.label))} ms "
            f"| {p.requests:,} | {p.failures:,} |"
            for p in result.client.endpoints
        ]
    if result.cpu is not None:
        lines += ["", cpu_line(result.cpu)]
    if result.client is not None and result.client.generator is not None:
        lines += ["", generator_line(result.client.generator)]
    if result.suites:
        s = result.suites
        lines += [
            "",
            f"Suites: {s.count('passed')} passed, {s.count('failed')} failed, "
            f"{s.count('error')} errors, {s.count('skipped')} skipped.",
        ]
    if result.recovery is not None:
        drill = result.recovery
        lines += ["", _drill_line(drill)]
        if drill.faults:
            lines += [""] + [f"- {line}" for line in _drill_summary(drill)]
            lines += [
                "",
                "| fault | status | served again | back in rotation | client | server |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            lines += [
                f"| {f.name} | {f.status.value} | {_seconds(f.served_again_s)} "
                f"| {_seconds(f.in_rotation_s)} | {f.client.describe()} | {_server(f)} |"
                for f in drill.faults
            ]
    lines += ["", "| criterion | status |", "| --- | --- |"]
    for c in result.acceptance:
        lines.append(f"| {c.criterion.spec_text} | {c.status.value} |")
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def _agreement(agrees: bool | None) -> str:
    return "n/a" if agrees is None else "PASS" if agrees else "FAIL"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


# --- JUnit ---------------------------------------------------------------------


def render_junit(result: GateResult) -> str:
    root = ET.Element("testsuites", name=f"atendeai-gate {result.run_id}")
    slo = ET.SubElement(root, "testsuite", name="slo", tests=str(len(result.objectives)))
    failures = 0
    for r in result.objectives:
        case = ET.SubElement(slo, "testcase", classname="slo", name=r.objective.name)
        if r.status in (Status.FAIL, Status.NOT_VERIFIABLE):
            failures += 1
            ET.SubElement(case, "failure", message=r.reason).text = result.queries.get(
                r.objective.name, r.objective.query
            )
        elif r.status is Status.WARN:
            ET.SubElement(case, "system-out").text = f"WARNING: {r.reason}"
    slo.set("failures", str(failures))
    acceptance = ET.SubElement(
        root, "testsuite", name="acceptance", tests=str(len(result.acceptance))
    )
    failed = skipped = 0
    for c in result.acceptance:
        case = ET.SubElement(
            acceptance,
            "testcase",
            classname=f"acceptance.{c.criterion.area}",
            name=c.criterion.spec_text,
        )
        evidence = "\n".join(c.evidence)
        if c.status is CriterionStatus.FAIL:
            failed += 1
            ET.SubElement(case, "failure", message="criterion not met").text = evidence
        elif c.status is CriterionStatus.NOT_VERIFIABLE:
            skipped += 1
            ET.SubElement(case, "skipped", message="not verifiable here").text = evidence
    acceptance.set("failures", str(failed))
    acceptance.set("skipped", str(skipped))
    if result.recovery is not None:
        _junit_recovery(root, result.recovery)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _junit_recovery(root: ET.Element, drill: DrillResult) -> None:
    """One test case per fault of the drill, and one for the ledger; a single skipped
    case when the drill could not run."""
    suite = ET.SubElement(root, "testsuite", name="resilience")
    cases = 0
    failures = skipped = 0
    if not drill.faults:
        case = ET.SubElement(suite, "testcase", classname="resilience", name="resilience drill")
        if drill.status is DrillStatus.FAIL:
            ET.SubElement(case, "failure", message=drill.reason)
            failures += 1
        else:
            ET.SubElement(case, "skipped", message="not verifiable here").text = drill.reason
            skipped += 1
        cases = 1
    for fault in drill.faults:
        cases += 1
        case = ET.SubElement(suite, "testcase", classname="resilience", name=fault.name)
        if fault.served_again_s is not None:
            case.set("time", f"{fault.served_again_s:.3f}")
        if fault.status is DrillStatus.NOT_VERIFIABLE:
            skipped += 1
            ET.SubElement(case, "skipped", message="not verifiable here").text = fault.reason
        elif fault.status is DrillStatus.FAIL:
            failures += 1
            ET.SubElement(case, "failure", message=fault.reason).text = "\n".join(fault.evidence)
    if drill.faults:
        cases += 1
        case = ET.SubElement(
            suite, "testcase", classname="resilience", name="no acknowledged write lost"
        )
        if drill.ledger is None:
            skipped += 1
            ET.SubElement(case, "skipped", message="not verifiable").text = drill.ledger_note
        elif drill.ledger.lost:
            failures += 1
            ET.SubElement(case, "failure", message=drill.ledger.summary()).text = "\n".join(
                drill.ledger.examples
            )
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("skipped", str(skipped))


# --- HTML ----------------------------------------------------------------------


def line_chart(
    title: str, series: dict[str, Series], *, unit: str, width: int = 720, height: int = 220
) -> str:
    """A small SVG line chart (no JavaScript, no external files)."""
    points = [p for s in series.values() for p in s]
    if not points:
        return f"<figure><figcaption>{html.escape(title)}: no data</figcaption></figure>"
    left, right, top, bottom = 60, 10, 10, 30
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    v1 = max(p[1] for p in points) or 1.0
    span_t = (t1 - t0) or 1.0

    def x(t: float) -> float:
        return left + (t - t0) / span_t * (width - left - right)

    def y(v: float) -> float:
        return top + (1 - v / v1) * (height - top - bottom)

    colours = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#9a6700"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        'stroke="#8c959f"/>',
        f'<text x="4" y="{top + 10}" font-size="11">{v1:.3g} {html.escape(unit)}</text>',
        f'<text x="4" y="{height - bottom}" font-size="11">0</text>',
        f'<text x="{left}" y="{height - 8}" font-size="11">0 s</text>',
        f'<text x="{width - right - 40}" y="{height - 8}" font-size="11">{span_t:.0f} s</text>',
    ]
    legend = []
    for i, (name, data) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in data)
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>'
        )
        legend.append(f'<span style="color:{colour}">■ {html.escape(name)}</span>')
    parts.append("</svg>")
    return (
        f"<figure><figcaption>{html.escape(title)} {' '.join(legend)}</figcaption>"
        + "".join(parts)
        + "</figure>"
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#57606a")
    return f'<b style="color:{colour}">{html.escape(status)}</b>'


def render_html(result: GateResult) -> str:
    e = html.escape
    go = result.verdict is Verdict.GO
    sections = [
        f'<h1 style="color:{"#1a7f37" if go else "#cf222e"}">{e(_headline(result))}</h1>',
        f"<p>Run <code>{e(result.run_id)}</code> · profile <b>{e(result.profile)}</b> · "
        f"provider {e(result.provider)} · load {e(result.load_mode)}"
        + (
            f" · window {_when(result.window[0])} → {_when(result.window[1])} "
            f"({result.window[1] - result.window[0]:.0f} s)"
            if result.window
            else ""
        )
        + "</p>",
        "<h2>Objectives</h2>",
        _table(
            ["objective", "value", "samples", "threshold", "margin", "status", "why", "query"],
            [
                [
                    e(r.objective.name), e(value_with_bucket(r, result.buckets)),
                    e(format_samples(r)), e(_threshold(r)),
                    e(_margin(r)), _badge(status_text(r)), e(r.reason),
                    f"<code>{e(result.queries.get(r.objective.name, r.objective.query))}</code>"
                    + (
                        f"<br><small>samples: <code>{e(counted)}</code></small>"
                        if (counted := result.sample_queries.get(r.objective.name))
                        else ""
                    ),
                ]
                for r in result.objectives
            ],
        ),
        "<h2>Scrape targets over the window</h2>",
        f"<p>{e(targets_line(result))}</p>",
    ]  # fmt: skip
    if result.target_uptime:
        sections.append(
            _table(
                ["target", "lowest up", "up share", "scrapes", "status"],
                [
                    [e(t.label), f"{t.min_up:g}", f"{t.avg_up:.1%}", str(t.scrapes),
                     _badge("FAIL" if t.down_in_window else "PASS") + " " + e(_uptime(t))]
                    for t in result.target_uptime
                ],
            )
        )  # fmt: skip
    if result.cross_checks:
        sections += [
            "<h2>Server and client views</h2>",
            "<p>Server figures come from Prometheus; client figures from the load "
            "generator's raw data for the same window. Client percentiles are Locust's "
            "(exact below 100 ms, to 10 ms below 1 s).</p>",
            *sorted({f"<p><b>{e(c.note)}</b></p>" for c in result.cross_checks if c.note}),
            _table(
                ["figure", "server", "client", "difference", "tolerance", "agree"],
                [
                    [e(c.objective), f"{_num(c.server)} {e(c.unit)}",
                     f"{_num(c.client)} {e(c.unit)}", _num(c.difference), e(c.tolerance),
                     _badge(_agreement(c.agrees))]
                    for c in result.cross_checks
                ],
            ),
        ]  # fmt: skip
    if result.series:
        series = result.series
        latency = {
            k.removeprefix("latency "): v for k, v in series.items() if k.startswith("latency")
        }
        sections += [
            "<h2>Over time</h2>",
            line_chart("Latency", latency, unit="ms"),
            *(
                line_chart(title, {name: series[name]} if name in series else {}, unit=unit)
                for title, name, unit in (
                    ("Throughput", "requests/s", "req/s"),
                    ("Errors", "errors/s", "err/s"),
                    ("Users", "users", "users"),
                )
            ),
        ]  # fmt: skip
    if result.client:
        unreliable = result.client.unreliable_because
        sections += [
            "<h2>Per endpoint (load generator, and the services' own p95)</h2>",
            *(
                [f"<p><b>CLIENT-SIDE FIGURES UNRELIABLE:</b> {e('; '.join(unreliable))}"
                 ".</p>"]
                if unreliable
                else []
            ),
            _table(
                ["endpoint", "requests", "failures", "median", "p95", "p99", "req/s",
                 "server p95"],
                [
                    [e(p.label), f"{p.requests:,}", f"{p.failures:,}", f"{_num(p.median_ms)} ms",
                     f"{_num(p.p95_ms)} ms", f"{_num(p.p99_ms)} ms", f"{p.requests_per_second:.1f}",
                     f"{_num(result.endpoint_p95_ms.get(p.label))} ms"]
                    for p in (*result.client.endpoints, result.client.aggregated)
                ],
            ),
            f"<p>Peak users: {result.client.users_peak:,}.</p>",
        ]  # fmt: skip
    if result.cpu is not None:
        sections.append(
            f"<h2>CPU of the stack over the load window</h2><p>{e(cpu_line(result.cpu))}</p>"
        )
    if result.client is not None and result.client.generator is not None:
        sections.append(f"<p>{e(generator_line(result.client.generator))}</p>")
    if result.memory_mb:
        sections.append(
            "<h2>Memory of the whole stack (RSS)</h2><p>"
            + " · ".join(f"{e(k)}: {_num(v)} MB" for k, v in result.memory_mb.items())
            + "</p>"
        )
    if result.recovery is not None:
        drill = result.recovery
        sections += [
            "<h2>Resilience drill: faults under load</h2>",
            f"<p>{_badge(drill.status.value)} {e(drill.reason)}</p>",
        ]
        if drill.faults:
            sections.append(
                "<ul>" + "".join(f"<li>{e(x)}</li>" for x in _drill_summary(drill)) + "</ul>"
            )
            sections.append(
                _table(
                    ["fault", "status", "served again", "back in rotation", "client side",
                     "server side", "evidence"],
                    [
                        [f"{e(f.name)}<br><small>{e(f.expectation)}</small>",
                         _badge(f.status.value) + "<br>" + e(f.reason),
                         e(_seconds(f.served_again_s)), e(_seconds(f.in_rotation_s)),
                         e(f.client.describe()), e(_server(f)),
                         "<br>".join(f"<pre>{e(x)}</pre>" if "\n" in x else e(x)
                                     for x in f.evidence)]
                        for f in drill.faults
                    ],
                )
            )  # fmt: skip
    sections += [
        "<h2>Acceptance criteria of the spec</h2>",
        _table(
            ["area", "criterion", "status", "evidence"],
            [
                [e(c.criterion.area),
                 f"{e(c.criterion.spec_text)}<br><small>{e(c.criterion.meaning)}</small>",
                 _badge(c.status.value), "<br>".join(e(x) for x in c.evidence)]
                for c in result.acceptance
            ],
        ),
    ]  # fmt: skip
    if result.suites:
        s = result.suites
        failed = [o for o in s.outcomes if o.status in ("failed", "error")]
        sections += [
            "<h2>Suites</h2>",
            f"<p>{s.count('passed')} passed, {s.count('failed')} failed, "
            f"{s.count('error')} errors, "
            f"{s.count('skipped')} skipped (JUnit: <code>{e(str(s.junit_path.name))}</code>).</p>",
        ]
        if failed:
            sections.append(
                _table(
                    ["test", "message"], [[e(f"{o.file}::{o.name}"), e(o.message)] for o in failed]
                )
            )
    if result.notes or result.timings_s:
        sections.append("<h2>Notes</h2><ul>")
        sections += [f"<li>{e(n)}</li>" for n in result.notes]
        sections += [f"<li>{e(k)}: {v:.1f} s</li>" for k, v in result.timings_s.items()]
        sections.append("</ul>")
    style = (
        "body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px}"
        "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d0d7de;"
        "padding:.3rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}"
        "code{font-size:.8rem;word-break:break-all}figure{margin:1rem 0}"
    )
    return (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        f"<title>AtendeAI gate {e(result.run_id)}: {e(result.verdict.value)}</title>"
        f"<style>{style}</style><body>" + "\n".join(sections) + "</body></html>\n"
    )
