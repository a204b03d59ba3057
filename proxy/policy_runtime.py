"""The proxy's side of policy: catalogs loaded from the upstream, live grants, cached decisions.

``policy/`` decides and never does I/O; this module feeds it. One :class:`PolicyRuntime`
per process holds:

* the validated :class:`~policy.rules.Policy` from the config file;
* one :class:`~policy.catalog.Catalog` per database, loaded on first use with
  ``CATALOG_QUERY`` over a connection of its own (``[upstream] catalog_user``), refreshed
  after DDL through the proxy, when a statement names a relation the catalog lacks, and
  every ``catalog_refresh_seconds``;
* the live grants (an in-memory :class:`~policy.grants.GrantSet`);
* a decision cache: exact text first, then the literal-free fingerprint for decisions that
  do not depend on literals. The key includes the user, search_path, session settings and
  the catalog, policy and grant versions, so a changed grant or catalog is never served a
  stale decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass

from policy.catalog import CATALOG_QUERY, CATALOG_QUERY_NO_VIEWDEFS, Catalog
from policy.decision import Decision, decide
from policy.fingerprint import scan
from policy.gate import LEXER_SETTINGS
from policy.grants import EMPTY_GRANTS, GrantSet
from policy.masks import INSTALL_SQL
from policy.rules import Policy, policy_from_dict
from policy.names import parse_search_path
from policy.skeleton import matches, split
from policy.template import literals_from_spans, make_probe, make_template

from .config import Settings

log = logging.getLogger("pgveil.policy")

#: settings that change how the server reads SQL text: part of every decision's cache key
_LEXER_SETTINGS = tuple(sorted(LEXER_SETTINGS))
_MAX_TEMPLATE_LITERALS = 1000
_MAX_CACHED_TEXT = 1 << 16


@dataclass
class CatalogState:
    catalog: Catalog | None = None
    version: int = 0
    loaded_at: float = 0.0
    error: str | None = None
    task: asyncio.Task | None = None
    digest: str = ""  # of the rows last loaded: a reload that finds the same keeps the version
    content_version: int = 0  # the version that names the loaded catalog's content
    top_version: int = 0  # the highest version ever given out (versions are cache keys)
    stale: bool = False  # DDL was reported since the last load: decisions wait for a new one
    ddl_seen: int = 0  # DDL reports so far (a load that began before the last one is stale)
    watch: asyncio.Task | None = None  # listening for DDL reports (see PolicyRuntime._watch)
    watching: bool = False  # DDL reports are being received


class CatalogStale(LookupError):
    """The database reported DDL that the loaded catalog predates: wait for the reload."""


#: an event trigger that reports every DDL command (by anyone, over any connection) to
#: pgveil's catalog connections, so a schema changed outside pgveil is reloaded at once
DDL_WATCH_SQL = r"""
CREATE SCHEMA IF NOT EXISTS pgveil;
CREATE OR REPLACE FUNCTION pgveil.report_ddl() RETURNS event_trigger
  LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $fn$ BEGIN PERFORM pg_catalog.pg_notify('pgveil_ddl', ''); END $fn$;
DO $do$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgveil_ddl_end') THEN
    CREATE EVENT TRIGGER pgveil_ddl_end ON ddl_command_end EXECUTE FUNCTION pgveil.report_ddl();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'pgveil_sql_drop') THEN
    CREATE EVENT TRIGGER pgveil_sql_drop ON sql_drop EXECUTE FUNCTION pgveil.report_ddl();
  END IF;
