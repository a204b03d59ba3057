"""``pgveil requests | request | approve | deny | grants | grant | revoke``: the admin API from a shell.

Each subcommand is one HTTP call to the admin listener (``--url``, default
``$PGVEIL_ADMIN_URL`` or ``http://127.0.0.1:8433``) with ``Authorization: Bearer`` from
``--token`` or ``$PGVEIL_TOKEN``. Output is a readable table, or the API's JSON with
``--json``. A failed call prints the API's message (and hint) to stderr and exits 1;
an unreachable listener or a missing token exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any, Sequence
from urllib.parse import quote, urlencode

DEFAULT_URL = "http://127.0.0.1:8433"
STATES = ("pending", "approved", "denied", "cancelled", "expired")


class ApiError(Exception):
    def __init__(self, status: int, message: str, hint: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.hint, self.code = status, message, hint, code


class Client:
    """A minimal synchronous admin-API client (urllib; no extra dependency)."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Accept": "application/json", "X-Pgveil-Client": "cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)
                raise ApiError(exc.code, err.get("message") or exc.reason, err.get("hint"),
                               err.get("error")) from None
            except (ValueError, AttributeError):
                raise ApiError(exc.code, f"HTTP {exc.code} {exc.reason}") from None
        return json.loads(raw) if raw.strip() else None


# -- output ---------------------------------------------------------------------------------

