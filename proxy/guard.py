"""Policy enforcement inside one session, on the wire.

A :class:`Guard` sits in a session of a user who is not exempt. It sees each Query and Parse
before it goes upstream, and the server messages a masked user must not receive unchecked.

* **Decide at the statement.** The text goes to :meth:`PolicyRuntime.decide`; a rewritten
  statement replaces the original, a forwarded one goes as it came.
* **Deny in-band.** A denied statement is replaced by a *poison* statement: a unique word
  PostgreSQL rejects as a syntax error. The server then does exactly what it does for any
  failed statement (aborts the transaction block, skips extended-protocol messages until
  Sync, sends ReadyForQuery with the right status), and the guard swaps the server's syntax
  error for pgveil's ErrorResponse. No response is ever synthesised out of order.
* **Verify on the wire.** A RowDescription naming a sensitive column (table OID and
  attribute number) that no live grant covers means the analysis missed something: the
  RowDescription is replaced by an error and every message up to ReadyForQuery is dropped.
* **Scrub** DETAIL/CONTEXT of errors and notices that can quote row values.
* **Explain.** When a result has masked columns, one NOTICE per statement names them and
  says how to ask for access. Synthetic messages are only ever inserted at a message
  boundary of the server stream (just before the next ReadyForQuery).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from typing import TYPE_CHECKING

from policy.analyze import is_reserved_statement_name
from policy.names import parse_search_path
from policy.scrub import scrub_error_fields

from .protocol import messages as m
from .policy_runtime import CatalogStale
from .query_plans import QueryPlans
from .statements import StatementMap
from .stmt_cache import StatementCache


def _confirmer(cache: StatementCache, name: str):
    """Tells ``cache`` whether the server answered (True) or skipped the Parse of ``name``."""
    def confirm(ok: bool) -> None:
        if ok:
            cache.confirm(name)
        else:
            cache.failed(name)
    return confirm


#: statement kinds that never change the search_path or drop prepared statements
_PLAIN_KINDS = frozenset({"select", "insert", "update", "delete", "merge", "copy", "explain",
                          "fetch", "show", "notify", "listen", "unlisten", "lock"})

_EMPTY_PARSE = m.encode_parse(m.Parse("", "", []))
_DESCRIBE_UNNAMED_PORTAL = m.msg(b"D", b"P\x00")
_EXECUTE_UNNAMED_ALL = m.msg(b"E", b"\x00\x00\x00\x00\x00")
_SYNC_MSG = m.msg(b"S", b"")

if TYPE_CHECKING:
    from .policy_runtime import PolicyRuntime
    from policy.decision import Decision

log = logging.getLogger("pgveil.guard")

_E, _N, _T, _Z = b"ENTZ"
POISON_PREFIX = "pgveil_denied_"


class NeedCatalog(Exception):
    """The statement names a relation the catalog lacks: refresh, then decide again."""


class NeedApproval(Exception):
    """The statement matches an action rule: hold it while its request is pending."""

    def __init__(self, decision: "Decision") -> None:
        super().__init__(decision.approval)
        self.decision = decision


class NeedSync(Exception):
    """The search_path is changing: wait for the server to report it before deciding."""


class Guard:
    #: server message types the relay must hand to :meth:`server_message`
    INTERESTING = b"ZESTN123"

    def __init__(self, runtime: "PolicyRuntime", user: str, database: str,
                 parameters: dict[str, str], notice: bool = True,
                 statement_cache: int = 0) -> None:
        self.runtime = runtime
        self.user = user
        self.database = database
        self.parameters = parameters  # the session's live ParameterStatus map
        self.notice = notice
        self.poisons: dict[str, bytes] = {}
        self.outbox: list[bytes] = []  # synthetic messages waiting for a message boundary
        self.blocking = False
        self.refresh_after = False
        self._retried: set[str] = set()
        self._temp_checked: set[str] = set()  # names looked for in a fresh catalog
        self._sql_prepared: dict[str, int] = {}  # PREPARE name -> catalog version checked with
        self._sensitive_version: tuple | None = None
        self._sensitive: dict[int, dict[int, tuple[str, str, tuple[str, ...]]]] = {}
        self.last: "Decision | None" = None
        # search_path: only the server's report (ParameterStatus) is trusted. After a
        # statement that may change it, the path is unknown until the next ReadyForQuery.
        self.path_dirty = False
        self.synced_since_dirty = False  # a Sync closed the batch that changed it
        self.tx_path_change = False  # changed inside the open transaction block
        # what RESET / SET … TO DEFAULT return to: the value the server reported at startup
        self.default_path = parse_search_path(parameters.get("search_path", '"$user", public'))
        self.held: dict[str, tuple[str, str]] = {}  # approval key -> (request id, state)
        self.stmts = StatementMap()
        self.stmt_cache = StatementCache(statement_cache) if statement_cache > 0 else None
        self.plans = QueryPlans() if self.stmt_cache is not None else None
        self.ext_open = False  # extended-protocol messages sent since the last Sync
        # grants used by statements sent and not yet answered: a single-use grant leaves the
        # live set as soon as its statement is sent, but that statement's own result must pass
        self.inflight: list = []
        self._path_raw: str | None = None
        self._path: tuple[str, ...] = ()
        self._t_ok: dict[bytes, tuple] = {}  # RowDescriptions already checked, per versions

    # ------------------------------------------------------------------ client side
    def _decide(self, sql: str, extended: bool = False) -> "Decision | bytes":
        """A decision, or a ready-made ErrorResponse when none can be made."""
        if self.path_dirty:
            if not extended or self.synced_since_dirty:
                raise NeedSync()
            self.last = _synthetic(sql, "search_path_pending")
            return m.error_response(
                "0A000", "pgveil: this statement follows a search_path change in the same "
                "pipeline batch",
                hint="pgveil resolves table names with the search_path the server reports; "
                     "send Sync after SET search_path before the next statement.")
        raw_path = self.parameters.get("search_path", '"$user", public')
        if raw_path != self._path_raw:
            self._path_raw, self._path = raw_path, parse_search_path(raw_path)
        path = self._path
        try:
            d = self.runtime.decide(sql, user=self.user, database=self.database,
                                    search_path=path, settings=self.parameters)
        except CatalogStale:
            raise NeedCatalog() from None  # the schema changed: wait for the reload
        except LookupError as exc:
            self.last = _synthetic(sql, "catalog_unavailable")
            return m.error_response(
                "0A000",
                f"pgveil: cannot check this statement: the schema catalog of database "
                f"{self.database!r} is not available ({exc})",
                hint="pgveil loads the catalog as [upstream] catalog_user; check that it can "
                     "connect, then retry.",
            )
        except Exception as exc:  # noqa: BLE001 - a bug must fail closed, not open
            log.exception("decision failed (%s)", type(exc).__name__)
            self.last = _synthetic(sql, "analysis_failed")
            return m.error_response(
                "0A000", "pgveil: this statement could not be analysed",
                hint="This is a pgveil limitation or bug; simplify the statement or report it.")
        if d.reason == "denied_unknown_relation" and d.fingerprint not in self._retried:
            self._retried.add(d.fingerprint)
            raise NeedCatalog()
        self._retried.discard(d.fingerprint)
        if d.temp_pinned and not self._temp_checked.issuperset(d.temp_pinned):
            # a name pgveil's catalog does not know goes as a temporary table's: unless DDL
            # reports keep the catalog current, load it first, once per name, in case
            # someone has just created it
            self._temp_checked.update(d.temp_pinned)
            st = self.runtime.catalogs.get(self.database)
            if st is None or not st.watching:
                raise NeedCatalog()
        if "ddl" in d.kinds and d.unknown_relations:
            self._temp_checked.update(d.unknown_relations)  # this session creates them
        self.last = d
        if d.action != "deny" and (d.session_effects or not _PLAIN_KINDS.issuperset(d.kinds)):
            changes = "search_path" in (d.session_effects or {})
            kinds = set(d.kinds)
            if changes and any(k not in ("set", "reset") for k in d.kinds[1:]):
                # later statements of this string run with the new path: decide them with it
                # (unless all that follows the first statement are settings, which name no
                # relation: SET search_path…; SELECT…; SET work_mem… is decided in pieces)
                whole = d
                d = self._decide_pieces(sql, path)
                if isinstance(d, bytes):
                    return d
                self.last = d = dataclasses.replace(d, fingerprint=whole.fingerprint,
                                                    normalized=whole.normalized)
            if self.stmt_cache is not None and kinds & {"discard", "deallocate"}:
                self.stmt_cache.clear()  # they drop pgveil's cached statements too
            if d.prepared and d.action in ("forward", "rewrite"):
                stale = self._sql_prepared_stale(d, kinds)
                if stale is not None:
                    return stale
            if changes or kinds & {"discard", "reset"} or (
                    self.tx_path_change and "transaction" in kinds):
                self.path_dirty = True
                self.synced_since_dirty = False
                if changes:
                    self.tx_path_change = True
        if d.refresh_catalog:
            self.refresh_after = True
        return d

    def _catalog_version(self) -> int:
        st = self.runtime.catalogs.get(self.database)
        return st.version if st is not None else -1

    def _sql_prepared_stale(self, d: "Decision", kinds: set[str]) -> bytes | None:
        """PREPARE notes the catalog it was checked with; EXECUTE of a statement checked
        with an older catalog is refused: the server analyses it again against the schema
        as it is now, which pgveil did not check (a view redefined by someone else)."""
        version = self._catalog_version()
        if "prepare" in kinds:
            self._sql_prepared[d.prepared] = version  # type: ignore[index]
            return None
        if "execute" not in kinds:
            return None
        then = self._sql_prepared.get(d.prepared)  # type: ignore[arg-type]
        p = self.stmts.prepared.get(d.prepared)  # type: ignore[arg-type]
        if p is not None and then is None:
            then = p.version  # a statement of the extended protocol, by its name
        if then is None or then == version:
            return None
        self.last = _synthetic(d.normalized, "prepared_stale")
        return m.error_response(
            "0A000", f"pgveil: prepared statement {d.prepared!r} was checked before the "
            "schema changed",
            hint="DEALLOCATE it and PREPARE it again: pgveil checks it against the schema as "
                 "it is now.")

    def _decide_pieces(self, sql: str, path: tuple[str, ...]) -> "Decision | bytes":
        """Decide a multi-statement string one statement at a time, following its SETs."""
        import json

        from pglast import parser as pg_parser

        raw = sql.encode()
        stmts = json.loads(pg_parser.parse_sql_json(sql)).get("stmts", [])
        pieces: list["Decision"] = []
        for st in stmts:
            start = st.get("stmt_location", 0)
            end = start + st["stmt_len"] if st.get("stmt_len") else len(raw)
            text = raw[start:end].decode()
            d = self.runtime.decide(text, user=self.user, database=self.database,
                                    search_path=path, settings=self.parameters)
            if d.action != "forward" and d.action != "rewrite":
                self.last = d
                return _denial(d) if d.action == "deny" else m.error_response(
                    "0A000", "pgveil: a statement needing approval must be sent on its own",
                    hint="Send it as a separate query.")
            effect = (d.session_effects or {}).get("search_path", False)
            if effect is None:  # RESET, RESET ALL, SET … TO DEFAULT
                path = self.default_path
            elif effect is not False:
                path = tuple(effect)
            pieces.append(d)
        first = pieces[0]
        texts = [p.sql if p.action == "rewrite" else raw[
            st.get("stmt_location", 0):(st.get("stmt_location", 0) + st["stmt_len"]
                                        if st.get("stmt_len") else len(raw))].decode()
            for p, st in zip(pieces, stmts)]
        rewritten = any(p.action == "rewrite" for p in pieces)
        return dataclasses.replace(
            first, action="rewrite" if rewritten else "forward", sql=";".join(texts),
            kinds=tuple(k for p in pieces for k in p.kinds), kind="multi",
            tables=tuple(dict.fromkeys(t for p in pieces for t in p.tables)),
            masked=tuple(dict.fromkeys(x for p in pieces for x in p.masked)),
            grants_used=tuple(dict.fromkeys(g for p in pieces for g in p.grants_used)),
            session_effects={"search_path": None}, fingerprint=first.fingerprint)

    def function_call(self) -> bytes:
        """A FunctionCall message runs a function named by OID, with no SQL text to check:
        refused for masked users. Returns the error; ``last`` is the audit's record of it."""
        from policy.errors import render

        sqlstate, message, hint = render("denied_function_call")
        self.last = dataclasses.replace(_synthetic("FunctionCall", "denied_function_call"),
                                        sqlstate=sqlstate, message=message, hint=hint)
        return m.error_response(sqlstate, message, hint=hint)

    def _poison(self, error: bytes) -> str:
        token = POISON_PREFIX + secrets.token_hex(8)
        self.poisons[token] = error
        return token

    def _after_decision(self, d: "Decision") -> None:
        if d.masked and self.notice:
            self.outbox.append(_masked_notice(d))
        if d.grants_used:
            for gid in d.grants_used:
                g = self.runtime.grants.get(gid)
                if g is not None:
                    self.inflight.append(g)

    def _approval(self, d: "Decision") -> bytes:
        """An approval decision: hold once (raise), then answer with the request's state."""
        assert d.approval is not None
        seen = self.held.pop(d.approval, None)
        if seen is None:
            raise NeedApproval(d)
        from policy.errors import render

        request, state = seen
        if not request:
            return m.error_response(d.sqlstate or "42501", d.message or "pgveil: approval needed",
                                    hint=state)
        sqlstate, message, hint = render("approval_pending", name=d.reason, request=request,
                                         state=state)
        return m.error_response(sqlstate, message, hint=hint)

    def client_query(self, body: bytes) -> bytes | None:
        """Replacement Query message, or None to forward the original."""
        # PostgreSQL drops the unnamed statement at every simple Query: so do the map's
        # redirections of it (to a cached or re-prepared statement)
        self.stmts.prepared.pop("", None)
        sql = m.decode_query(body)
        plans = self.plans
        if plans is not None and plans.plans and not self.path_dirty and not self.ext_open:
            sent = plans.send(sql, self._context(), self.stmt_cache)  # type: ignore[arg-type]
            if sent is not None:
                d, out, closes = sent
                for _ in range(closes):
                    self.stmts.expect("3", True)
                self.last = d
                self._after_decision(d)
                self.stmts.expect("2", True)
                return out
        d = self._decide(sql)
        if isinstance(d, bytes):
            return m.encode_query(self._poison(d))
        if d.action == "approval":
            return m.encode_query(self._poison(self._approval(d)))
        if d.action == "forward":
            self._after_decision(d)
            return None
        if d.action == "rewrite":
            self._after_decision(d)
            form = d.__dict__.get("param_form")
            if (form is not None and self.stmt_cache is not None and not self.ext_open
                    and not d.grants_used and d.kind == "select"
                    and len(form[1]) <= m.MAX_PARAMETERS):
                out = self._query_as_prepared(*form)
                if (plans is not None and not d.session_effects and not d.refresh_catalog
                        and not self.path_dirty):
                    plans.learn(sql, self._context(), d, form, self._cache_key(*form[:2]))
                return out
            return m.encode_query(d.sql)
        return m.encode_query(self._poison(_denial(d)))

    def _context(self) -> tuple:
        """Everything besides the text that a cached decision of this session depends on
        (the user and database are the guard's own)."""
        st = self.runtime.catalogs.get(self.database)
        p = self.parameters
        return (p.get("search_path"), st.version if st is not None else -1,
                self.runtime.policy_version, self.runtime.grants_version,
                p.get("standard_conforming_strings"), p.get("backslash_quote"))

    def _cache_key(self, sql: str, types) -> tuple:
        st = self.runtime.catalogs.get(self.database)
        return (sql, tuple(types), st.version if st is not None else 0)

    def _cached_statement(self, sql: str, types) -> tuple[list[bytes], str, bool]:
        """Messages to send first (Closes of evicted statements, a Parse if ``sql`` is not
        prepared upstream yet), and the upstream name for ``sql`` with these types."""
        cache = self.stmt_cache
        assert cache is not None
        prefix, closes, name, new = cache.lookup(self._cache_key(sql, types))
        for _ in range(closes):
            self.stmts.expect("3", True)
        out = [prefix]
        if new:
            out.append(m.encode_parse(m.Parse(name, sql, list(types))))
        return out, name, new

    def _query_as_prepared(self, sql: str, types: tuple[int, ...],
                           values: tuple[str, ...]) -> bytes:
        """A masked simple Query as one extended batch on a cached upstream statement."""
        out, name, new = self._cached_statement(sql, types)
        if new:  # its ParseComplete is not the client's
            self.stmts.expect("1", True, _confirmer(self.stmt_cache, name))
        out.append(m.encode_bind_text("", name, values))
        self.stmts.expect("2", True)
        out.append(_DESCRIBE_UNNAMED_PORTAL + _EXECUTE_UNNAMED_ALL + _SYNC_MSG)
        return b"".join(out)

    def client_parse_planned(self, p: m.Parse) -> bytes | None:
        """:meth:`client_parse` when its plan answers the Parse (an unnamed Parse of a text
        already masked and prepared upstream, under the same context); otherwise None,
        with nothing changed."""
        self.stmts.version = self._catalog_version()
        plans = self.plans
        if plans is None or not plans.parses or p.name or self.path_dirty:
            return None
        hit = plans.parse(p.query, p.param_types, self._context(),
                          self.stmt_cache)  # type: ignore[arg-type]
        if hit is None:
            return None
        self.ext_open = True
        d, name, prefix, closes = hit
        for _ in range(closes):
            self.stmts.expect("3", True)
        self.last = d
        self._after_decision(d)
        self.stmts.parsed("", p.query, p.param_types, d, name, None)
        return prefix + _EMPTY_PARSE

    def client_parse(self, p: m.Parse) -> bytes | None:
        self.stmts.version = self._catalog_version()
        if p.name and is_reserved_statement_name(p.name):
            # (Close, then Parse a statement of one's own under the name of a masked one)
            from policy.errors import render

            sqlstate, message, hint = render("denied_reserved_name", name=p.name)
            self.last = dataclasses.replace(_synthetic(p.query, "denied_reserved_name"),
                                            sqlstate=sqlstate, message=message, hint=hint)
            self.stmts.parsed(p.name, p.query, p.param_types, None)
            return m.encode_parse(m.Parse(p.name, self._poison(
                m.error_response(sqlstate, message, hint=hint)), p.param_types))
        planned = self.client_parse_planned(p)
        if planned is not None:
            return planned
        self.ext_open = True
        plans = self.plans
        d = self._decide(p.query, extended=True)
        kept = d if not isinstance(d, bytes) and d.action in ("forward", "rewrite") else None
        if (self.stmt_cache is not None and not p.name and kept is not None
                and d.action == "rewrite" and not d.grants_used):
            # the client's unnamed statement stands for pgveil's cached one; on a hit an
            # empty Parse answers the client's ParseComplete in order
            self._after_decision(d)
            out, name, new = self._cached_statement(d.sql, p.param_types)
            if not new:
                out.append(_EMPTY_PARSE)
                if (plans is not None and not d.session_effects and not d.refresh_catalog
                        and not self.path_dirty and _PLAIN_KINDS.issuperset(d.kinds)):
                    plans.learn_parse(p.query, p.param_types, self._context(), d,
                                      self._cache_key(d.sql, p.param_types))
            self.stmts.parsed("", p.query, p.param_types, kept, name,
                              _confirmer(self.stmt_cache, name) if new else None)
            return b"".join(out)
        self.stmts.parsed(p.name, p.query, p.param_types, kept)
        if isinstance(d, bytes):
            return m.encode_parse(m.Parse(p.name, self._poison(d), p.param_types))
        if d.action == "approval":
            return m.encode_parse(m.Parse(p.name, self._poison(self._approval(d)), p.param_types))
        if d.action == "forward":
            self._after_decision(d)
            return None
        if d.action == "rewrite":
            self._after_decision(d)
            return m.encode_parse(m.Parse(p.name, d.sql, p.param_types))
        return m.encode_parse(m.Parse(p.name, self._poison(_denial(d)), p.param_types))

    def _grants_ended(self, decision) -> bool:
        return bool(decision is not None and decision.grants_used
                    and not self.runtime.grants.all_live(decision.grants_used, time.time()))

    def client_bind(self, body: bytes, portal: str, stmt: str, rest: int = -1) -> bytes | None:
        """Bind (``body``, naming ``portal`` and ``stmt``, its values from ``rest`` on):
        re-prepare its statement if a grant it was prepared under has ended."""
        self.ext_open = True
        sm = self.stmts
        sm.portals[portal] = stmt
        p = sm.prepared.get(stmt)
        if p is None:
            return None
        version = self._catalog_version()
        if p.version != version and not self._grants_ended(p.decision):
            # the schema changed since it was checked (PostgreSQL analyses it again): check
            # it again, and prepare it again if the decision is not the same
            d = self._decide(p.query, extended=True)
            if (not isinstance(d, bytes) and p.decision is not None
                    and d.action == p.decision.action and d.sql == p.decision.sql):
                p.decision, p.version = d, version
                d = None
            else:
                return self._reprepared(p, stmt, body, d, version)
        if self._grants_ended(p.decision):
            return self._reprepared(p, stmt, body, self._decide(p.query, extended=True),
                                    version)
        if p.decision is not None and p.decision.grants_used:
            for gid in p.decision.grants_used:
                g = self.runtime.grants.get(gid)
                if g is not None:
                    self.inflight.append(g)
        if p.upstream != stmt:
            return m.encode_bind_with_statement(body, p.upstream, rest)
        return None

    def _reprepared(self, p, stmt: str, body: bytes, d, version: int) -> bytes:
        """Statement ``stmt`` prepared again upstream with decision ``d``, then the Bind."""
        sm = self.stmts
        p.version = version
        if isinstance(d, bytes):
            text = self._poison(d)
            p.decision = None
        elif d.action not in ("forward", "rewrite"):
            text = self._poison(_denial(d) if d.action == "deny" else self._approval(d))
            p.decision = None
        elif _shape_changes(p.decision, d):
            text = self._poison(m.error_response(
                "0A000", "pgveil: cached plan must not change result type",
                hint="A grant this statement was prepared under has ended, or the schema "
                     "changed, and a column it returned is stripped now; prepare the "
                     "statement again."))
            p.decision = None
        else:
            text = d.sql if d.action == "rewrite" else p.query
            p.decision = d
        return sm.reprepare(stmt, text) + m.encode_bind_with_statement(body, p.upstream)

    def client_execute(self, body: bytes, portal: str) -> bytes | None:
        """Execute (``body``, of ``portal``): a portal bound under a grant that has ended is
        closed first."""
        self.ext_open = True
        stmt = self.stmts.portals.get(portal)
        if stmt is None:
            return None
        p = self.stmts.prepared.get(stmt)
        if p is not None and self._grants_ended(p.decision):
            return self.stmts.close_portal(portal) + m.msg(b"E", body)
        return None

    def client_describe(self, body: bytes) -> bytes | None:
        self.ext_open = True
        what, name = m.decode_describe_or_close(body)
        return self.stmts.describing(what, name)

    def client_close(self, body: bytes) -> bytes | None:
        self.ext_open = True
        what, name = m.decode_describe_or_close(body)
        if what == "S" and is_reserved_statement_name(name) and name not in self.stmts.prepared:
            # not the client's: pgveil's own statement stays (the Close answers as a Close
            # of a statement that does not exist: CloseComplete)
            self.stmts.expect("3", False)
            return m.msg(b"C", b"S" + m.cstr("pgveil refused"))
        return self.stmts.closing(what, name)

    # ------------------------------------------------------------------ server side
    def server_message(self, mtype: int, msg: bytes, idle: bool) -> bytes | None:
        """Replacement for one whole server message (b"" drops it), or None to keep it."""
        if mtype == 49 or mtype == 51 or mtype == 50:  # Parse/Close/BindComplete
            return b"" if self.stmts.answered(mtype) else None
        if mtype == _Z:
            self.stmts.ready()
            self.blocking = False
            if idle:
                self.inflight.clear()
                self.path_dirty = False  # the server has reported any change by now
                if msg[5:6] == b"I":
                    self.tx_path_change = False
            out = None
            if self.outbox:
                out = b"".join(self.outbox) + msg
                self.outbox.clear()
            if idle:
                self.poisons.clear()
            return out
        if self.blocking:
            return b""
        if mtype == _T:
            return self._check_row_description(msg)
        if mtype == _E or mtype == _N:
            fields = m.decode_fields(msg[5:])
            if mtype == _E and self.stmt_cache is not None and (
                    fields.get("C") == "26000" or fields.get("C") == "0A000"
                    and "cached plan" in fields.get("M", "")):
                # a cached statement is gone or its result type changed: start afresh
                self.stmt_cache.clear()
            if mtype == _E and self.poisons:
                text = fields.get("M", "")
                for token in self.poisons:
                    if token in text:
                        return self.poisons.pop(token)
            scrubbed = scrub_error_fields(fields)
            if scrubbed != fields:
                return m.encode_fields(msg[:1], scrubbed)
        return None

    def _sensitive_columns(self) -> dict[int, dict[int, tuple[str, str, tuple[str, ...]]]]:
        st = self.runtime.catalogs.get(self.database)
        if st is None or st.catalog is None:
            return {}
        key = (st.version, self.runtime.policy_version)
        if self._sensitive_version != key:
            self._sensitive = sensitive_columns(st.catalog, self.runtime.policy)
            self._sensitive_version = key
        return self._sensitive

    def _check_row_description(self, msg: bytes) -> bytes | None:
        sensitive = self._sensitive_columns()
        if not sensitive:
            return None
        versions = (self._sensitive_version, self.runtime.grants_version)
        if self._t_ok.get(msg) == versions:
            return None  # the same result shape passed the check under the same grants
        verdict = self._check_known_columns(msg) or self._check_fields(msg, sensitive)
        if verdict is None and not self._has_time_bound_grants():
            if len(self._t_ok) > 256:
                self._t_ok.clear()
            self._t_ok[msg] = versions
        return verdict

    def _has_time_bound_grants(self) -> bool:
        # a grant can expire without a version change: only cache when none covers this user
        return self.runtime.grants.for_user(self.user)

    def _check_known_columns(self, msg: bytes) -> bytes | None:
        """A result column of a relation the catalog knows, at an attribute number it does
        not know: the relation changed after the catalog was loaded (a view given a column by
        someone else), so the statement was decided on a stale catalog. Rows withheld, and
        the catalog is reloaded before the next decision."""
        st = self.runtime.catalogs.get(self.database)
        if st is None or st.catalog is None:
            return None
        relations = st.catalog.relations
        for f in m.decode_row_description(msg[5:]):
            rel = relations.get(f.table_oid) if f.table_oid else None
            if (rel is None or f.attnum <= 0 or not rel.columns
                    or rel.schema in ("pg_catalog", "information_schema")
                    or any(c.attnum == f.attnum for c in rel.columns)):
                continue
            log.warning("wire check: %s has a column pgveil's catalog does not know; rows "
                        "withheld, catalog reloaded", rel.qualified)
            self.blocking = True
            self.runtime.ddl_reported(self.database)
            from policy.errors import render

            sqlstate, message, hint = render("catalog_changed", table=rel.qualified)
            return m.error_response(sqlstate, message, hint=hint)
        return None

    def _check_fields(self, msg: bytes, sensitive) -> bytes | None:
        now = time.time()
        grants = self.runtime.grants
        for f in m.decode_row_description(msg[5:]):
            cols = sensitive.get(f.table_oid)
            if cols is None:
                continue
            hit = cols.get(f.attnum)
            if hit is None and f.attnum == 0 and f.table_oid:
                hit = next(iter(cols.values()))  # a whole-row value of a sensitive table
            if hit is None:
                continue
            table, column, also = hit
            if grants.covers(self.user, table, column, now) or any(
                grants.covers(self.user, t, column, now) for t in also
            ) or any(g.table in (table, *also) and ("*" in g.columns or column in g.columns)
                     for g in self.inflight):
                continue
            log.error("wire check: unmasked sensitive column %s.%s in a result; rows withheld",
                      table, column)
            self.blocking = True
            from policy.errors import render

            sqlstate, message, hint = render("wire_leak", column=column, table=table)
            return m.error_response(sqlstate, message, hint=hint)
        return None


