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
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from harness.gate.acceptance import CriterionResult
from harness.gate.buckets import Bucket, bucket_text
from harness.gate.cpu import LATE_MS, VERY_LATE_MS, CpuUse, GeneratorUse
from harness.gate.crosscheck import CrossCheck
from harness.gate.drill import DrillResult, FaultResult
from harness.gate.loadrun import ClientFigures, EndpointFigures
from harness.gate.result import GateResult, Series
from harness.gate.slo import ObjectiveResult, Status, TargetUptime, Verdict, format_count
from harness.gate.status import CheckStatus
from harness.gate.suites import SuiteResults

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
        "json": _write(out_dir / "report.json", json.dumps(result.to_json(), indent=2) + "\n"),
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
    """One sentence on the scrape targets over the window (and how often
    Prometheus scraped them and evaluated its rules, when known)."""
    return _targets_sentence(result) + _intervals_sentence(result)


def _targets_sentence(result: GateResult) -> str:
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


def _intervals_sentence(result: GateResult) -> str:
    if result.prometheus_intervals_s is None:
        return ""
    scrape, evaluation = result.prometheus_intervals_s
    return (
        f" Over the window Prometheus scraped every {scrape:g} s and evaluated its rules "
        f"every {evaluation:g} s (its CPU, and each target's, is in the CPU figures)."
    )


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _e(text: str) -> str:
    """Text made safe inside HTML (quotes too)."""
    return html.escape(text)


def _windows(window: tuple[float, float], evidence: tuple[float, float] | None) -> str:
    """``Load window A → B (N s)``, and what Prometheus was read over when that differs."""
    text = f"Load window {_span(window)}"
    if evidence is None or evidence == window:
        return text
    return (
        f"{text}; server-side figures read over {_span(evidence)}, from a scrape of every "
        "target before its first request to one after its last"
    )


def _span(window: tuple[float, float]) -> str:
    """``2026-11-24 00:00:00 UTC → 2026-11-24 00:01:00 UTC (60 s)``."""
    return f"{_when(window[0])} → {_when(window[1])} ({window[1] - window[0]:.0f} s)"


def _suite_counts(suites: SuiteResults) -> str:
    return (
        f"{suites.count('passed')} passed, {suites.count('failed')} failed, "
        f"{suites.count('error')} errors, {suites.count('skipped')} skipped"
    )


def _generator(result: GateResult) -> GeneratorUse | None:
    return result.client.generator if result.client is not None else None


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
    if result.recovery is not None and result.recovery.status is CheckStatus.FAIL:
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


def hashing_line(hashing_p95_ms: dict[str, dict[str, float]]) -> str:
    """Where a password hash's time went, p95 per operation ('' when not read)."""
    parts = [
        f"{op} waited {_num(phases['queued'])} ms for the hashing thread and ran "
        f"{_num(phases['running'])} ms"
        for op, phases in hashing_p95_ms.items()
        if {"queued", "running"} <= phases.keys()
    ]
    if not parts:
        return ""
    return (
        "Password hashing, p95 over the window: " + "; ".join(parts) + " (running is bcrypt's "
        "CPU, given above per hash, plus the time the thread waited for a core)."
    )