def _time(item: dict[str, Any], key: str) -> str:
    v = item.get(f"{key}_epoch", item.get(key))
    if v is None or v == "":
        return "-"
    if isinstance(v, (int, float)):
        return datetime.fromtimestamp(v, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(v)


def _dur(seconds: Any) -> str:
    try:
        s = int(seconds)
    except (TypeError, ValueError):
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


def _what(item: dict[str, Any]) -> str:
    if item.get("action"):
        return f"action {item['action']}" + (f" on {item['table']}" if item.get("table") else "")
    cols = item.get("columns") or []
    return f"{item.get('table') or '-'}" + (f" ({', '.join(cols)})" if cols else "")


def _clip(text: Any, width: int = 40) -> str:
    s = "-" if text is None or text == "" else " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def format_requests(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no requests"
    rows = [[str(r.get("id")), str(r.get("state")), str(r.get("user")), _clip(_what(r), 40),
             _dur(r.get("duration_s")), _clip(r.get("reason"), 40), str(r.get("requested_by")),
             _time(r, "created_at")] for r in items]
    return table(rows, ["ID", "STATE", "USER", "ACCESS", "FOR", "REASON", "ASKED BY", "CREATED"])


def format_grants(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no active grants"
    rows = []
    for g in items:
        uses = f"{g.get('uses', 0)}/{g['max_uses']}" if g.get("max_uses") else str(g.get("uses", 0))
        rows.append([str(g.get("id")), str(g.get("user")), _clip(_what(g), 40),
                     _clip(g.get("reason"), 30), str(g.get("approved_by") or "-"),
                     _time(g, "expires_at"), uses,
                     "revoked" if g.get("revoked_at") else "live"])
    return table(rows, ["ID", "USER", "ACCESS", "REASON", "APPROVED BY", "EXPIRES", "USES",
                        "STATUS"])


def format_request(r: dict[str, Any]) -> str:
    lines = [f"request {r.get('id')}: {r.get('state')}",
             f"  user:      {r.get('user')}", f"  access:    {_what(r)}",
             f"  for:       {_dur(r.get('duration_s'))}", f"  reason:    {r.get('reason')}"]
    if r.get("statement"):
        lines.append(f"  statement: {r['statement']}")
    if r.get("decided_by"):
        lines.append(f"  decided by {r['decided_by']} at {_time(r, 'decided_at')}")
    if r.get("deny_reason"):
        lines.append(f"  denied because: {r['deny_reason']}")
    if r.get("grant_id"):
        lines.append(f"  grant:     {r['grant_id']}")
    return "\n".join(lines)


def format_grant(g: dict[str, Any]) -> str:
    status = "revoked" if g.get("revoked_at") else "live"
    return (f"grant {g.get('id')}: {status}\n  user:      {g.get('user')}\n"
            f"  access:    {_what(g)}\n  expires:   {_time(g, 'expires_at')}\n"
            f"  reason:    {g.get('reason')}")


# -- commands ---------------------------------------------------------------------------------

def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.token)


def _cmd_requests(args: argparse.Namespace) -> Any:
    q = {k: v for k, v in (("state", args.state), ("user", args.user)) if v}
    items = _client(args).call("GET", "/api/requests" + (f"?{urlencode(q)}" if q else ""))
    return items, format_requests(items)


def _cmd_request(args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"user": args.user, "reason": args.reason}
    if args.table:
        body["table"] = args.table
    if args.columns:
        body["columns"] = [c.strip() for c in args.columns.split(",") if c.strip()]
    if args.action:
        body["action"] = args.action
    if args.duration:
        body["duration"] = args.duration
    r = _client(args).call("POST", "/api/requests", body)
    return r, f"request {r.get('id')} is {r.get('state')}"


def _cmd_approve(args: argparse.Namespace) -> Any:
    body = {"max_uses": args.max_uses} if args.max_uses is not None else {}
    r = _client(args).call("POST", f"/api/requests/{quote(args.id, safe='')}/approve", body)
    text = f"approved request {r.get('id')}"
    if r.get("grant_id"):
        text += f" (grant {r['grant_id']})"
    return r, text


def _cmd_deny(args: argparse.Namespace) -> Any:
    r = _client(args).call("POST", f"/api/requests/{quote(args.id, safe='')}/deny",
                           {"reason": args.reason})
    return r, f"denied request {r.get('id')}"


def _cmd_grants(args: argparse.Namespace) -> Any:
    q = {k: v for k, v in (("all", "1" if args.all else None), ("user", args.user)) if v}
    items = _client(args).call("GET", "/api/grants" + (f"?{urlencode(q)}" if q else ""))
    return items, format_grants(items)


def _cmd_grant(args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"user": args.user, "reason": args.reason, "duration": args.duration}
    if args.table:
        body["table"] = args.table
    if args.columns:
        body["columns"] = [c.strip() for c in args.columns.split(",") if c.strip()]
    if args.action:
        body["action"] = args.action
    if args.max_uses is not None:
        body["max_uses"] = args.max_uses
    g = _client(args).call("POST", "/api/grants", body)
    return g, f"granted {g.get('id')}: {_what(g)} to {g.get('user')} until {_time(g, 'expires_at')}"


def _cmd_revoke(args: argparse.Namespace) -> Any:
    g = _client(args).call("DELETE", f"/api/grants/{quote(args.id, safe='')}")
    return g, f"revoked grant {g.get('id')}"


def _run(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        prog = f"pgveil {args.command}" if getattr(args, "command", None) else "pgveil"
        if not args.token:
            print(f"{prog}: no token: pass --token or set PGVEIL_TOKEN", file=sys.stderr)
            return 2
        try:
            data, text = handler(args)
        except ApiError as exc:
            print(f"{prog}: {exc.message}", file=sys.stderr)
            if exc.hint:
                print(f"hint: {exc.hint}", file=sys.stderr)
            return 1
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            print(f"{prog}: cannot reach the admin API at {args.url}: {reason}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            print(text)
        return 0
    return run


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("admin API")
    g.add_argument("--url", default=os.environ.get("PGVEIL_ADMIN_URL", DEFAULT_URL),
                   help="admin listener URL (env PGVEIL_ADMIN_URL; default %(default)s)")
    g.add_argument("--token", default=os.environ.get("PGVEIL_TOKEN"),
                   help="bearer token (env PGVEIL_TOKEN)")
    g.add_argument("--json", action="store_true", help="print the API's JSON")
    return p


def register(subparsers: Any) -> None:
    """Add the JIT subcommands to the ``pgveil`` parser's subparsers."""
    common = [_common()]

    p = subparsers.add_parser("requests", parents=common, help="list access requests")
    p.add_argument("--state", choices=STATES, help="only requests in this state")
    p.add_argument("--user", help="only requests for this database user")
    p.set_defaults(func=_run(_cmd_requests))

    p = subparsers.add_parser("request", parents=common,
                              help="ask for access to columns of a table (or an action)")
    p.add_argument("--user", required=True, help="the database user the access is for")
    p.add_argument("--table", help="schema-qualified table, e.g. public.customers")
    p.add_argument("--columns", help="comma-separated column names")
    p.add_argument("--action", help="an action rule name instead of table columns")
    p.add_argument("--duration", help="e.g. '30 minutes' (default: the service's default)")
    p.add_argument("--reason", required=True, help="why (a ticket number helps)")
    p.set_defaults(func=_run(_cmd_request))

    p = subparsers.add_parser("approve", parents=common, help="approve a pending request")
    p.add_argument("id")
    p.add_argument("--max-uses", type=_positive, help="limit the grant to N statements")
    p.set_defaults(func=_run(_cmd_approve))

    p = subparsers.add_parser("deny", parents=common, help="deny a pending request")
    p.add_argument("id")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=_run(_cmd_deny))

    p = subparsers.add_parser("grants", parents=common, help="list grants (live ones by default)")
    p.add_argument("--all", action="store_true", help="include expired and revoked grants")
    p.add_argument("--user", help="only grants for this database user")
    p.set_defaults(func=_run(_cmd_grants))

    p = subparsers.add_parser("grant", parents=common, help="grant access directly (admin)")
    p.add_argument("--user", required=True)
    p.add_argument("--table")
    p.add_argument("--columns")
    p.add_argument("--action")
    p.add_argument("--duration", required=True)
    p.add_argument("--reason", required=True)
    p.add_argument("--max-uses", type=_positive)
    p.set_defaults(func=_run(_cmd_grant))

    p = subparsers.add_parser("revoke", parents=common, help="revoke a grant (admin)")
    p.add_argument("id")
    p.set_defaults(func=_run(_cmd_revoke))


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (``python -m proxy.jitcli``); ``pgveil`` wires :func:`register` in."""
    parser = argparse.ArgumentParser(prog="pgveil")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
