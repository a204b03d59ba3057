"""Data inventory: cross-check sensitive columns against what the audit log says was read.

Answers three questions for the audit period:

* which sensitive columns were **read unmasked**, by whom and under which grants;
* which were **never read** at all (candidates to stop collecting), and which were only
  ever read masked (candidates for a stricter mask or for dropping);
* which **grants were never used**.

The audit log is JSON lines, possibly rotated: pgveil's own rotations
(``PATH.20250131T120000.123456Z``, ordered by their first ``seq``, see
:mod:`proxy.audit.files`) and numbered ones (``PATH.1``, ``PATH.2`` …, ``.gz`` too, the
highest number oldest). The reader is deliberately tolerant of the record shape, because the
audit writer evolves separately; what it reads:

=================== ==========================================================================
event name          ``event`` (pgveil: ``{"type": "event", "event": "grant.approved", …}``),
                    else ``kind``/``type``. ``grant.*`` → a grant event; ``grant.used`` counts
                    as a use of its grant. Anything else with ``columns``/``tables`` (pgveil:
                    ``type = "intent"`` or ``"statement"``) is a statement.
grant id            ``grant`` (a string, or an object with ``id``), ``grant_id`` or ``id``
grant subject       ``subject``, ``user``, ``requester`` or ``grantee``
outcome             a ``complete`` record whose ``rid`` names an intent's ``seq`` (same
                    ``instance``), or the record itself (pgveil's ``statement`` records): a ``sqlstate`` other than ``00000`` or a ``deny`` decision
                    means the statement read nothing; a ``hold`` intent counts only once a
                    completion says ``forward``/``rewrite``
``user``            also ``username``, ``role``
``columns``         list of ``"schema.table.column"`` / ``"table.column"`` (schema ``public``) /
                    bare ``"column"`` (pgveil's intents: attributed to *every* table in
                    ``tables`` — conservative, so a column is never wrongly reported as never
                    read), or objects
                    ``{schema?, table, column}``, or a mapping ``{"schema.table": [columns]}``
``masked``          same shapes; columns read masked (``masked_columns`` also accepted)
``grants``          list of ids or objects with ``id`` (``grants_used`` also accepted)
``decision``        a string or ``{"action": …}``; anything starting with ``deny`` is not a read
``ts``              also ``time``/``timestamp``; ISO-8601 text or epoch seconds, kept as text
statement id        ``statement_id`` or ``id`` (with ``session``): an intent and a completion
                    record of the same statement count once
=================== ==========================================================================

Reading files is the only I/O here; :func:`build_inventory` is pure.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping


@dataclass
class ColumnUse:
    column: str  # schema.table.column
    unmasked_reads: int = 0
    masked_reads: int = 0
    users: Counter[str] = field(default_factory=Counter)  # unmasked reads per user
    grants: Counter[str] = field(default_factory=Counter)  # grants under which read unmasked
    first: str | None = None
    last: str | None = None

    @property
    def status(self) -> str:
        if self.unmasked_reads:
            return "read unmasked"
        if self.masked_reads:
            return "read masked only"
        return "never read"


@dataclass
class GrantInfo:
    id: str
    subject: str | None = None
    events: list[str] = field(default_factory=list)
    uses: int = 0


@dataclass
class Inventory:
    files: list[str]
    records: int
    statements: int
    skipped_lines: int
    first_ts: str | None
    last_ts: str | None
    columns: dict[str, ColumnUse]
    grants: dict[str, GrantInfo]

    def by_status(self, status: str) -> list[ColumnUse]:
        return [c for c in self.columns.values() if c.status == status]

    @property
    def unused_grants(self) -> list[GrantInfo]:
        return [g for g in self.grants.values() if g.uses == 0 and g.events]


def audit_files(path: str | Path) -> list[Path]:
    """``PATH`` and its existing rotations, oldest first."""
    base = Path(path)
    numbered: list[tuple[int, Path]] = []
    pattern = re.compile(re.escape(base.name) + r"\.(\d+)(\.gz)?")
    if base.parent.is_dir():
        for p in base.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                numbered.append((int(m.group(1)), p))
    oldest_first = [p for _, p in sorted(numbered, reverse=True)]
    try:
        from proxy.audit.files import chain_files  # pgveil's own rotation scheme
    except ImportError:  # pragma: no cover - the audit package is optional here
        chain = [base] if base.exists() else []
    else:
        chain = chain_files(base)
    return oldest_first + [p for p in chain if p not in oldest_first]


def read_records(paths: Iterable[Path]) -> tuple[list[dict[str, Any]], int]:
    """All JSON-object lines of ``paths`` (oldest first) and how many lines were skipped."""
    records: list[dict[str, Any]] = []
    skipped = 0
    for p in paths:
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8", errors="replace") as fh:  # type: ignore[operator]
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    skipped += 1
                    continue
                if isinstance(rec, dict):
                    records.append(rec)
                else:
                    skipped += 1
    return records, skipped


def _qualify(table: str) -> str:
    return table if "." in table else f"public.{table}"


def _columns(raw: Any, tables: list[str]) -> set[str]:
    """Normalise any of the accepted ``columns`` shapes to ``schema.table.column`` names."""
    out: set[str] = set()
    if isinstance(raw, Mapping):
        if "column" in raw or "name" in raw:
            raw = [raw]
        else:
            for table, cols in raw.items():
                for c in cols if isinstance(cols, (list, tuple)) else [cols]:
                    if isinstance(c, str):
                        out.add(f"{_qualify(str(table))}.{c}")
            return out
    if not isinstance(raw, (list, tuple)):
        return out
    for item in raw:
        if isinstance(item, str):
            parts = item.split(".")
            if len(parts) >= 3:
                out.add(".".join(parts[-3:]))
            elif len(parts) == 2:
                out.add(f"public.{item}")
            else:
                out.update(f"{_qualify(t)}.{item}" for t in tables)
        elif isinstance(item, Mapping):
            col = item.get("column") or item.get("name")
            table = item.get("table") or item.get("relation")
            if not isinstance(col, str) or not isinstance(table, str):
                continue
            schema = item.get("schema")
            qt = f"{schema}.{table}" if isinstance(schema, str) and "." not in table else _qualify(table)
            out.add(f"{qt}.{col}")
    return out


def _ids(raw: Any) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raw = [raw]
    ids = []
    for g in raw:
        if isinstance(g, Mapping):
            g = g.get("id") or g.get("grant_id")
        if isinstance(g, (str, int)) and not isinstance(g, bool):
            ids.append(str(g))
    return ids


def _first(rec: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        if rec.get(k) is not None:
            return rec[k]
    return None


def _decision(rec: Mapping[str, Any]) -> str:
    d = rec.get("decision")
    if isinstance(d, Mapping):
        d = d.get("action") or d.get("kind") or d.get("decision")
    return str(d or "").lower()


def _event_name(rec: Mapping[str, Any]) -> str:
    event = rec.get("event")
    if isinstance(event, str):
        return event
    return str(_first(rec, "kind", "type") or "")


def _grant_id(rec: Mapping[str, Any]) -> str | None:
    g = _first(rec, "grant", "grant_id", "id")
    if isinstance(g, Mapping):
        g = g.get("id")
    return str(g) if isinstance(g, (str, int)) and not isinstance(g, bool) else None


def _outcomes(records: Iterable[Mapping[str, Any]]) -> dict[tuple[Any, Any], str]:
    """``(instance, intent seq)`` → ``"ran"`` or ``"failed"``, from completion records."""
    out: dict[tuple[Any, Any], str] = {}
    for rec in records:
        kind = rec.get("type")
        if kind == "statement":  # its own outcome
            ref = rec.get("seq")
        elif kind == "complete":
            ref = rec.get("rid")
        else:
            continue
        if ref is None:
            continue
        sqlstate = rec.get("sqlstate")
        failed = (sqlstate is not None and sqlstate != "00000") or _decision(rec).startswith("deny")
        out[(rec.get("instance"), ref)] = "failed" if failed else "ran"
    return out


def build_inventory(sensitive: Iterable[str], records: Iterable[Mapping[str, Any]], *,
                    files: Iterable[str] = (), skipped_lines: int = 0) -> Inventory:
    """Cross-check ``sensitive`` columns (``schema.table.column``) against audit records."""
    records = list(records)
    outcomes = _outcomes(records)
    cols = {c: ColumnUse(c) for c in sensitive}
    grants: dict[str, GrantInfo] = {}
    seen: set[Any] = set()
    n_records = n_statements = 0
    first_ts: str | None = None
    last_ts: str | None = None
    for rec in records:
        n_records += 1
        ts_raw = _first(rec, "ts", "time", "timestamp")
        ts = str(ts_raw) if ts_raw is not None else None
        if ts is not None:
            first_ts = ts if first_ts is None or ts < first_ts else first_ts
            last_ts = ts if last_ts is None or ts > last_ts else last_ts
        kind = _event_name(rec)
        if kind.startswith("grant"):
            gid = _grant_id(rec)
            if gid is None:
                continue
            g = grants.setdefault(gid, GrantInfo(gid))
            g.events.append(kind)
            subject = _first(rec, "subject", "user", "requester", "grantee")
            if isinstance(subject, str):
                g.subject = g.subject or subject
            if kind.endswith(".used") or kind.endswith(".use"):
                g.uses += 1
            continue
        if "columns" not in rec and "tables" not in rec:
            continue
        outcome = outcomes.get((rec.get("instance"), rec.get("seq")))
        if outcome == "failed" or (_decision(rec).startswith("hold") and outcome != "ran"):
            n_statements += 1
            continue
        sid = _first(rec, "statement_id", "id")
        if sid is not None:
            key = (rec.get("session"), str(sid))
            if key in seen:
                continue
            seen.add(key)
        n_statements += 1
        if _decision(rec).startswith("deny"):
            continue
        tables_raw = rec.get("tables") or []
        tables = [t for t in tables_raw if isinstance(t, str)] if isinstance(tables_raw, list) else []
        read = _columns(rec.get("columns"), tables)
        masked = _columns(_first(rec, "masked", "masked_columns"), tables)
        used = _ids(_first(rec, "grants", "grants_used"))
        for gid in used:
            grants.setdefault(gid, GrantInfo(gid)).uses += 1
        user = str(_first(rec, "user", "username", "role") or "?")
        for c in read | masked:
            use = cols.get(c)
            if use is None:
                continue
            if c in masked:
                use.masked_reads += 1
            else:
                use.unmasked_reads += 1
                use.users[user] += 1
                for gid in used:
                    use.grants[gid] += 1
            if ts is not None:
                use.first = ts if use.first is None or ts < use.first else use.first
                use.last = ts if use.last is None or ts > use.last else use.last
    return Inventory(list(files), n_records, n_statements, skipped_lines, first_ts, last_ts,
                     cols, grants)


def load_inventory(path: str | Path, sensitive: Iterable[str]) -> Inventory:
    """Read ``path`` and its rotations and build the inventory for ``sensitive`` columns."""
    paths = audit_files(path)
    if not paths:
        raise FileNotFoundError(f"no audit log at {path}")
    records, skipped = read_records(paths)
    return build_inventory(sensitive, records, files=[str(p) for p in paths],
                           skipped_lines=skipped)


def iter_sensitive(findings: Iterable[Any]) -> Iterator[str]:
    for f in findings:
        yield f"{f.table}.{f.column}"
