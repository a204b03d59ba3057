"""Run a bypass case the way a client would, and judge what the client saw.

A *case* is a dict in the format of ``shared/attacks/cases.toml``::

    id = "..."                 # category prefix: expr-, ident-, row-, infer-, set-, ...
    sql = ["stmt", ...]        # one psql -c each (so a "a; b" string stays one Query)
    transaction = true         # BEGIN ... ROLLBACK around the statements
    leak_if_rows = false       # any returned row means raw values were visible
    leak_if_sqlstate = "X"     # that error means raw values were visible

plus a few keys of our own (tests/attacks/extra_cases.toml):

    leak_if_match = "regex"    # that text in anything the client saw means a leak
    params = [...]             # extended run binds these; the psql run inlines them
    pipeline = true            # extended run sends all statements in one pipeline
    direct_leak = false        # does not leak even without pgveil (privileges stop it)

Two drivers produce a :class:`Seen` — everything the client received:

* :func:`run_psql`: the PostgreSQL 18 ``psql`` binary as a subprocess, simple protocol,
  ``VERBOSITY=verbose`` and ``SHOW_CONTEXT=always`` (so DETAIL/HINT/CONTEXT and SQLSTATEs
  are printed), ``ON_ERROR_ROLLBACK=on`` inside the transaction (later statements still run
  after a denied one), stdout and stderr interleaved; async notifications are printed by psql
  itself ("Asynchronous notification ... received").
* :func:`run_psycopg`: psycopg 3, extended protocol, ``prepare=True``, binary results; rows,
  COPY data, notices, notifications and every error field are collected.

:func:`judge` applies the oracle and returns the list of reasons the case leaked (empty:
no leak). Secrets are every form of every protected value in schema.sql (value, digits,
ssn tail 7, card tail 8, e-mail local part, full date), minus forms the case's own SQL
text contains (a client is allowed to see what it typed, e.g. echoed in EXPLAIN or in an
error's LINE 1). Hex-encoded bytea (``\\x3939…``) and raw bytes are decoded before matching.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import psycopg

ALLOWED_DENIAL_STATES = ("42501", "0A000")
# error classes that mean the session or the proxy broke rather than the statement failed
BROKEN_CLASSES = ("08", "57", "58", "XX")
PROBE_MARK = "=== pgveil-attacks probe ==="


# ------------------------------------------------------------------------------ secrets
def secret_values(schema_sql: str) -> dict[str, list[str]]:
    """The protected values of schema.sql, by column."""
    out: dict[str, list[str]] = {"email": [], "ssn": [], "card_number": [], "birth_date": []}
    row = re.compile(r"\s*\(\d+, '[^']*', '([^']*)', '([^']*)', '([^']*)', '([^']*)'\)")
    for line in schema_sql.splitlines():
        m = row.match(line)
        if m:
            out["email"].append(m.group(1))
            out["ssn"].append(m.group(2))
            out["card_number"].append(m.group(3))
            out["birth_date"].append(m.group(4))
    if len(out["ssn"]) < 1:
        raise ValueError("no customer rows found in schema.sql")
    return out


def secret_forms(values: dict[str, list[str]]) -> dict[str, str]:
    """form text -> a label saying what it is (``ssn:value`` ...)."""
    forms: dict[str, str] = {}
    for v in values["ssn"]:
        forms[v] = "ssn value"
        forms[re.sub(r"\D", "", v)] = "ssn digits"
        forms[v[-7:]] = "ssn tail7"
    for v in values["card_number"]:
        forms[v] = "card value"
        forms[re.sub(r"\D", "", v)] = "card digits"
        forms[re.sub(r"\D", "", v)[-8:]] = "card tail8"
    for v in values["email"]:
        forms[v] = "email value"
        forms[v.split("@")[0]] = "email local part"
    for v in values["birth_date"]:
        forms[v] = "birth_date full date"
        forms[v.replace("-", "")] = "birth_date digits"
    return forms


def case_text(case: dict) -> str:
    return "\n".join(case["sql"]) + "\n" + "\n".join(str(p) for p in case.get("params", []))


def forms_for_case(forms: dict[str, str], case: dict) -> dict[str, str]:
    """Drop the forms the case's own text contains: the client typed them."""
    text = case_text(case)
    return {f: label for f, label in forms.items() if f not in text}


