"""The ``pgveil`` command."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_settings


def _check(args: argparse.Namespace) -> int:
    settings = _settings(args, "pgveil check")
    if settings is None:
        return 2
    print(f"{settings.path}: OK (listen {settings.proxy.listen}, "
          f"upstream {settings.upstream.host}:{settings.upstream.port} "
          f"sslmode={settings.upstream.sslmode})")
    return 0


def _settings(args: argparse.Namespace, prog: str):
    """The config file's settings, or None after printing what is wrong with it."""
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    from .serve import serve

    settings = _settings(args, "pgveil")
    return 2 if settings is None else serve(settings, workers=args.workers)


def _explain(args: argparse.Namespace) -> int:
    from .explain import explain

    settings = _settings(args, "pgveil explain")
    if settings is None:
        return 2
    return explain(settings, args.user, args.dbname, args.sql, search_path=args.search_path,
                   as_json=args.json)


def _demo(args: argparse.Namespace) -> int:
    from .demo import demo

    return demo(port=args.port, admin_port=args.admin_port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgveil", description=__doc__ and
                                "PostgreSQL proxy for data minimization with JIT approval")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the proxy")
    s.add_argument("-c", "--config", required=True, help="pgveil.toml")
    s.add_argument("--workers", type=int, default=1,
                   help="processes sharing the listen port (SO_REUSEPORT)")
    s.set_defaults(func=_serve)

    c = sub.add_parser("check", help="validate a config file")
    c.add_argument("-c", "--config", required=True)
    c.set_defaults(func=_check)

    e = sub.add_parser("explain", help="print the decision and rewritten SQL for a statement")
    e.add_argument("-c", "--config", required=True)
    e.add_argument("--user", required=True, help="the database user the statement runs as")
    e.add_argument("--dbname", default="postgres", help="database whose catalog to use")
    e.add_argument("--search-path", default='"$user", public')
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.add_argument("sql")
    e.set_defaults(func=_explain)

    from .audit.cli import register as register_audit
    from .discover.cli import register as register_discover

    from .jitcli import register as register_jit

    register_audit(sub)
    register_discover(sub)
    register_jit(sub)

    d = sub.add_parser("demo", help="embedded PostgreSQL + sample data + the proxy, until Ctrl-C")
    d.add_argument("--port", type=int, default=6432)
    d.add_argument("--admin-port", type=int, default=8433)
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
