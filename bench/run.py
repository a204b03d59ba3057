"""The bench's command line, and the loop that runs pgbench against every target.

    python -m bench                  # full run: -T 10, 3 rounds, about 10 minutes
    python -m bench --quick          # -T 3, smoke-level numbers
    python -m bench --markdown       # the table for bench/README.md
    python -m bench --report bench/results/latest.json --markdown   # re-print a run

Order of events: start (or connect to) PostgreSQL, ``pgbench -i -s SCALE`` once, start every
target once, warm each up, then for each workload × mode × clients run the targets in turn
(direct, pgbouncer, pgveil, direct, …) ``--rounds`` times and keep the median. Progress goes
to stderr, the table to stdout, the full record (every run) to a JSON file. Everything the
bench starts is stopped at the end, on errors and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict
from pathlib import Path

from bench import machine, pgbench, report
from bench.pgbench import MODES, WORKLOADS, Workload
from bench.server import Database, EmbeddedServer, from_dsn
from bench.targets import (
    OPTIONAL_VARIANTS,
    PGVEIL_VARIANTS,
    Direct,
    Pgbouncer,
    Pgveil,
    Target,
    deep_merge,
    pgbouncer_binary,
    pgbouncer_version,
    pgveil_available,
)

RESULTS = Path(__file__).resolve().parent / "results"


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _csv(kind: type = str):
    def parse(text: str) -> list:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="pgbench against PostgreSQL directly, pgbouncer and pgveil, side by side.",
    )
    src = p.add_argument_group("database")
    src.add_argument(
        "--dsn",
        default=os.environ.get("PGVEIL_BENCH_DSN"),
        help="use this server instead of an embedded one (env PGVEIL_BENCH_DSN); "
        "pgbench -i will (re)create the pgbench_* tables in its database",
    )
    src.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    src.add_argument(
        "--skip-init", action="store_true", help="don't run pgbench -i (tables already exist)"
    )

    run = p.add_argument_group("runs")
    run.add_argument("-T", "--duration", type=int, help="seconds per pgbench run (default 10)")
    run.add_argument("--quick", action="store_true", help="-T 3 and a 1 s warm-up")
    run.add_argument("--rounds", type=int, default=3, help="runs per target per cell (median)")
    run.add_argument("--warmup", type=int, help="seconds of warm-up per target (default 2)")
    run.add_argument(
        "--modes", type=_csv(), default=list(MODES), help="query modes (default all three)"
    )
    run.add_argument("--clients", type=_csv(int), default=[1, 8], help="client counts (1,8)")
    run.add_argument(
        "--threads", type=int, help="pgbench -j (default: min(clients, usable CPUs))"
    )
    run.add_argument(
        "--workload",
        action="append",
        choices=sorted(WORKLOADS),
        help="built-in workload (repeatable; default select-only)",
    )
    run.add_argument(
        "--script",
        action="append",
        type=Path,
        default=[],
        help="a pgbench custom script as an extra workload (repeatable; :scale is set)",
    )

    tg = p.add_argument_group("targets")
    tg.add_argument(
        "--targets",
        type=_csv(),
        help="which targets, in run order (default: direct,pgbouncer,pgveil and any variants)",
    )
    tg.add_argument("--workers", type=int, help="pass --workers N to pgveil serve")
    tg.add_argument(
        "--pgveil-variant",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="an extra pgveil target NAME whose config FILE (TOML) is merged over the base",
    )
    tg.add_argument(
        "--pgbouncer-transaction",
        action="store_true",
        help="also run pgbouncer with pool_mode=transaction (target pgbouncer-txn)",
    )

    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, help="where to write results (default bench/results/)")
    out.add_argument("--markdown", action="store_true", help="print a markdown table")
    out.add_argument(
        "--report", type=Path, metavar="JSON", help="print the table of an earlier run and exit"
    )
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 3 if args.quick else 10
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    if args.rounds < 1 or args.duration < 1:
        p.error("--rounds and --duration must be at least 1")
    return args


def build_workloads(args: argparse.Namespace) -> list[Workload]:
    names = args.workload or ([] if args.script else ["select-only"])
    return [WORKLOADS[n] for n in names] + [
        pgbench.script_workload(path, args.scale) for path in args.script
    ]


def build_targets(args: argparse.Namespace, workloads: list[Workload]) -> tuple[list[Target], dict]:
    """All requested targets, and {name: reason} for those that cannot run here."""
    workload_config: dict = {}
    for w in workloads:
        workload_config = deep_merge(workload_config, w.pgveil_config)
    pool = max(args.clients) + 4
    known: dict[str, Target] = {
        "direct": Direct(),
        "pgbouncer": Pgbouncer(pool_size=pool),
    }
    if args.pgbouncer_transaction:
        known["pgbouncer-txn"] = Pgbouncer("pgbouncer-txn", "transaction", pool)
    for name, cfg in PGVEIL_VARIANTS.items():
        cfg = dict(cfg)
        workers = cfg.pop("_workers", None) or args.workers
        known[name] = Pgveil(name, deep_merge(workload_config, cfg), workers)
    for spec in args.pgveil_variant:
        name, sep, file = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"--pgveil-variant wants NAME=FILE, got {spec!r}")
        with open(file, "rb") as f:
            known[name] = Pgveil(name, deep_merge(workload_config, tomllib.load(f)), args.workers)

    names = args.targets or [n for n in known if n not in OPTIONAL_VARIANTS]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown target(s) {unknown}; known: {', '.join(known)}")
    skipped: dict[str, str] = {}
    if "pgbouncer" in names and pgbouncer_binary() is None:
        skipped["pgbouncer"] = "pgbouncer is not installed (apt-get install pgbouncer)"
    if "pgbouncer-txn" in names and pgbouncer_binary() is None:
        skipped["pgbouncer-txn"] = "pgbouncer is not installed"
    why = pgveil_available()
    for n in names:
        if why and isinstance(known[n], Pgveil):
            skipped[n] = why
    return [known[n] for n in names if n not in skipped], skipped


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        results = json.loads(args.report.read_text())
        report.summarize(results)
        print(report.markdown(results) if args.markdown else report.text_table(results))
        return 0

    workloads = build_workloads(args)
    targets, skipped = build_targets(args, workloads)
    for name, why in skipped.items():
        say(f"skipping target {name}: {why}")
    if not targets:
        say("no target can run")
        return 2
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    results: dict = {
        "started": started.isoformat(),
        "params": {
            "duration": args.duration,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "scale": args.scale,
            "modes": args.modes,
            "clients": args.clients,
            "threads": args.threads,
            "workers": args.workers,
            "workloads": [{"name": w.name, "description": w.description} for w in workloads],
            "external_dsn": bool(args.dsn),
        },
        "skipped": skipped,
        "cells": [],
    }
    interrupted = False
    try:
        with contextlib.ExitStack() as stack:
            if args.dsn:
                db = from_dsn(args.dsn)
                say(f"using server {db.host}:{db.port} database {db.dbname}")
            else:
                say("starting embedded PostgreSQL")
                db = stack.enter_context(EmbeddedServer())
                say(f"PostgreSQL on {db.host}:{db.port}")
            pg_version = db.version()
            results["machine"] = machine.describe(pg_version, pgbouncer_version())
            workdir = Path(tempfile.mkdtemp(prefix="pgveil-bench-"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)

            if not args.skip_init:
                say(f"pgbench -i -s {args.scale}")
                say(f"initialized in {db.pgbench_init(args.scale):.1f} s")
            for w in workloads:
                if w.setup_sql:
                    say(f"setting up workload {w.name}")
                    db.psql(w.setup_sql)

            running = []
            for t in targets:
                say(f"starting target {t.name}")
                stack.callback(t.stop)
                try:
                    t.start(db, workdir)
                except Exception as e:  # a target that will not start is reported, not fatal
                    skipped[t.name] = f"did not start: {e}"
                    say(f"skipping target {t.name}: {e}")
                    t.stop()
                    continue
                running.append(t)
            results["targets"] = [t.describe() for t in running]
            if not running:
                say("no target started")
                return 2
            interrupted = measure(args, db, workloads, running, results)
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted; everything started has been stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)

    if not results["cells"]:
        return 130 if interrupted else 1
    results["interrupted"] = interrupted
    report.summarize(results)
    path = args.json or RESULTS / f"{started.strftime('%Y%m%d-%H%M%S')}.json"
    report.write_json(results, path)
    if args.json is None:
        report.write_json(results, RESULTS / "latest.json")
    say(f"results written to {path}")
    print(report.markdown(results) if args.markdown else report.text_table(results), flush=True)
    if not args.markdown:
        for note in report.notes(results):
            say(note)
    return 130 if interrupted else 0


def measure(
    args: argparse.Namespace,
    db: Database,
    workloads: list[Workload],
    targets: list[Target],
    results: dict,
) -> bool:
    """Warm up, then run every cell; returns True if interrupted (partial results kept)."""
    cpus = machine.usable_cpus()
    if args.warmup:
        for t in targets:
            say(f"warm-up {t.name} ({args.warmup} s)")
            argv = pgbench.command(t.dsn(db), workloads[0], "simple", 1, 1, args.warmup)
            res = pgbench.run(argv, args.warmup)
            if not res.ok:
                say(f"warm-up of {t.name} failed: {res.error}")

    plan = []
    for w in workloads:
        for mode in args.modes:
            if mode not in w.modes:
                continue
            for clients in args.clients:
                plan.append((w, mode, clients))
    total = sum(
        args.rounds * sum(1 for t in targets if t.supports(mode)) for _, mode, _ in plan
    )
    k = 0
    t0 = time.monotonic()
    for w, mode, clients in plan:
        threads = args.threads or pgbench.default_threads(clients, cpus)
        cell = {
            "workload": w.name,
            "mode": mode,
            "clients": clients,
            "threads": threads,
            "runs": {t.name: [] for t in targets if t.supports(mode)},
            "skipped": {
                t.name: f"{t.name} does not support {mode} mode"
                for t in targets
                if not t.supports(mode)
            },
        }
        results["cells"].append(cell)
        for rnd in range(1, args.rounds + 1):
            for t in targets:
                if not t.supports(mode):
                    continue
                k += 1
                label = f"[{k}/{total}] {w.name} {mode} c={clients} j={threads} round {rnd}/{args.rounds} {t.name}"
                service = getattr(t, "service", None)
                if service is not None and not service.alive():
                    res = pgbench.RunResult(ok=False, error=f"{t.name} is no longer running")
                else:
                    argv = pgbench.command(t.dsn(db), w, mode, clients, threads, args.duration)
                    try:
                        res = pgbench.run(argv, args.duration)
                    except KeyboardInterrupt:
                        say("interrupted; reporting what was measured so far")
                        return True
                cell["runs"][t.name].append(asdict(res))
                elapsed = time.monotonic() - t0
                eta = elapsed / k * (total - k)
                if res.ok:
                    say(f"{label}: {res.tps:.0f} tps, {res.latency_ms:.3f} ms  (eta {eta:.0f} s)")
                else:
                    say(f"{label}: FAILED {res.error}")
    return False