END $do$;
"""


class _Everyone(frozenset):
    """An exempt-user set containing every user: classification without masking."""

    def __contains__(self, item: object) -> bool:
        return True


_AUDIT_ONLY = Policy(exempt_users=_Everyone())
_EMPTY_CATALOG = Catalog()


class DecisionCache:
    """A bounded LRU of decisions."""

    def __init__(self, size: int = 20000) -> None:
        self.size = size
        self._d: OrderedDict = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key):
        d = self._d.get(key)
        if d is None:
            self.misses += 1
            return None
        self._d.move_to_end(key)
        self.hits += 1
        return d

    def put(self, key, value) -> None:
        self._d[key] = value
        if len(self._d) > self.size:
            self._d.popitem(last=False)

    def clear(self) -> None:
        self._d.clear()


class PolicyRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy: Policy | None = policy_from_dict(settings.policy) if settings.policy else None
        self.policy_version = 1
        self.grants: GrantSet = EMPTY_GRANTS
        self.grants_version = 0
        self.catalogs: dict[str, CatalogState] = {}
        self.cache = DecisionCache()
        self.decisions = 0

    # ------------------------------------------------------------------ who is masked
    def masks(self, user: str) -> bool:
        """Whether statements of ``user`` go through the policy (everyone not exempt)."""
        return self.policy is not None and not self.policy.is_exempt(user)

    # ------------------------------------------------------------------ catalogs
    def catalog_state(self, database: str) -> CatalogState:
        st = self.catalogs.get(database)
        if st is None:
            st = self.catalogs[database] = CatalogState()
        return st

    def ensure_catalog(self, database: str, *, force: bool = False) -> asyncio.Task | None:
        """Start loading ``database``'s catalog unless it is loaded (or loading)."""
        st = self.catalog_state(database)
        if st.task is not None and not st.task.done():
            return st.task
        if st.catalog is not None and not force:
            return None
        st.task = asyncio.get_running_loop().create_task(self._load(database, st))
        return st.task

    def _connect_kwargs(self, database: str) -> dict:
        up = self.settings.upstream
        kw = dict(host=up.host, port=up.port, dbname=database, user=up.catalog_user,
                  sslmode="disable" if up.sslmode == "disable" else up.sslmode,
                  application_name="pgveil-catalog", connect_timeout=10)
        password = up.catalog_password or os.environ.get("PGVEIL_CATALOG_PASSWORD")
        if password:
            kw["password"] = password
        if up.sslrootcert is not None:
            kw["sslrootcert"] = str(up.sslrootcert)
        return kw

    async def _load(self, database: str, st: CatalogState) -> None:
        import psycopg

        kw = self._connect_kwargs(database)
        started = time.monotonic()
        seen = st.ddl_seen
        try:
            async with await psycopg.AsyncConnection.connect(autocommit=True, **kw) as conn:
                await conn.execute("SET statement_timeout = '30s'")
                await conn.execute("SET lock_timeout = '1s'")
                if self.policy is not None and any(r.mask == "hash" for r in self.policy.rules):
                    # the keyed-hash functions; the key is made in the database, never here
                    await conn.execute(INSTALL_SQL)
                try:
                    cur = await conn.execute(CATALOG_QUERY)
                except psycopg.errors.LockNotAvailable:
                    # a session holds a lock on a view (its definition cannot be read): load
                    # without view definitions, which masks such views more, never less
                    log.warning("database %r: a view is locked; catalog loaded without view "
                                "definitions until the next load", database)
                    cur = await conn.execute(CATALOG_QUERY_NO_VIEWDEFS)
                rows = await cur.fetchall()
            catalog = Catalog.from_rows(rows)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the catalog unusable
            st.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            log.warning("loading the catalog of database %r failed: %s", database, st.error)
            if st.stale:  # statements of masked users are refused meanwhile: try again soon
                asyncio.get_running_loop().call_later(
                    2.0, lambda: self.ensure_catalog(database, force=True))
            return
        digest = hashlib.sha256(repr(rows).encode()).hexdigest()
        if digest != st.digest or st.catalog is None:
            st.catalog, st.digest = catalog, digest
            st.top_version += 1  # decisions, plans and prepared statements are made again
            st.content_version = st.top_version
        st.loaded_at = time.monotonic()
        st.error = None
        if st.ddl_seen != seen:
            # DDL was reported while this load ran: it may predate it, load again (still
            # stale, under a version no decision was made with)
            st.top_version += 1
            st.version = st.top_version
            st.task = asyncio.get_running_loop().create_task(self._load(database, st))
        else:
            st.version = st.content_version  # (the same content as before: what was decided stands)
            st.stale = False
        log.info("catalog of %r loaded: %d relations in %.0f ms", database,
                 len(catalog.relations), (st.loaded_at - started) * 1000)
        if st.watch is None and self.policy is not None and self.settings.upstream.watch_ddl:
            st.watch = asyncio.get_running_loop().create_task(self._watch(database, st))

    async def _watch(self, database: str, st: CatalogState) -> None:
        """Listen for the DDL reports of :data:`DDL_WATCH_SQL` (installing it if it is
        missing): on each, the catalog is stale at once — statements of masked users wait
        for the reload — and reloaded."""
        import psycopg

        backoff = 1.0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        autocommit=True, **self._connect_kwargs(database)) as conn:
                    try:
                        cur = await conn.execute(
                            "SELECT count(*) FROM pg_catalog.pg_event_trigger "
                            "WHERE evtname IN ('pgveil_ddl_end', 'pgveil_sql_drop')")
                        if (await cur.fetchone())[0] != 2:  # (itself DDL: only when missing)
                            await conn.execute(DDL_WATCH_SQL)
                    except psycopg.errors.InsufficientPrivilege:
                        log.warning(
                            "database %r: cannot install the DDL report trigger (it takes a "
                            "superuser as [upstream] catalog_user); schema changes made outside "
                            "pgveil are seen at the next catalog refresh, every %g s",
                            database, self.settings.upstream.catalog_refresh_seconds)
                        return
                    await conn.execute("LISTEN pgveil_ddl")
                    st.watching = True
                    # DDL between the last load and LISTEN: load once more
                    self.ensure_catalog(database, force=True)
                    backoff = 1.0
                    async for _ in conn.notifies():
                        self.ddl_reported(database)
            except asyncio.CancelledError:
                st.watching = False
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect; the refresh timer still runs
                st.watching = False
                log.warning("database %r: DDL watch connection failed (%s); retrying in %g s",
                            database, type(exc).__name__, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    def ddl_reported(self, database: str) -> None:
        st = self.catalogs.get(database)
        if st is None:
            return
        st.ddl_seen += 1
        st.stale = True
        # every cached decision and plan of this database is stale now: a new version, never
        # given out before (if the reload finds the same content, the old one comes back)
        st.top_version += 1
        st.version = st.top_version
        self.ensure_catalog(database, force=True)

    async def refresh_loop(self) -> None:
        interval = self.settings.upstream.catalog_refresh_seconds
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            for database in list(self.catalogs):
                task = self.ensure_catalog(database, force=True)
                if task is not None:
                    await asyncio.gather(task, return_exceptions=True)

    # ------------------------------------------------------------------ classification
    def classify(self, sql: str, *, user: str, database: str,
                 parameters: dict[str, str]) -> Decision:
        """Kind, tables, fingerprint and literal-free text of a statement that is forwarded
        as it is (exempt users, or no policy): what the audit log and metrics record."""
        return self.classify_keyed(sql, user=user, database=database, parameters=parameters)[0]

    def classify_keyed(self, sql: str, *, user: str, database: str,
                       parameters: dict[str, str]) -> tuple[Decision, str | None]:
        """``classify``, and the statement's skeleton when the result stands for every
        statement with that skeleton (in this database, catalog and search_path)."""
        st = self.catalogs.get(database)
        version = st.version if st is not None else 0
        sp = parameters.get("search_path", '"$user", public')
        fast = split(sql)
        if fast is not None:  # the skeleton stands for the exact text too
            skey = ("classify-sk", fast[0], database, version, sp)
            d = self.cache.get(skey)
            if d is not None:
                return d, fast[0]
        key = ("classify", sql, database, version, sp)
        d = self.cache.get(key)
        if d is not None:
            return d, None
        fp, spans = scan(sql)
        tkey = ("classify-fp", fp, database, version, sp) if spans else None
        if tkey is not None:
            d = self.cache.get(tkey)
            if d is not None:
                return d, None
        catalog = st.catalog if st is not None and st.catalog is not None else _EMPTY_CATALOG
        path = parse_search_path(sp)
        try:
            d = decide(sql, user=user, search_path=path, catalog=catalog, policy=_AUDIT_ONLY,
                       grants=EMPTY_GRANTS, now=0.0, settings=None)
        except Exception:  # noqa: BLE001 - classification never blocks a statement
            d = self.unknown_statement()
        self.cache.put(key, d)
        if tkey is not None and not d.literal_dependent:
            self.cache.put(tkey, d)
            if fast is not None and matches(fast[1], literals_from_spans(spans)):
                self.cache.put(skey, d)
        return d, None

    @staticmethod
    def unknown_statement() -> Decision:
        return Decision(action="forward", sql="", kind="unknown", normalized="(unknown statement)")

    def exposure(self, table: str) -> int | None:
        """Rows a grant on ``table`` would expose: pg_class.reltuples, from any catalog."""
        for st in self.catalogs.values():
            if st.catalog is None:
                continue
            schema, _, name = table.partition(".")
            rel = st.catalog.get(schema, name)
            if rel is not None and getattr(rel, "reltuples", None) is not None:
                return int(rel.reltuples)
        return None

    # ------------------------------------------------------------------ grants
    def set_grants(self, grants: GrantSet) -> None:
        self.grants = grants
        self.grants_version += 1

    # ------------------------------------------------------------------ decisions
    def decide(self, sql: str, *, user: str, database: str, search_path: tuple[str, ...],
               settings: dict[str, str]) -> Decision:
        st = self.catalogs.get(database)
        catalog = st.catalog if st is not None else None
        if catalog is None:
            raise LookupError(st.error if st is not None and st.error else "not loaded")
        if st.stale:
            if _ends_transaction(sql):
                # BEGIN/COMMIT/ROLLBACK read nothing: never held, so whoever holds a lock
                # that stalls the reload can always end their transaction
                return decide(sql, user=user, search_path=search_path, catalog=_EMPTY_CATALOG,
                              policy=self.policy, grants=EMPTY_GRANTS, now=time.time(),
                              settings=settings)
            if st.error is not None:  # and the reload failed: nothing to decide with
                raise LookupError(st.error)
            raise CatalogStale("DDL was reported since the catalog was loaded")
        assert self.policy is not None
        grants_version = self.grants_version if self.grants.for_user(user) else 0
        # the lexer settings the server reports change how the text is read: part of the key
        # (client_encoding too: a denial under SJIS must not answer a UTF8 session)
        context = (user, database, search_path, st.version, self.policy_version, grants_version,
                   *[settings.get(name) for name in _LEXER_SETTINGS])
        key = (sql, context)
        d = self.cache.get(key)
        if d is not None:
            return d
        fast = split(sql)
        if fast is not None:
            skey = ("sk", fast[0], context)
            hit = self.cache.get(skey)
            if hit is not None:
                d = _from_template(hit, sql, fast[1])
                if d is not None:
                    return d
        fp, spans = scan(sql)
        lits = literals_from_spans(spans)
        # a skeleton is trusted only once the fast split agreed with the real scanner here
        if fast is None or not matches(fast[1], lits):
            skey = None
        # a template is cut at every literal: past a few thousand, learning it would cost
        # time quadratic in the text on the event loop (each such text is decided afresh)
        tkey = (("fp", fp, context) if lits is not None and lits.spans
                and len(lits.spans) <= _MAX_TEMPLATE_LITERALS else None)
        if tkey is not None:
            hit = self.cache.get(tkey)
            if hit is not None:
                d = _from_template(hit, sql, lits)
                if d is not None:
                    return d
        d = self._decide(sql, user, search_path, catalog, settings)
        if d.grants_used or d.action == "approval":
            # a grant can end (or an approval arrive) at any moment: decided per statement
            return d
        if tkey is not None and not d.literal_dependent:
            entry = None
            if d.action == "forward" and d.cache_by_fingerprint:
                entry = d
            elif d.action == "rewrite":
                entry = self._learn_template(sql, lits, user, search_path, catalog, settings)
                if entry is not None and entry[1].slots:
                    text, form = entry[1].fill_both(sql, lits)
                    if form is not None and text == d.sql:
                        d = _with_params(d, form, entry[1])  # this very text is prepared too
            if entry is not None:
                self.cache.put(tkey, entry)
                if skey is not None:
                    self.cache.put(skey, entry)
        if len(sql) <= _MAX_CACHED_TEXT:  # (the exact-text cache holds no huge texts)
            self.cache.put(key, d)
        return d

    def _decide(self, sql, user, search_path, catalog, settings) -> Decision:
        self.decisions += 1
        return decide(sql, user=user, search_path=search_path, catalog=catalog,
                      policy=self.policy, grants=self.grants, now=time.time(), settings=settings)

    def _learn_template(self, sql, lits, user, search_path, catalog, settings):
        """Decide a placeholder probe of ``sql``: its rewrite as a template, or None."""
        probe = make_probe(sql, lits)
        if probe is None:
            return None
        pd = self._decide(probe.sql, user, search_path, catalog, settings)
        if pd.action != "rewrite" or pd.literal_dependent or pd.grants_used:
            return None
        tpl = make_template(pd.sql, probe)
        return (pd, tpl) if tpl is not None else None


def _from_template(hit, sql: str, lits) -> Decision | None:
    if isinstance(hit, Decision):
        return hit  # a literal-free forward decision: the client's own text is sent
    pd, tpl = hit
    text, form = tpl.fill_both(sql, lits)
    if text is None:
        return None
    d = object.__new__(Decision)  # dataclasses.replace, without re-running __init__
    d.__dict__.update(pd.__dict__)
    d.__dict__["sql"] = text
    d.__dict__["template"] = tpl  # what a session's query plan replays (proxy.query_plans)
    if form is not None:
        # the guard may send it as a prepared statement with parameters (stmt_cache)
        d.__dict__["param_form"] = form
    return d


def _with_params(d: Decision, form, tpl) -> Decision:
    out = object.__new__(Decision)
    out.__dict__.update(d.__dict__)
    out.__dict__["param_form"] = form
    out.__dict__["template"] = tpl
    return out


_TRANSACTION_WORDS = frozenset(("begin", "start", "commit", "end", "rollback", "abort",
                                "savepoint", "release"))


def _ends_transaction(sql: str) -> bool:
    """Whether ``sql`` is only transaction control (BEGIN, COMMIT, ROLLBACK [TO], SAVEPOINT,
    RELEASE…), by PostgreSQL's parser."""
    words = sql.lstrip().split(None, 1)
    if not words or words[0].rstrip(";").lower() not in _TRANSACTION_WORDS:
        return False
    try:
        import json

        from pglast import parser as pg_parser

        stmts = json.loads(pg_parser.parse_sql_json(sql)).get("stmts", [])
    except Exception:  # noqa: BLE001 - not parsable: not transaction control
        return False
    return bool(stmts) and all("TransactionStmt" in s.get("stmt", {}) for s in stmts)
