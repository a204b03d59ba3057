"""Micro-benchmark of the audit writer: records per second through a real file sink.

``sessions`` concurrent tasks each write intent + completion pairs, like proxy sessions.
In ``batch`` mode they never wait for the disk; in ``always`` mode each awaits
``durable(rid)`` before "forwarding", so the figure shows what group commit buys.

    python -m proxy.audit.bench_writer [--records 200000] [--sessions 50] [--fsync always]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .normalize import normalize_sql
from .records import StatementIntent, StatementResult
from .settings import AuditSettings
from .writer import AuditLog


@dataclass
class BenchResult:
    records: int
    seconds: float
    batches: int
    fsync: str

    @property
    def per_second(self) -> float:
        return self.records / self.seconds

    def __str__(self) -> str:
        return (f"fsync={self.fsync}: {self.records} records in {self.seconds:.2f} s = "
                f"{self.per_second:,.0f} records/s, {self.batches} batches "
                f"({self.records / max(self.batches, 1):.0f} records per fsync)")


async def bench(records: int = 100_000, sessions: int = 50, fsync: str = "batch",
                folder: str | None = None) -> BenchResult:
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        settings = AuditSettings(path=str(Path(tmp) / "bench.jsonl"),
                                 key_file=str(Path(tmp) / "bench.key"), fsync=fsync,
                                 instance="bench")
        log = AuditLog(settings)
        await log.start()
        normalized, fp = normalize_sql("SELECT abalance FROM pgbench_accounts WHERE aid = 42")
        pairs = records // 2 // sessions

        async def session(n: int) -> None:
            intent = StatementIntent(session=f"s{n}", user="bench", database="bench",
                                     fingerprint=fp, normalized=normalized, decision="forward",
                                     kind="select", tables=["public.pgbench_accounts"],
                                     client="127.0.0.1:40000", application_name="pgbench")
            fields = intent.to_fields()
            done = StatementResult(rows=1, duration_ms=0.123, sqlstate="00000").to_fields()
            for _ in range(pairs):
                rid = log.intent(fields)
                if log.wait_before_forward:
                    await log.durable(rid)
                log.complete(rid, done)
                if not log.wait_before_forward and rid % 64 == 0:
                    await asyncio.sleep(0)  # let the writer and other sessions run

        start = time.perf_counter()
        batches0 = log.batches
        await asyncio.gather(*(session(n) for n in range(sessions)))
        await log.flush()
        elapsed = time.perf_counter() - start
        result = BenchResult(pairs * sessions * 2, elapsed, log.batches - batches0, fsync)
        await log.close()
        return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--fsync", choices=["batch", "always", "both"], default="both")
    p.add_argument("--dir", help="folder on the disk to measure (default: the temp folder)")
    args = p.parse_args(argv)
    for mode in (["batch", "always"] if args.fsync == "both" else [args.fsync]):
        print(asyncio.run(bench(args.records, args.sessions, mode, args.dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