def sensitive_columns(catalog, policy) -> dict[int, dict[int, tuple[str, str, tuple[str, ...]]]]:
    """oid → attnum → (qualified table, column, other tables whose grant lifts it)."""
    plan = catalog.plan_for(policy)
    out: dict[int, dict[int, tuple[str, str, tuple[str, ...]]]] = {}
    for oid, masks in plan.masks.items():
        rel = catalog.relations.get(oid)
        if rel is None:
            continue
        for name, cm in masks.items():
            also = tuple(catalog.relations[o].qualified for o, _ in cm.via if o in catalog.relations)
            out.setdefault(oid, {})[cm.column.attnum] = (rel.qualified, name, also)
    return out


def _shape_changes(before, after) -> bool:
    """A column the old plan returned is stripped in the new one."""
    was = {(t, c) for t, c, k in (before.masked if before is not None else ()) if k == "strip"}
    return any(k == "strip" and (t, c) not in was for t, c, k in after.masked)


def _synthetic(sql: str, reason: str) -> "Decision":
    """A deny record for the audit when no decision could be made."""
    from policy.decision import Decision
    from policy.fingerprint import fingerprint, normalize

    return Decision(action="deny", sql="", kind="unknown", reason=reason,
                    fingerprint=fingerprint(sql), normalized=normalize(sql))


def _denial(d: "Decision") -> bytes:
    return m.error_response(d.sqlstate or "42501", d.message or "pgveil: statement denied",
                            hint=d.hint)


_NOTICES: dict[tuple, bytes] = {}


def _masked_notice(d: "Decision") -> bytes:
    hit = _NOTICES.get(d.masked)
    if hit is None:
        if len(_NOTICES) > 1024:
            _NOTICES.clear()
        hit = _NOTICES[d.masked] = _build_notice(d)
    return hit


def _build_notice(d: "Decision") -> bytes:
    by_table: dict[str, list[str]] = {}
    for table, column, _kind in d.masked:
        cols = by_table.setdefault(table, [])
        if column not in cols:
            cols.append(column)
    shown = ", ".join(f"{t}.{c} ({k})" for t, c, k in d.masked)
    table, cols = next(iter(by_table.items()))
    return m.notice_response(
        f"pgveil: masked columns in this statement: {shown}",
        hint=(f"To see them, request access: REQUEST ACCESS TO {table} ({', '.join(cols)}) "
              "FOR '30 minutes' BECAUSE 'your reason'"),
    )
