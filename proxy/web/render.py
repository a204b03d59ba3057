"""HTML for the approver page: small functions returning strings, every value escaped.

No templates, no JavaScript: each dynamic value passes through :func:`e` (``html.escape``
with quotes) before it reaches the page, and URLs built from ids are percent-encoded.
"""

from __future__ import annotations

import datetime as _dt
import html
import time
from typing import Any, Iterable
from urllib.parse import quote

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;align-items:center;gap:16px}
header h1{font-size:17px;margin:0;flex:1}
header a,header .who{color:#dfe3ea}
header form{margin:0}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
h2{font-size:16px;margin:28px 0 10px}
.card{background:#fff;border:1px solid #d8dbe2;border-radius:6px;padding:12px 16px;margin-bottom:12px}
.card dl{display:grid;grid-template-columns:140px 1fr;gap:4px 12px;margin:0 0 10px}
.card dt{color:#5b6475}
.card dd{margin:0}
.actions{display:flex;gap:12px;flex-wrap:wrap;align-items:flex-end}
.actions form{display:flex;gap:6px;align-items:center;margin:0}
input[type=text],input[type=password],input[type=number]{padding:5px 8px;border:1px solid #b9bfcc;border-radius:4px;font:inherit}
input[type=number]{width:90px}
button{padding:5px 12px;border-radius:4px;border:1px solid #8a93a6;background:#fff;font:inherit;cursor:pointer}
button.approve{background:#1f7a3f;border-color:#1f7a3f;color:#fff}
button.deny,button.revoke{background:#a8322d;border-color:#a8322d;color:#fff}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d8dbe2}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e6e8ee;vertical-align:top}
th{background:#eceef3;font-weight:600}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
pre{background:#f1f3f7;padding:6px 8px;border-radius:4px;white-space:pre-wrap;margin:0}
.flash{padding:8px 12px;border-radius:4px;margin:12px 0}
.flash.ok{background:#e3f4e8;border:1px solid #9fd3ad}
.flash.error{background:#fbe7e6;border:1px solid #e3a19d}
.muted{color:#5b6475}
.exposure{font-weight:600}
.login{max-width:420px;margin:80px auto}
.login form{display:flex;flex-direction:column;gap:10px}
"""


def e(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def when(item: dict[str, Any], key: str) -> str:
    """An item's time field, preferring the ``<key>_epoch`` number when there is one."""
    value = item.get(f"{key}_epoch")
    return fmt_time(item.get(key) if value is None else value)


def expires(item: dict[str, Any], now: float) -> str:
    """'<time> (in 29 min)' for a grant's expiry."""
    text = when(item, "expires_at")
    at = item.get("expires_at_epoch")
    if isinstance(at, (int, float)) and at > now:
        text += f" (in {fmt_duration(at - now)})"
    return text


def url_id(value: Any) -> str:
    return quote(str(value), safe="")


def fmt_time(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = _dt.datetime.fromtimestamp(value, tz=_dt.timezone.utc)
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def fmt_duration(seconds: Any) -> str:
    if seconds is None or seconds == "":
        return "default"
    try:
        s = int(float(seconds))
    except (TypeError, ValueError):
        return str(seconds)
    if s <= 0:
        return "0 s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if s >= size:
            parts.append(f"{s // size} {unit}")
            s %= size
    return " ".join(parts[:2])


def fmt_rows(n: int | None) -> str:
    return "unknown" if n is None else f"≈ {n:,} row" + ("" if n == 1 else "s")


def what(item: dict[str, Any]) -> str:
    """'table (a, b)' or 'action X' — escaped HTML."""
    parts = []
    if item.get("action"):
        parts.append(f"action <code>{e(item['action'])}</code>")
    if item.get("table"):
        cols = item.get("columns") or ()
        if cols:
            col_text = f" ({e(', '.join(str(c) for c in cols))})"
        else:
            col_text = "" if item.get("action") else " (all sensitive columns)"
        parts.append(f"<code>{e(item['table'])}</code>{col_text}")
    return " on ".join(parts) if parts else "—"


def page(title: str, body: str, *, nonce: str, who: Any = None, csrf: str | None = None) -> str:
    head = ""
    if who is not None:
        head = (f'<span class="who" id="whoami">{e(who.name)} ({e(who.role)})</span>'
                f'<a href="/">Refresh</a>'
                f'<form method="post" action="/logout">{csrf_field(csrf)}'
                f'<button type="submit" id="logout">Sign out</button></form>')
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{e(title)}</title><style nonce=\"{e(nonce)}\">{STYLE}</style></head>"
        f"<body><header><h1>pgveil · access approvals</h1>{head}</header>"
        f"<main>{body}</main></body></html>\n")


def csrf_field(token: str | None) -> str:
    return f'<input type="hidden" name="csrf" value="{e(token)}">' if token else ""


def flashes(items: Iterable[tuple[str, str]]) -> str:
    return "".join(f'<div class="flash {e(kind)}" role="status">{e(text)}</div>'
                   for kind, text in items)


def login(*, login_csrf: str, error: str | None = None) -> str:
    err = f'<div class="flash error" role="alert">{e(error)}</div>' if error else ""
    return (
        '<div class="login card"><h2>Sign in</h2>'
        '<p class="muted">Paste your admin token (an approver or admin token from '
        '<code>[[admin.tokens]]</code>).</p>'
        f"{err}"
        '<form method="post" action="/login" autocomplete="off">'
        f"{csrf_field(login_csrf)}"
        '<input type="password" name="token" id="token" placeholder="token" required '
        'autofocus aria-label="token">'
        '<button type="submit" id="login">Sign in</button></form></div>')


def pending_card(r: dict[str, Any], rows: int | None, csrf: str) -> str:
    rid = url_id(r.get("id"))
    stmt = (f"<dt>Statement</dt><dd><pre>{e(r['statement'])}</pre></dd>"
            if r.get("statement") else "")
    rows_html = ""
    if r.get("table"):
        label = "Rows in table" if r.get("action") else "Rows exposed"
        rows_html = f'<dt>{label}</dt><dd class="exposure">{e(fmt_rows(rows))}</dd>'
    max_uses = r.get("max_uses")
    uses_html = ""
    if max_uses:
        uses_html = ("<dt>Uses</dt><dd>" + ("single use" if max_uses == 1
                                            else f"at most {e(max_uses)} statements") + "</dd>")
    return (
        f'<div class="card pending" id="req-{e(r.get("id"))}" data-id="{e(r.get("id"))}">'
        "<dl>"
        f"<dt>Request</dt><dd><code>{e(r.get('id'))}</code> "
        f"<span class=\"muted\">opened {e(when(r, 'created_at'))}</span></dd>"
        f"<dt>Database user</dt><dd><strong>{e(r.get('user'))}</strong></dd>"
        f"<dt>Asked by</dt><dd>{e(r.get('requested_by'))}</dd>"
        f"<dt>Access to</dt><dd>{what(r)}</dd>{stmt}"
        f"<dt>Reason</dt><dd class=\"reason\">{e(r.get('reason'))}</dd>"
        f"<dt>For</dt><dd>{e(fmt_duration(r.get('duration_s')))}</dd>"
        f"{rows_html}{uses_html}"
        "</dl><div class=\"actions\">"
        f'<form method="post" action="/requests/{rid}/approve">{csrf_field(csrf)}'
        '<label class="muted">max uses <input type="number" name="max_uses" min="1" '
        f'placeholder="{e(max_uses or "any")}"></label>'
        '<button type="submit" class="approve">Approve</button></form>'
        f'<form method="post" action="/requests/{rid}/deny">{csrf_field(csrf)}'
        '<input type="text" name="reason" placeholder="reason for denying" required '
        'maxlength="2000" aria-label="reason for denying">'
        '<button type="submit" class="deny">Deny</button></form>'
        "</div></div>")


def grants_table(grants: list[dict[str, Any]], *, csrf: str, can_revoke: bool,
                 now: float | None = None) -> str:
    now = time.time() if now is None else now
    if not grants:
        return '<p class="muted" id="no-grants">No active grants.</p>'
    rows = []
    for g in grants:
        uses = g.get("uses", 0)
        max_uses = g.get("max_uses")
        use_text = f"{uses} / {max_uses}" if max_uses else f"{uses}"
        revoke = ""
        if can_revoke:
            revoke = (f'<form method="post" action="/grants/{url_id(g.get("id"))}/revoke">'
                      f'{csrf_field(csrf)}<button type="submit" class="revoke">Revoke</button>'
                      "</form>")
        rows.append(
            f'<tr class="grant" id="grant-{e(g.get("id"))}" data-id="{e(g.get("id"))}">'
            f"<td><code>{e(g.get('id'))}</code></td><td>{e(g.get('user'))}</td>"
            f"<td>{what(g)}</td><td class=\"reason\">{e(g.get('reason'))}</td>"
            f"<td>{e(g.get('requested_by'))}</td><td>{e(g.get('approved_by'))}</td>"
            f"<td>{e(expires(g, now))}</td><td>{e(use_text)}</td>"
            f"<td>{revoke}</td></tr>")
    return ('<table id="grants"><thead><tr><th>Grant</th><th>User</th><th>Access to</th>'
            "<th>Reason</th><th>Asked by</th><th>Approved by</th><th>Expires</th>"
            "<th>Uses</th><th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


_USE_KEYS = ("at", "time", "ts", "grant_id", "user", "table", "columns", "action",
             "fingerprint", "statement", "session")


_USE_LABELS = {"at": "When", "time": "When", "ts": "When", "grant_id": "Grant", "user": "User",
               "table": "Table", "columns": "Columns", "action": "Action",
               "fingerprint": "Fingerprint", "statement": "Statement", "session": "Session",
               "instance": "Instance", "uses": "Uses so far"}


def uses_table(uses: list[dict[str, Any]]) -> str:
    if not uses:
        return '<p class="muted" id="no-uses">No grant used yet.</p>'
    keys = [k for k in _USE_KEYS if any(k in u for u in uses)]
    keys += sorted({k for u in uses for k in u} - set(keys))
    head = "".join(f"<th>{e(_USE_LABELS.get(k, k))}</th>" for k in keys)
    body = []
    for u in uses:
        cells = []
        for k in keys:
            v = u.get(k)
            if k in ("at", "time", "ts", "created_at", "used_at"):
                v = fmt_time(v)
            elif isinstance(v, (list, tuple)):
                v = ", ".join(map(str, v))
            cells.append(f"<td>{e(v if v is not None else '')}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="uses"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def decided_table(items: list[dict[str, Any]]) -> str:
    if not items:
        return '<p class="muted">Nothing decided yet.</p>'
    rows = "".join(
        f'<tr class="decided" data-id="{e(r.get("id"))}"><td><code>{e(r.get("id"))}</code></td>'
        f"<td>{e(r.get('state'))}</td><td>{e(r.get('user'))}</td><td>{what(r)}</td>"
        f"<td class=\"reason\">{e(r.get('reason'))}</td><td>{e(r.get('decided_by'))}</td>"
        f"<td>{e(r.get('deny_reason'))}</td><td>{e(when(r, 'decided_at'))}</td></tr>"
        for r in items)
    return ('<table id="decided"><thead><tr><th>Request</th><th>State</th><th>User</th>'
            "<th>Access to</th><th>Reason</th><th>Decided by</th><th>Deny reason</th>"
            "<th>When</th></tr></thead><tbody>" + rows + "</tbody></table>")


def dashboard(*, pending: list[tuple[dict[str, Any], int | None]], grants: list[dict[str, Any]],
              uses: list[dict[str, Any]], decided: list[dict[str, Any]], csrf: str,
              can_revoke: bool, flash_html: str, healthy: bool = True) -> str:
    warn = ("" if healthy else '<div class="flash error" role="alert">The state store is '
            "unavailable: decisions cannot be saved right now.</div>")
    cards = ("".join(pending_card(r, rows, csrf) for r, rows in pending)
             or '<p class="muted" id="no-pending">No pending requests.</p>')
    return (f"{warn}{flash_html}"
            f'<h2>Pending requests <span class="muted">({len(pending)})</span></h2>'
            f'<section id="pending">{cards}</section>'
            f'<h2>Active grants <span class="muted">({len(grants)})</span></h2>'
            f"<section>{grants_table(grants, csrf=csrf, can_revoke=can_revoke)}</section>"
            f"<h2>Recent grant uses</h2><section>{uses_table(uses)}</section>"
            f"<h2>Recently decided</h2><section>{decided_table(decided)}</section>")