_HEX = re.compile(r"\\x((?:[0-9a-fA-F]{2})+)")


def decoded(text: str) -> str:
    """``text`` plus the decoding of every ``\\x..`` hex run in it (bytea output)."""
    extra = []
    for m in _HEX.finditer(text):
        try:
            extra.append(bytes.fromhex(m.group(1)).decode("latin-1"))
        except ValueError:
            pass
    return text + ("\n" + "\n".join(extra) if extra else "")


# ------------------------------------------------------------------------------ what was seen
@dataclass
class Seen:
    protocol: str
    texts: list[str] = field(default_factory=list)
    rows: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)  # {'C','M','D','H','W'}
    broken: list[str] = field(default_factory=list)  # the session or proxy broke
    raw: str = ""  # psql transcript, for reports

    def add(self, *parts: Any) -> None:
        for p in parts:
            self.texts.extend(flatten(p))

    @property
    def sqlstates(self) -> list[str]:
        return [e.get("C", "") for e in self.errors]

    def text(self) -> str:
        return decoded("\n".join(self.texts))

    def transcript(self, limit: int = 3000) -> str:
        body = self.raw or "\n".join(self.texts)
        return body if len(body) <= limit else body[:limit] + "\n…(truncated)"


def flatten(value: Any) -> Iterable[str]:
    """Every string a value shows, however psycopg loaded it."""
    if value is None:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        yield b.decode("latin-1")
        yield b.hex()
    elif isinstance(value, (_dt.date, _dt.datetime, _dt.time)):
        yield value.isoformat()
        yield str(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from flatten(k)
            yield from flatten(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from flatten(v)
    elif isinstance(value, (int, float, decimal.Decimal, bool)):
        yield str(value)
    else:
        yield str(value)
        yield repr(value)


# ------------------------------------------------------------------------------ psql
def client_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCLIENTENCODING"] = "UTF8"
    return env


def inline_params(sql: str, params: list[Any]) -> str:
    """``$1``… replaced with quoted literals, for the simple-protocol run of a params case."""
    def lit(v: Any) -> str:
        if v is None:
            return "NULL"
        if isinstance(v, (int, float)):
            return str(v)
        return "'" + str(v).replace("'", "''") + "'"

    return re.sub(r"\$(\d+)", lambda m: lit(params[int(m.group(1)) - 1]), sql)


_ERR = re.compile(r"^(?:psql:[^\n]*?: )?(ERROR|FATAL|PANIC):\s+([0-9A-Z]{5}): (.*)$", re.M)
_ROWS = re.compile(r"^\((\d+) rows?\)$", re.M)


def run_psql(psql: Path, dsn: str, case: dict, timeout: float = 30) -> Seen:
    """One psql run: the statements of ``case`` (one ``-c`` each), then a probe."""
    sqls = [s for s in case["sql"] if s != SYNC]
    if case.get("params"):
        sqls = [inline_params(s, case["params"]) for s in sqls]
    args = [str(psql), "-X", "-v", "ON_ERROR_STOP=0", "-v", "VERBOSITY=verbose",
            "-v", "SHOW_CONTEXT=always", "-d", dsn]
    transaction = case.get("transaction", True)
    if transaction:
        args += ["-v", "ON_ERROR_ROLLBACK=on", "-c", "BEGIN"]
    for s in sqls:
        args += ["-c", s]
    if transaction:
        args += ["-c", "ROLLBACK"]
    args += ["-c", rf"\echo {PROBE_MARK}", "-c", "SELECT 'probe-' || 41 + 1 AS probe"]
    seen = Seen("simple/psql")
    try:
        out = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=timeout, env=client_env())
    except subprocess.TimeoutExpired as exc:
        seen.broken.append(f"psql did not finish within {timeout}s")
        seen.raw = (exc.output or b"").decode("utf-8", "replace")
        seen.texts.append(seen.raw)
        return seen
    text = out.stdout.decode("utf-8", "replace")
    seen.raw = text
    body, _, tail = text.partition(PROBE_MARK)
    seen.texts.append(text)  # the probe's output is harmless; keep everything for the check
    for m in _ERR.finditer(body):
        seen.errors.append({"S": m.group(1), "C": m.group(2), "M": m.group(3)})
    seen.rows = sum(int(n) for n in _ROWS.findall(body))
    if "probe-42" not in tail:
        seen.broken.append(f"the session did not answer the probe after the case "
                           f"(psql exit {out.returncode})")
    for e in seen.errors:
        if e["S"] != "ERROR":
            seen.broken.append(f"{e['S']} {e['C']}: {e['M']}")
    return seen


def psql_alive(psql: Path, dsn: str) -> str | None:
    """A new psql run must work: None if it does, else what went wrong."""
    out = subprocess.run([str(psql), "-X", "-A", "-t", "-d", dsn, "-c", "SELECT 1"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
                         env=client_env())
    if out.returncode != 0 or out.stdout.strip() != "1":
        return f"new psql run failed (exit {out.returncode}): {out.stdout!r} {out.stderr!r}"
    return None


# ------------------------------------------------------------------------------ psycopg
def error_fields(exc: psycopg.Error) -> dict[str, str]:
    d = exc.diag
    fields = {"S": d.severity, "C": d.sqlstate, "M": d.message_primary, "D": d.message_detail,
              "H": d.message_hint, "W": d.context, "q": d.internal_query}
    out = {k: v for k, v in fields.items() if v is not None}
    out.setdefault("C", "")
    out.setdefault("M", str(exc))
    out["str"] = str(exc)
    return out


def _collect_cursor(cur: psycopg.Cursor, seen: Seen) -> None:
    while True:
        if cur.description is not None:
            seen.add([c.name for c in cur.description])
            for row in cur.fetchall():
                seen.rows += 1
                seen.add(row)
        if not cur.nextset():
            break


def _is_copy_out(sql: str) -> bool:
    return bool(re.match(r"\s*COPY\b", sql, re.I)) and bool(re.search(r"\bTO\s+STDOUT\b", sql, re.I))


class Client:
    """A psycopg connection that notes notices and notifications, and reconnects if lost."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: psycopg.Connection | None = None
        self.sink: Seen | None = None

    def connect(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = psycopg.connect(self.dsn, autocommit=True)
            self.conn.add_notice_handler(self._notice)
            self.conn.add_notify_handler(self._notify)
        return self.conn

    def _notice(self, diag: psycopg.errors.Diagnostic) -> None:
        if self.sink is not None:
            self.sink.add(diag.severity, diag.sqlstate, diag.message_primary, diag.message_detail,
                          diag.message_hint, diag.context, diag.internal_query)

    def _notify(self, n: psycopg.Notify) -> None:
        if self.sink is not None:
            self.sink.add("notification", n.channel, n.payload)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run_psycopg(client: Client, case: dict, *, fresh: bool = False) -> Seen:
    """The statements of ``case`` over the extended protocol (prepared, binary results)."""
    seen = Seen("extended/psycopg" + ("-pipeline" if case.get("pipeline") else ""))
    if fresh:
        client.close()
    conn = client.connect()
    client.sink = seen
    transaction = case.get("transaction", True) and not case.get("pipeline")
    params = case.get("params") or None
    try:
        if transaction:
            conn.execute("BEGIN")
        if case.get("pipeline"):
            _run_pipeline(conn, case, seen)
        else:
            for sql in case["sql"]:
                _run_one(conn, sql, params, seen, savepoint=transaction and len(case["sql"]) > 1)
        if transaction:
            conn.execute("ROLLBACK")
        # the next statement works on the same connection (and delivers notifications)
        row = conn.execute("SELECT 1").fetchone()
        if row != (1,):
            seen.broken.append(f"SELECT 1 returned {row!r}")
    except psycopg.Error as exc:
        seen.broken.append(f"connection unusable after the case: {type(exc).__name__}: {exc}")
        seen.add(list(error_fields(exc).values()))
    finally:
        client.sink = None
        if fresh or seen.broken:
            client.close()
    return seen


def _run_one(conn: psycopg.Connection, sql: str, params: Any, seen: Seen, *, savepoint: bool) -> None:
    cur = psycopg.RawCursor(conn)
    if savepoint:
        conn.execute("SAVEPOINT attack")
    try:
        if _is_copy_out(sql):
            with cur.copy(sql) as cp:
                for chunk in cp:
                    seen.rows += 1
                    seen.add(bytes(chunk))
        else:
            cur.execute(sql, params, prepare=True, binary=True)
            _collect_cursor(cur, seen)
    except psycopg.Error as exc:
        if conn.broken or conn.closed:
            raise
        fields = error_fields(exc)
        seen.errors.append(fields)
        seen.add(list(fields.values()))
        if savepoint:
            conn.execute("ROLLBACK TO SAVEPOINT attack")
        elif conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            conn.execute("ROLLBACK")
            conn.execute("BEGIN")


SYNC = "\\sync"  # in a pipeline case: send Sync here (psql runs skip it)


def _run_pipeline(conn: psycopg.Connection, case: dict, seen: Seen) -> None:
    """All statements in one pipeline; ``\\sync`` entries end a segment with a Sync."""
    segments: list[list[str]] = [[]]
    for sql in case["sql"]:
        if sql == SYNC:
            segments.append([])
        else:
            segments[-1].append(sql)
    try:
        _pipeline_segments(conn, case, segments, seen)
    except psycopg.Error as exc:  # e.g. PipelineAborted surfacing when the block exits
        if conn.broken or conn.closed:
            raise
        _note_error(seen, exc)


def _pipeline_segments(conn: psycopg.Connection, case: dict, segments: list[list[str]],
                       seen: Seen) -> None:
    with conn.pipeline() as p:
        for segment in segments:
            curs = []
            try:
                for sql in segment:
                    cur = psycopg.RawCursor(conn)
                    cur.execute(sql, case.get("params") if "$" in sql else None, prepare=False,
                                binary=True)
                    curs.append(cur)
                p.sync()
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    raise
                _note_error(seen, exc)
            for cur in curs:
                try:
                    _collect_cursor(cur, seen)
                except psycopg.Error as exc:
                    if conn.broken or conn.closed:
                        raise
                    _note_error(seen, exc)


def _note_error(seen: Seen, exc: psycopg.Error) -> None:
    fields = error_fields(exc)
    if fields not in seen.errors:
        seen.errors.append(fields)
        seen.add(list(fields.values()))


# ------------------------------------------------------------------------------ the oracle
def judge(case: dict, seen: Seen, forms: dict[str, str]) -> list[str]:
    """Why ``seen`` shows a leak (empty when it does not)."""
    reasons = []
    text = seen.text()
    for form, label in forms_for_case(forms, case).items():
        if form in text:
            reasons.append(f"{label} {form!r} visible to the client")
    if case.get("leak_if_rows") and seen.rows:
        reasons.append(f"{seen.rows} row(s) returned (leak_if_rows)")
    want = case.get("leak_if_sqlstate")
    if want and want in seen.sqlstates:
        reasons.append(f"SQLSTATE {want} raised (leak_if_sqlstate)")
    pattern = case.get("leak_if_match")
    if pattern:
        m = re.search(pattern, text)
        if m:
            reasons.append(f"output matches leak_if_match {pattern!r}: {m.group(0)!r}")
    return reasons


def misbehaviour(seen: Seen) -> list[str]:
    """What went wrong besides a leak: a broken session, a denial with a wrong SQLSTATE."""
    problems = list(seen.broken)
    for e in seen.errors:
        state = e.get("C", "")
        msg = e.get("M", "")
        if state[:2] in BROKEN_CLASSES:
            problems.append(f"error {state} means a broken session/proxy: {msg}")
        if msg.startswith("pgveil:") and state not in ALLOWED_DENIAL_STATES:
            problems.append(f"pgveil denial with SQLSTATE {state} (want 42501/0A000): {msg}")
    return problems


# ------------------------------------------------------------------------------ where the cases are
REPO_ROOT = Path(__file__).resolve().parents[2]


def attacks_dir() -> Path | None:
    """``$PGVEIL_ATTACKS_DIR``, else ``shared/attacks`` next to the repository."""
    env = os.environ.get("PGVEIL_ATTACKS_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "attacks")
    for c in candidates:
        if (c / "cases.toml").is_file() and (c / "schema.sql").is_file():
            return c
    return None
