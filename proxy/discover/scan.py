"""Read the catalog and a bounded sample of every table, then classify each column.

The scan is built to be harmless on a production database:

* one connection, ``default_transaction_read_only = on``, and every table read in its own
  ``BEGIN READ ONLY`` transaction, so a failure (permission, timeout) costs one table;
* ``statement_timeout`` and ``lock_timeout`` on every statement;
* never more than ``sample_rows`` rows per table: small tables (estimated ≤ 2 × sample) are
  read with ``LIMIT``; medium ones with ``TABLESAMPLE BERNOULLI`` (row-level, reads every
  page); large ones with ``TABLESAMPLE SYSTEM`` (page-level, reads only the sampled pages),
  oversampled and retried with a bigger percentage when the sample comes back short. The
  estimate is ``pg_class.reltuples``; when the table was never analysed, a
  ``LIMIT``-bounded count decides whether it is small. Samples are ``REPEATABLE`` so two
  runs on the same data agree;
* only columns a detector can use are read (text, numbers, dates, ``inet``, JSON), each cast
  to text and cut to 4 kB in the query.

Sampled values live only inside :func:`scan_table` while its columns are classified; what
leaves is :class:`~policy.detectors.ColumnFinding` aggregates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import psycopg
from psycopg import sql

from policy.detectors import DEFAULT_THRESHOLD, ColumnFinding, TypeClass, classify_column, type_class

MAX_VALUE_CHARS = 4096
BERNOULLI_MAX_ROWS = 200_000
EXCLUDED_SCHEMAS = ("pg_catalog", "information_schema", "pgveil")

CATALOG_SQL = """
SELECT n.nspname, c.relname, c.relkind::text, c.reltuples::float8,
       a.attname,
       pg_catalog.format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END,
                              CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END),
       pg_catalog.has_table_privilege(c.oid, 'SELECT')
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE c.relkind IN ('r', 'p', 'm')
  AND NOT c.relispartition
  AND n.nspname <> ALL(%(excluded)s)
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY(%(schemas)s::text[]))
ORDER BY n.nspname, c.relname, a.attnum
"""


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type_name: str

    @property
    def readable_type(self) -> bool:
        return type_class(self.type_name) != TypeClass.OTHER


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    kind: str  # r, p, m
    est_rows: float | None  # None: never analysed
    columns: tuple[ColumnInfo, ...]
    can_select: bool = True

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class TableScan:
    """How one table was sampled (no values)."""

    table: TableInfo
    sampled_rows: int = 0
    method: str = "-"
    seconds: float = 0.0
    error: str | None = None
    findings: list[ColumnFinding] = field(default_factory=list)


@dataclass
class ScanResult:
    database: str
    sample_rows: int
    tables: list[TableScan]
    seconds: float

    @property
    def findings(self) -> list[ColumnFinding]:
        return [f for t in self.tables for f in t.findings]


class ScanObserver(Protocol):
    """Progress hooks (the terminal UI implements them; tests may ignore them)."""

    def tables_found(self, tables: Sequence[TableInfo]) -> None: ...
    def table_started(self, table: TableInfo, steps: int) -> None: ...
    def table_step(self, table: TableInfo) -> None: ...
    def table_done(self, scan: TableScan) -> None: ...


class _Quiet:
    def tables_found(self, tables: Sequence[TableInfo]) -> None: pass
    def table_started(self, table: TableInfo, steps: int) -> None: pass
    def table_step(self, table: TableInfo) -> None: pass
    def table_done(self, scan: TableScan) -> None: pass


def read_catalog(conn: psycopg.Connection, schemas: Sequence[str] | None = None) -> list[TableInfo]:
    """Every ordinary, partitioned (parent only) and materialized table, with its columns."""
    rows = conn.execute(
        CATALOG_SQL, {"excluded": list(EXCLUDED_SCHEMAS), "schemas": list(schemas) if schemas else None}
    ).fetchall()
    tables: list[TableInfo] = []
    current: tuple[str, str] | None = None
    cols: list[ColumnInfo] = []
    meta: tuple[str, float | None, bool] = ("r", None, True)

    def flush() -> None:
        if current is not None:
            tables.append(TableInfo(current[0], current[1], meta[0], meta[1], tuple(cols), meta[2]))

    for nsp, rel, kind, reltuples, att, typ, can_select in rows:
        if (nsp, rel) != current:
            flush()
            current, cols = (nsp, rel), []
            meta = (kind, reltuples if reltuples is not None and reltuples >= 0 else None, can_select)
        cols.append(ColumnInfo(att, typ))
    flush()
    return tables


def _select(table: TableInfo, cols: Sequence[ColumnInfo], sample: sql.Composable,
            limit: int) -> sql.Composed:
    exprs = sql.SQL(", ").join(
        sql.SQL("pg_catalog.left(CAST({} AS pg_catalog.text), {})").format(
            sql.Identifier(c.name), sql.Literal(MAX_VALUE_CHARS))
        for c in cols
    )
    return sql.SQL("SELECT {} FROM {}.{} {} LIMIT {}").format(
        exprs, sql.Identifier(table.schema), sql.Identifier(table.name), sample, sql.Literal(limit))


def _tablesample(method: str, pct: float, seed: int) -> sql.Composable:
    return sql.SQL("TABLESAMPLE {} ({}) REPEATABLE ({})").format(
        sql.SQL(method), sql.Literal(round(pct, 6)), sql.Literal(seed))


def _sample(conn: psycopg.Connection, table: TableInfo, cols: Sequence[ColumnInfo],
            n: int, seed: int) -> tuple[list[tuple[Any, ...]], str]:
    est = table.est_rows
    if est is None or est == 0:
        # never analysed (or empty per stats): a bounded count decides
        probe = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {}.{} LIMIT {}) s").format(
            sql.Identifier(table.schema), sql.Identifier(table.name), sql.Literal(2 * n + 1))
        count = conn.execute(probe).fetchone()[0]  # type: ignore[index]
        est = float(count) if count <= 2 * n else None
    if est is not None and est <= 2 * n:
        return conn.execute(_select(table, cols, sql.SQL(""), n)).fetchall(), "limit"
    if est is not None and est <= BERNOULLI_MAX_ROWS:
        method, pct = "BERNOULLI", min(100.0, 100.0 * n * 1.5 / est)
    else:
        method = "SYSTEM"
        pct = min(100.0, 100.0 * n * 3 / est) if est else 1.0
    while True:
        rows = conn.execute(_select(table, cols, _tablesample(method, pct, seed), n)).fetchall()
        if len(rows) >= n or pct >= 100.0:
            return rows, f"{method.lower()} {pct:.3g}%"
        pct = min(100.0, pct * 10)


def scan_table(conn: psycopg.Connection, table: TableInfo, *, sample_rows: int, seed: int = 0,
               threshold: float = DEFAULT_THRESHOLD,
               observer: ScanObserver | None = None) -> TableScan:
    """Sample one table in its own read-only transaction and classify its columns."""
    obs = observer or _Quiet()
    cols = [c for c in table.columns if c.readable_type]
    result = TableScan(table)
    obs.table_started(table, len(cols) + 1)
    t0 = time.perf_counter()
    if not table.can_select:
        result.error = "no SELECT privilege"
    elif cols:
        try:
            with conn.transaction():
                rows, result.method = _sample(conn, table, cols, sample_rows, seed)
        except psycopg.Error as exc:
            diag = exc.diag
            result.error = f"{diag.sqlstate or type(exc).__name__}: {diag.message_primary or 'error'}"
            rows = []
        obs.table_step(table)
        result.sampled_rows = len(rows)
        if result.error is None:
            for i, col in enumerate(cols):
                finding = classify_column(table.qualified, col.name, col.type_name,
                                          (r[i] for r in rows), threshold=threshold)
                if finding is not None:
                    result.findings.append(finding)
                obs.table_step(table)
        del rows
    result.seconds = time.perf_counter() - t0
    obs.table_done(result)
    return result


def connect(dsn: str, statement_timeout: float = 30.0) -> psycopg.Connection:
    """A read-only, time-bounded session for scanning."""
    conn = psycopg.connect(dsn, autocommit=True, application_name="pgveil discover")
    timeout_ms = max(1, int(statement_timeout * 1000))
    conn.execute("SELECT pg_catalog.set_config('statement_timeout', %s, false)", [f"{timeout_ms}ms"])
    conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)",
                 [f"{min(timeout_ms, 5000)}ms"])
    conn.execute("SELECT pg_catalog.set_config('default_transaction_read_only', 'on', false)")
    conn.read_only = True
    return conn


def scan(dsn: str, *, schemas: Sequence[str] | None = None, sample_rows: int = 1000,
         statement_timeout: float = 30.0, threshold: float = DEFAULT_THRESHOLD, seed: int = 0,
         observer: ScanObserver | None = None) -> ScanResult:
    """Scan every table of the database ``dsn`` points at (optionally only ``schemas``)."""
    if sample_rows < 1:
        raise ValueError("sample_rows must be at least 1")
    obs = observer or _Quiet()
    t0 = time.perf_counter()
    with connect(dsn, statement_timeout) as conn:
        database = conn.info.dbname
        tables = read_catalog(conn, schemas)
        obs.tables_found(tables)
        scans = [scan_table(conn, t, sample_rows=sample_rows, seed=seed, threshold=threshold,
                            observer=obs) for t in tables]
    return ScanResult(database, sample_rows, scans, time.perf_counter() - t0)