def generator_line(generator: GeneratorUse) -> str:
    """The load generator's own cost and whether it kept up."""
    busiest, demand = generator.busiest_core_share, generator.demand_share
    text = (
        f"Load generator: {_num(generator.cpu_s)} CPU-seconds, "
        f"{_num(generator.ms_per_request)} ms per request; busiest core "
        + ("not sampled" if busiest is None else f"{busiest:.0%}")
        + ", running or waiting for a core "
        + ("not sampled" if demand is None else f"{demand:.0%}")
        + f" (limit {generator.busy_limit:.0%} of 5 s)"
    )
    if (late := generator.late_starts) is not None:
        text += (
            f"; {late.late:,} of {late.scheduled:,} scheduled requests started over "
            f"{LATE_MS:g} ms late ({late.very_late:,} over {VERY_LATE_MS:g} ms, the latest by "
            f"{late.max_late_ms:.0f} ms)"
        )
    why = generator.unreliable_because
    return text + (f". CLIENT FIGURES UNRELIABLE: {'; '.join(why)}." if why else ". It kept up.")


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table: header, separator and one line per row."""
    lines = [_md_row(headers), _md_row(["---"] * len(headers))]
    return "\n".join(lines + [_md_row(row) for row in rows])


def _md_bullets(items: Iterable[str]) -> list[str]:
    return [f"- {item}" for item in items]


def _md_heading(result: GateResult) -> str:
    return f"## Release gate: **{_headline(result)}**"


def _md_run(result: GateResult) -> str:
    text = (
        f"Run `{result.run_id}`, profile `{result.profile}`, provider `{result.provider}`, "
        f"load {result.load_mode}."
    )
    if result.window is None:
        return text
    return f"{text}\n{_windows(result.window, result.evidence_window)}."


def _md_objectives(result: GateResult) -> str:
    """The objectives' table, then why each unverifiable one is so."""
    table = _md_table(
        ["objective", "value", "samples", "threshold", "status"],
        [
            [r.objective.name, value_with_bucket(r, result.buckets), format_samples(r),
             _threshold(r), status_text(r)]
            for r in result.objectives
        ],
    )  # fmt: skip
    reasons = [f"{r.objective.name}: {r.reason}" for r in result.objectives if not r.verifiable]
    return "\n".join([table, *_md_bullets(reasons)])


def _md_cross_checks(checks: Sequence[CrossCheck]) -> str:
    if not checks:
        return ""
    table = _md_table(
        ["figure", "server", "client", "difference", "tolerance", "agrees"],
        [
            [c.objective, f"{_num(c.server)} {c.unit}", f"{_num(c.client)} {c.unit}",
             _num(c.difference), c.tolerance, _agreement(c.agrees)]
            for c in checks
        ],
    )  # fmt: skip
    return "\n".join([table, *_md_bullets(sorted({c.note for c in checks if c.note}))])


def _md_endpoints(client: ClientFigures | None, server_p95_ms: dict[str, float]) -> str:
    if not (client and client.endpoints):
        return ""
    return _md_table(
        ["endpoint", "client p95", "server p95", "requests", "failures"],
        [
            [p.label, f"{_num(p.p95_ms)} ms", f"{_num(server_p95_ms.get(p.label))} ms",
             f"{p.requests:,}", f"{p.failures:,}"]
            for p in client.endpoints
        ],
    )  # fmt: skip


def _md_suites(suites: SuiteResults | None) -> str:
    return f"Suites: {_suite_counts(suites)}." if suites else ""


def _md_drill(drill: DrillResult | None) -> str:
    """The drill's verdict; when faults ran, its figures and a row per fault."""
    if drill is None:
        return ""
    if not drill.faults:
        return _drill_line(drill)
    faults = _md_table(
        ["fault", "status", "served again", "back in rotation", "client", "server"],
        [
            [f.name, f.status.value, _seconds(f.served_again_s), _seconds(f.in_rotation_s),
             f.client.describe(), _server(f)]
            for f in drill.faults
        ],
    )  # fmt: skip
    summary = "\n".join(_md_bullets(_drill_summary(drill)))
    return "\n\n".join([_drill_line(drill), summary, faults])


def _md_acceptance(acceptance: Sequence[CriterionResult], notes: Sequence[str]) -> str:
    """The criteria's table, the run's notes right below it."""
    table = _md_table(
        ["criterion", "status"], [[c.criterion.spec_text, c.status.value] for c in acceptance]
    )
    return "\n".join([table, *_md_bullets(notes)])


