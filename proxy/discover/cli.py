"""``pgveil discover DSN``: scan, propose a policy, report, and cross-check the audit log.

Output streams: progress on stderr; the summary table on stdout. Without ``--out`` the
proposed ``[policy]`` fragment follows the summary on stdout; with ``--out FILE`` a complete
``pgveil.toml`` is written there (``--out -`` writes it to stdout and moves the summary to
stderr, so the output can be piped). ``--report`` writes Markdown, or HTML for ``.html``.

The lead wires it in with one line in ``proxy/cli.py``: ``discover_cli.register(sub)``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

DESCRIPTION = ("Find personal data and secrets by sampling every table, propose a minimal "
               "masking policy, and (with --audit) show which sensitive columns are read "
               "unmasked, never read, and which grants were never used.")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``discover`` subcommand to an ``argparse`` subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "discover", help="find sensitive data and propose a policy", description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dsn", help="libpq connection string or URI of the database to scan")
    p.add_argument("--schema", action="append", dest="schemas", metavar="NAME",
                   help="scan only this schema (repeatable; default: all user schemas)")
    p.add_argument("--sample-rows", type=int, default=1000, metavar="N",
                   help="rows sampled per table (default 1000)")
    p.add_argument("--out", metavar="FILE",
                   help="write a complete pgveil.toml with the proposed policy ('-': stdout)")
    p.add_argument("--report", metavar="FILE", help="write a report: .md or .html")
    p.add_argument("--audit", metavar="PATH",
                   help="pgveil audit log (JSON lines; rotations PATH.1 … are read too)")
    p.add_argument("--statement-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="per-statement timeout while sampling (default 30)")
    p.add_argument("--min-confidence", type=float, default=0.5, metavar="P",
                   help="report columns with at least this confidence (default 0.5)")
    p.add_argument("--exempt-user", action="append", dest="exempt_users", metavar="USER",
                   help="user exempt from masking in the proposal (default: postgres)")


def run(args: argparse.Namespace) -> int:
    """Execute ``pgveil discover``; returns the process exit code."""
    import psycopg

    from .console import ConsoleObserver, summary_table
    from .inventory import iter_sensitive, load_inventory
    from .proposal import DEFAULT_EXEMPT_USERS, render_config, render_policy
    from .report import Report, render
    from .scan import scan

    err = _console(stderr=True)
    to_stdout = args.out == "-"
    out = err if to_stdout else _console(stderr=False)
    if args.sample_rows < 1:
        err.print("pgveil discover: --sample-rows must be at least 1", markup=False)
        return 2
    exempt = tuple(args.exempt_users or DEFAULT_EXEMPT_USERS)
    try:
        with ConsoleObserver(err) as observer:
            result = scan(args.dsn, schemas=args.schemas, sample_rows=args.sample_rows,
                          statement_timeout=args.statement_timeout,
                          threshold=args.min_confidence, observer=observer)
    except psycopg.OperationalError as exc:
        err.print(f"pgveil discover: cannot connect: {str(exc).strip()}", markup=False)
        return 2
    findings = result.findings
    out.print(summary_table(findings, f"Sensitive columns in {result.database} "
                                      f"({len(result.tables)} tables, {result.seconds:.1f}s)"))
    policy = render_policy(findings, exempt_users=exempt)
    if args.out:
        config = render_config(args.dsn, findings, database=result.database, exempt_users=exempt)
        if to_stdout:
            sys.stdout.write(config)
        else:
            Path(args.out).write_text(config)
            err.print(f"wrote {args.out}", markup=False, highlight=False)
    else:
        out.print("\n# Proposed policy (merge into pgveil.toml, or use --out FILE):",
                  markup=False, highlight=False)
        out.print(policy, markup=False, highlight=False, soft_wrap=True)
    inventory = None
    if args.audit:
        try:
            inventory = load_inventory(args.audit, iter_sensitive(findings))
        except (OSError, FileNotFoundError) as exc:
            err.print(f"pgveil discover: --audit: {exc}", markup=False)
            return 2
        _print_inventory(out, inventory)
    if args.report:
        Path(args.report).write_text(render(Report(result, policy, inventory), args.report))
        err.print(f"wrote {args.report}", markup=False, highlight=False)
    return 0


def _console(stderr: bool) -> Console:
    """A console; when it is not a terminal (a log, a pipe) use a wide fixed width."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=160)
    return console


def _print_inventory(console: Console, inv: Any) -> None:
    from rich.table import Table

    t = Table(title=f"Data inventory ({inv.statements} audited statements, "
                    f"{inv.first_ts or '?'} → {inv.last_ts or '?'})")
    for name in ("column", "status", "unmasked", "masked", "by"):
        t.add_column(name)
    for c in sorted(inv.columns.values(), key=lambda c: (-c.unmasked_reads, c.column)):
        by = ", ".join(u for u, _ in c.users.most_common(3))
        t.add_row(c.column, c.status, str(c.unmasked_reads), str(c.masked_reads), by)
    console.print(t)
    unused = [g.id for g in inv.unused_grants]
    console.print(f"grants never used: {', '.join(unused) if unused else 'none'}",
                  markup=False, highlight=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgveil")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m proxy.discover discover DSN …``) and for tests."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
