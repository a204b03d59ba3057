"""``pgveil audit verify | tail | search``.

``register(subparsers)`` adds the ``audit`` command to pgveil's argparse parser. Paths and
the key come from the arguments, else from ``-c pgveil.toml``'s ``[audit]`` table, else the
defaults (``pgveil-audit.jsonl``, and the key ``pgveil-audit.key`` next to the log).
Exit status: 0 fine, 1 verification failed, 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from .keys import AuditKeyError, load_key
from .settings import AuditConfigError, AuditSettings, audit_settings_from_dict


def _settings(args: argparse.Namespace) -> AuditSettings:
    if not getattr(args, "config", None):
        return AuditSettings()
    with open(args.config, "rb") as f:
        raw = tomllib.load(f)
    return audit_settings_from_dict(raw.get("audit", {}), args.config)


def _target(args: argparse.Namespace, s: AuditSettings) -> str:
    if args.path:
        return str(args.path)
    if s.sink == "postgresql" and s.url and args.command_audit == "verify":
        return s.url
    return s.path


def _key_file(args: argparse.Namespace, s: AuditSettings, target: str) -> str:
    if args.key:
        return str(args.key)
    if getattr(args, "config", None):
        return s.key_file
    if target.startswith(("postgresql://", "postgres://")):
        return "pgveil-audit.key"
    return str(Path(target).parent / "pgveil-audit.key")


def _verify(args: argparse.Namespace) -> int:
    from .verify import verify_files, verify_postgres

    s = _settings(args)
    target = _target(args, s)
    key = load_key(_key_file(args, s, target))
    if target.startswith(("postgresql://", "postgres://")):
        reports = verify_postgres(target, key, args.instance, allow_pruned=args.allow_pruned)
        if not reports:
            print("FAIL no audit records in the table", file=sys.stderr)
            return 1
        items = list(reports.items())
    else:
        items = [(target, verify_files(target, key, require_head=not args.no_head,
                                       allow_pruned=args.allow_pruned))]
    status = 0
    for name, report in items:
        print(f"{name}: {report.summary()}")
        for note in report.notes:
            print(f"  note: {note}")
        if not report.ok:
            status = 1
    return status


def _color(out: Any) -> bool:
    return hasattr(out, "isatty") and out.isatty() and not os.environ.get("NO_COLOR")


def _tail(args: argparse.Namespace) -> int:
    from .reader import follow, format_record, last_records
    from .records import parse

    s = _settings(args)
    target = _target(args, s)
    color = _color(sys.stdout)
    for line in last_records(target, args.n):
        print(line.decode(errors="replace") if args.json else format_record(parse(line), line, color=color))
    sys.stdout.flush()
    if args.follow:
        try:
            follow(target, sys.stdout, as_json=args.json, color=color)
        except KeyboardInterrupt:
            pass
    return 0


def _search(args: argparse.Namespace) -> int:
    from .reader import Filter, format_record, parse_since, search

    s = _settings(args)
    target = _target(args, s)
    try:
        flt = Filter(
            user=args.user, table=args.table, decision=args.decision, session=args.session,
            fingerprint=args.fingerprint, type=args.type, text=args.text,
            since=parse_since(args.since) if args.since else None,
            until=parse_since(args.until) if args.until else None,
        )
    except ValueError as exc:
        print(f"pgveil audit search: {exc}", file=sys.stderr)
        return 2
    color = _color(sys.stdout)
    count = 0
    for rec, raw in search(target, flt):
        print(raw.decode(errors="replace") if args.json else format_record(rec, raw, color=color))
        count += rec.get("type") != "complete"
    if not args.json:
        print(f"-- {count} matching record(s)", file=sys.stderr)
    return 0


def _run(func: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except (AuditConfigError, AuditKeyError, tomllib.TOMLDecodeError) as exc:
            print(f"pgveil audit: {exc}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            return 0
        except OSError as exc:
            print(f"pgveil audit: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
            return 2
    return wrapped


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``audit verify|tail|search`` to pgveil's subcommands; returns the parser."""
    audit: argparse.ArgumentParser = subparsers.add_parser("audit", help="verify and read the audit log")
    sub = audit.add_subparsers(dest="command_audit", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("path", nargs="?", help="the audit log (default: from -c, else pgveil-audit.jsonl)")
        p.add_argument("-c", "--config", help="pgveil.toml, for the [audit] settings")

    v = sub.add_parser("verify", help="check the hash chain and signatures; report the first bad record")
    common(v)
    v.add_argument("--key", help="the HMAC key file (default: from -c, else next to the log)")
    v.add_argument("--no-head", action="store_true",
                   help="do not require the head file (logs captured from the stdout sink)")
    v.add_argument("--allow-pruned", action="store_true",
                   help="accept a chain whose oldest files were removed on purpose")
    v.add_argument("--instance", help="with a postgresql:// URL: only this instance's chain")
    v.set_defaults(func=_run(_verify))

    t = sub.add_parser("tail", help="print the last records (and follow with -f)")
    common(t)
    t.add_argument("-n", type=int, default=20, help="how many records (default 20)")
    t.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    t.add_argument("--json", action="store_true", help="raw JSON lines")
    t.set_defaults(func=_run(_tail))

    s = sub.add_parser("search", help="find records by user, table, time, decision…")
    common(s)
    s.add_argument("--user")
    s.add_argument("--table", help="schema.table or table")
    s.add_argument("--since", help="1h, 30m, 2d or an ISO time")
    s.add_argument("--until", help="same forms as --since")
    s.add_argument("--decision", choices=["forward", "rewrite", "deny", "hold"])
    s.add_argument("--session")
    s.add_argument("--fingerprint")
    s.add_argument("--type", choices=["statement", "intent", "event"],
                   help="statement records (intent is the same), or events")
    s.add_argument("--text", help="substring of the normalized statement")
    s.add_argument("--json", action="store_true", help="raw JSON lines")
    s.set_defaults(func=_run(_search))
    return audit


def main(argv: list[str] | None = None) -> int:
    """Run ``audit …`` on its own (``python -m proxy.audit.cli verify …``)."""
    parser = argparse.ArgumentParser(prog="pgveil")
    register(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["audit"]:
        argv.insert(0, "audit")
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