def render_markdown(result: GateResult) -> str:
    """The summary: its blocks in order, a blank line between two (absent ones left out)."""
    generator = _generator(result)
    blocks = [
        _md_heading(result),
        _md_run(result),
        _md_objectives(result),
        targets_line(result),
        _md_cross_checks(result.cross_checks),
        _md_endpoints(result.client, result.endpoint_p95_ms),
        cpu_line(result.cpu) if result.cpu is not None else "",
        hashing_line(result.hashing_p95_ms),
        generator_line(generator) if generator is not None else "",
        _md_suites(result.suites),
        _md_drill(result.recovery),
        _md_acceptance(result.acceptance, result.notes),
    ]
    return "\n\n".join(block for block in blocks if block) + "\n"


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
        if c.status is CheckStatus.FAIL:
            failed += 1
            ET.SubElement(case, "failure", message="criterion not met").text = evidence
        elif c.status is CheckStatus.NOT_VERIFIABLE:
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
        if drill.status is CheckStatus.FAIL:
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
        if fault.status is CheckStatus.NOT_VERIFIABLE:
            skipped += 1
            ET.SubElement(case, "skipped", message="not verifiable here").text = fault.reason
        elif fault.status is CheckStatus.FAIL:
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


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """An HTML table; ``headers`` are text (escaped here), the cells HTML already."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#57606a")
    return f'<b style="color:{colour}">{_e(status)}</b>'


def _with_small(text: str, small: str) -> str:
    """``text`` and, on a line below it, ``small`` in small print (both escaped)."""
    return f"{_e(text)}<br><small>{_e(small)}</small>"


def _section(title: str, *parts: str) -> str:
    """An ``<h2>`` (``title`` is HTML, not escaped) and its parts, one line each."""
    return "\n".join((f"<h2>{title}</h2>", *parts))


def _html_heading(result: GateResult) -> str:
    """The verdict, then the run's identity and load window."""
    colour = STATUS_COLOURS["PASS" if result.verdict is Verdict.GO else "FAIL"]
    run = (
        f"<p>Run <code>{_e(result.run_id)}</code> · profile <b>{_e(result.profile)}</b> · "
        f"provider {_e(result.provider)} · load {_e(result.load_mode)}"
    )
    window = f" · {_e(_windows(result.window, result.evidence_window))}" if result.window else ""
    return f'<h1 style="color:{colour}">{_e(_headline(result))}</h1>\n{run}{window}</p>'


def _query_cell(query: str, counted: str | None) -> str:
    """The query that ran and, when there is one, the query that counted its samples."""
    cell = f"<code>{_e(query)}</code>"
    if counted:
        cell += f"<br><small>samples: <code>{_e(counted)}</code></small>"
    return cell


def _objective_row(r: ObjectiveResult, result: GateResult) -> list[str]:
    name = r.objective.name
    return [
        _e(name), _e(value_with_bucket(r, result.buckets)), _e(format_samples(r)),
        _e(_threshold(r)), _e(_margin(r)), _badge(status_text(r)), _e(r.reason),
        _query_cell(result.queries.get(name, r.objective.query), result.sample_queries.get(name)),
    ]  # fmt: skip


def _html_objectives(result: GateResult) -> str:
    return _section(
        "Objectives",
        _table(
            ["objective", "value", "samples", "threshold", "margin", "status", "why", "query"],
            [_objective_row(r, result) for r in result.objectives],
        ),
    )


def _html_targets(result: GateResult) -> str:
    """The scrape targets' sentence, then a row per target when any was scraped."""
    parts = [f"<p>{_e(targets_line(result))}</p>"]
    if result.target_uptime:
        parts.append(
            _table(
                ["target", "lowest up", "up share", "scrapes", "status"],
                [
                    [_e(t.label), f"{t.min_up:g}", f"{t.avg_up:.1%}", str(t.scrapes),
                     _badge("FAIL" if t.down_in_window else "PASS") + " " + _e(_uptime(t))]
                    for t in result.target_uptime
                ],
            )
        )  # fmt: skip
    return _section("Scrape targets over the window", *parts)


