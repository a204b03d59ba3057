"""Reports of a discovery run: Markdown, and HTML with an inline SVG chart.

A report holds the scan summary, the findings (with masked examples only), the proposed
policy, and — when an audit log was given — the data inventory. Every string that came from
the database (names, masked examples) is escaped for the output format.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Sequence

from policy.detectors import ColumnFinding, suggest_mask

from .chart import Series, bar_chart_svg
from .inventory import ColumnUse, Inventory
from .scan import ScanResult


@dataclass
class Report:
    scan: ScanResult
    policy_toml: str
    inventory: Inventory | None = None


def mask_text(f: ColumnFinding) -> str:
    m = suggest_mask(f)
    extra = ", ".join(f"{k}={v}" for k, v in m.items() if k != "mask")
    return m["mask"] + (f" ({extra})" if extra else "")


def _md(s: object) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ").replace("`", "'")


def _top(counter: object, n: int = 5) -> str:
    items = counter.most_common(n)  # type: ignore[attr-defined]
    return ", ".join(f"{k} ({v})" for k, v in items) or "-"


def _errors(scan: ScanResult) -> list[tuple[str, str]]:
    return [(t.table.qualified, t.error) for t in scan.tables if t.error]


def render_markdown(report: Report) -> str:
    s = report.scan
    findings = sorted(s.findings, key=lambda f: (f.table, f.column))
    out = [
        f"# pgveil discover — {_md(s.database)}",
        "",
        f"{len(s.tables)} tables scanned in {s.seconds:.1f} s, up to {s.sample_rows} sampled "
        f"rows each; {len(findings)} sensitive columns found. Sampled values are never shown: "
        "examples are masked.",
        "",
        "## Findings",
        "",
        "| table | column | type | detected | matched | confidence | example | proposed mask |",
        "|---|---|---|---|---:|---:|---|---|",
    ]
    for f in findings:
        out.append(f"| {_md(f.table)} | {_md(f.column)} | {_md(f.type_name)} | {_md(f.label)} | "
                   f"{f.share:.0%} of {f.sampled} | {f.confidence:.2f} | "
                   f"{_md(f.example or '')} | {_md(mask_text(f))} |")
    errs = _errors(s)
    if errs:
        out += ["", "## Tables not scanned", ""]
        out += [f"- {_md(t)}: {_md(e)}" for t, e in errs]
    out += ["", "## Proposed policy", "", "```toml", report.policy_toml.rstrip(), "```"]
    inv = report.inventory
    if inv is not None:
        out += ["", "## Data inventory", "",
                f"Audit period {inv.first_ts or '?'} → {inv.last_ts or '?'}: {inv.statements} "
                f"statements in {len(inv.files)} file(s)"
                + (f", {inv.skipped_lines} unreadable lines skipped" if inv.skipped_lines else "")
                + ".", ""]
        out += ["### Read unmasked", ""]
        rows = sorted(inv.by_status("read unmasked"), key=lambda c: -c.unmasked_reads)
        if rows:
            out += ["| column | unmasked reads | masked reads | by | under grants | last |",
                    "|---|---:|---:|---|---|---|"]
            out += [f"| {_md(c.column)} | {c.unmasked_reads} | {c.masked_reads} | "
                    f"{_md(_top(c.users))} | {_md(_top(c.grants))} | {_md(c.last or '')} |"
                    for c in rows]
        else:
            out.append("None.")
        out += ["", "### Never read (candidates to stop collecting)", ""]
        never = inv.by_status("never read")
        out += [f"- {_md(c.column)}" for c in never] or ["None."]
        out += ["", "### Only ever read masked", ""]
        masked = inv.by_status("read masked only")
        out += [f"- {_md(c.column)} ({c.masked_reads} reads)" for c in masked] or ["None."]
        out += ["", "### Grants never used", ""]
        out += [f"- {_md(g.id)}" + (f" (for {_md(g.subject)})" if g.subject else "")
                for g in inv.unused_grants] or ["None."]
    return "\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left}
th{background:#f3f3f3} td.n{text-align:right}
pre{background:#f6f8fa;padding:1rem;overflow:auto}
.conf-hi{color:#a40000;font-weight:bold}.conf-mid{color:#b35c00}
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="n">{escape(c)}</td>' if i in numeric else f"<td>{escape(c)}</td>"
            for i, c in enumerate(r)) + "</tr>"
        for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _chart(report: Report) -> str:
    inv = report.inventory
    if inv is not None and inv.columns:
        uses: list[ColumnUse] = sorted(inv.columns.values(),
                                       key=lambda c: (-c.unmasked_reads, -c.masked_reads, c.column))
        return bar_chart_svg(
            "Reads of sensitive columns in the audit period",
            [c.column for c in uses], [(c.unmasked_reads, c.masked_reads) for c in uses],
            [Series("unmasked", "#d62728"), Series("masked", "#1f77b4")])
    findings = sorted(report.scan.findings, key=lambda f: -f.confidence)
    return bar_chart_svg(
        "Confidence per sensitive column", [f"{f.table}.{f.column}" for f in findings],
        [(round(f.confidence * 100),) for f in findings], [Series("confidence %", "#d62728")])


def render_html(report: Report) -> str:
    s = report.scan
    findings = sorted(s.findings, key=lambda f: (f.table, f.column))
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>pgveil discover — {escape(s.database)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>pgveil discover — {escape(s.database)}</h1>",
        f"<p>{len(s.tables)} tables scanned in {s.seconds:.1f} s, up to {s.sample_rows} sampled "
        f"rows each; {len(findings)} sensitive columns found. Sampled values are never shown: "
        "examples are masked.</p>",
        _chart(report),
        "<h2>Findings</h2>",
        _table(["table", "column", "type", "detected", "matched", "confidence", "example",
                "proposed mask"],
               [[f.table, f.column, f.type_name, f.label, f"{f.share:.0%} of {f.sampled}",
                 f"{f.confidence:.2f}", f.example or "", mask_text(f)] for f in findings],
               numeric=(4, 5)),
    ]
    errs = _errors(s)
    if errs:
        parts += ["<h2>Tables not scanned</h2>", _table(["table", "error"], errs)]
    parts += ["<h2>Proposed policy</h2>", f"<pre>{escape(report.policy_toml)}</pre>"]
    inv = report.inventory
    if inv is not None:
        parts += [
            "<h2>Data inventory</h2>",
            f"<p>Audit period {escape(inv.first_ts or '?')} → {escape(inv.last_ts or '?')}: "
            f"{inv.statements} statements in {len(inv.files)} file(s).</p>",
            "<h3>Read unmasked</h3>",
            _table(["column", "unmasked reads", "masked reads", "by", "under grants", "last"],
                   [[c.column, str(c.unmasked_reads), str(c.masked_reads), _top(c.users),
                     _top(c.grants), c.last or ""]
                    for c in sorted(inv.by_status("read unmasked"), key=lambda c: -c.unmasked_reads)],
                   numeric=(1, 2)),
            "<h3>Never read (candidates to stop collecting)</h3>",
            "<ul>" + "".join(f"<li>{escape(c.column)}</li>" for c in inv.by_status("never read"))
            + "</ul>",
            "<h3>Only ever read masked</h3>",
            "<ul>" + "".join(f"<li>{escape(c.column)} ({c.masked_reads} reads)</li>"
                             for c in inv.by_status("read masked only")) + "</ul>",
            "<h3>Grants never used</h3>",
            "<ul>" + "".join(f"<li>{escape(g.id)}"
                             + (f" (for {escape(g.subject)})" if g.subject else "") + "</li>"
                             for g in inv.unused_grants) + "</ul>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render(report: Report, path: str) -> str:
    """HTML for ``*.html``/``*.htm``, Markdown otherwise."""
    return render_html(report) if path.lower().endswith((".html", ".htm")) else render_markdown(report)