def _html_cross_checks(checks: Sequence[CrossCheck]) -> str:
    if not checks:
        return ""
    return _section(
        "Server and client views",
        "<p>Server figures come from Prometheus; client figures from the load "
        "generator's raw data for the same window. Client percentiles are Locust's "
        "(exact below 100 ms, to 10 ms below 1 s).</p>",
        *sorted({f"<p><b>{_e(c.note)}</b></p>" for c in checks if c.note}),
        _table(
            ["figure", "server", "client", "difference", "tolerance", "agree"],
            [
                [_e(c.objective), f"{_num(c.server)} {_e(c.unit)}",
                 f"{_num(c.client)} {_e(c.unit)}", _num(c.difference), _e(c.tolerance),
                 _badge(_agreement(c.agrees))]
                for c in checks
            ],
        ),
    )  # fmt: skip


def _html_series(series: dict[str, Series]) -> str:
    """Latency (every ``latency ...`` series), throughput, errors and users over time."""
    if not series:
        return ""
    latency = {k.removeprefix("latency "): v for k, v in series.items() if k.startswith("latency")}
    return _section(
        "Over time",
        line_chart("Latency", latency, unit="ms"),
        *(
            line_chart(title, {name: series[name]} if name in series else {}, unit=unit)
            for title, name, unit in (
                ("Throughput", "requests/s", "req/s"),
                ("Errors", "errors/s", "err/s"),
                ("Users", "users", "users"),
            )
        ),
    )


def _endpoint_row(p: EndpointFigures, server_p95_ms: float | None) -> list[str]:
    return [
        _e(p.label), f"{p.requests:,}", f"{p.failures:,}", f"{_num(p.median_ms)} ms",
        f"{_num(p.p95_ms)} ms", f"{_num(p.p99_ms)} ms", f"{p.requests_per_second:.1f}",
        f"{_num(server_p95_ms)} ms",
    ]  # fmt: skip


def _html_endpoints(client: ClientFigures | None, server_p95_ms: dict[str, float]) -> str:
    """The load generator's figures per endpoint (and in all), beside the server's p95."""
    if not client:
        return ""
    unreliable = client.unreliable_because
    warning = (
        [f"<p><b>CLIENT-SIDE FIGURES UNRELIABLE:</b> {_e('; '.join(unreliable))}.</p>"]
        if unreliable
        else []
    )
    return _section(
        "Per endpoint (load generator, and the services' own p95)",
        *warning,
        _table(
            ["endpoint", "requests", "failures", "median", "p95", "p99", "req/s", "server p95"],
            [
                _endpoint_row(p, server_p95_ms.get(p.label))
                for p in (*client.endpoints, client.aggregated)
            ],
        ),
        f"<p>Peak users: {client.users_peak:,}.</p>",
    )


def _html_cpu(cpu: CpuUse | None, hashing_p95_ms: dict[str, dict[str, float]]) -> str:
    hashing = hashing_line(hashing_p95_ms)
    hashing_html = f"<p>{_e(hashing)}</p>" if hashing else ""
    if cpu is None:
        return hashing_html
    return f"<h2>CPU of the stack over the load window</h2><p>{_e(cpu_line(cpu))}</p>{hashing_html}"


def _html_generator(generator: GeneratorUse | None) -> str:
    return "" if generator is None else f"<p>{_e(generator_line(generator))}</p>"


def _html_memory(memory_mb: dict[str, float | None]) -> str:
    if not memory_mb:
        return ""
    return (
        "<h2>Memory of the whole stack (RSS)</h2><p>"
        + " · ".join(f"{_e(k)}: {_num(v)} MB" for k, v in memory_mb.items())
        + "</p>"
    )


def _evidence_html(line: str) -> str:
    """A line of evidence; one spanning several lines (a log tail) preformatted."""
    return f"<pre>{_e(line)}</pre>" if "\n" in line else _e(line)


def _fault_row(f: FaultResult) -> list[str]:
    return [
        _with_small(f.name, f.expectation), _badge(f.status.value) + "<br>" + _e(f.reason),
        _e(_seconds(f.served_again_s)), _e(_seconds(f.in_rotation_s)),
        _e(f.client.describe()), _e(_server(f)),
        "<br>".join(_evidence_html(x) for x in f.evidence),
    ]  # fmt: skip


def _html_drill(drill: DrillResult | None) -> str:
    """The drill's verdict; when faults ran, its figures and a row per fault."""
    if drill is None:
        return ""
    parts = [f"<p>{_badge(drill.status.value)} {_e(drill.reason)}</p>"]
    if drill.faults:
        parts += [
            "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in _drill_summary(drill)) + "</ul>",
            _table(
                ["fault", "status", "served again", "back in rotation", "client side",
                 "server side", "evidence"],
                [_fault_row(f) for f in drill.faults],
            ),
        ]  # fmt: skip
    return _section("Resilience drill: faults under load", *parts)


def _html_acceptance(acceptance: Sequence[CriterionResult]) -> str:
    return _section(
        "Acceptance criteria of the spec",
        _table(
            ["area", "criterion", "status", "evidence"],
            [
                [_e(c.criterion.area), _with_small(c.criterion.spec_text, c.criterion.meaning),
                 _badge(c.status.value), "<br>".join(_e(x) for x in c.evidence)]
                for c in acceptance
            ],
        ),
    )  # fmt: skip


def _html_suites(suites: SuiteResults | None) -> str:
    """The suites' counts, then a row per test that failed or errored."""
    if not suites:
        return ""
    junit = f"(JUnit: <code>{_e(str(suites.junit_path.name))}</code>)"
    parts = [f"<p>{_suite_counts(suites)} {junit}.</p>"]
    failed = [o for o in suites.outcomes if o.status in ("failed", "error")]
    if failed:
        parts.append(
            _table(
                ["test", "message"], [[_e(f"{o.file}::{o.name}"), _e(o.message)] for o in failed]
            )
        )
    return _section("Suites", *parts)


def _html_notes(notes: Sequence[str], timings_s: dict[str, float]) -> str:
    if not (notes or timings_s):
        return ""
    items = [f"<li>{_e(n)}</li>" for n in notes]
    items += [f"<li>{_e(k)}: {v:.1f} s</li>" for k, v in timings_s.items()]
    return "\n".join(["<h2>Notes</h2><ul>", *items, "</ul>"])


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px}"
    "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d0d7de;"
    "padding:.3rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}"
    "code{font-size:.8rem;word-break:break-all}figure{margin:1rem 0}"
)


def _page(title: str, body: str) -> str:
    """The HTML document around ``body``; ``title`` is HTML already."""
    return (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        f"<title>{title}</title><style>{_STYLE}</style><body>{body}</body></html>\n"
    )


def render_html(result: GateResult) -> str:
    """The page: its sections in order, one line apart (absent ones left out)."""
    sections = [
        _html_heading(result),
        _html_objectives(result),
        _html_targets(result),
        _html_cross_checks(result.cross_checks),
        _html_series(result.series),
        _html_endpoints(result.client, result.endpoint_p95_ms),
        _html_cpu(result.cpu, result.hashing_p95_ms),
        _html_generator(_generator(result)),
        _html_memory(result.memory_mb),
        _html_drill(result.recovery),
        _html_acceptance(result.acceptance),
        _html_suites(result.suites),
        _html_notes(result.notes, result.timings_s),
    ]
    title = f"AtendeAI gate {_e(result.run_id)}: {_e(result.verdict.value)}"
    return _page(title, "\n".join(section for section in sections if section))
