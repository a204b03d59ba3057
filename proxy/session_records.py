"""Session part: audit records and statement metrics.

The statement tracker calls ``_begin`` when a statement is sent (the audit intent, then the
counters) and ``_end`` when it is answered (the completion and the duration). Records are
built from JSON fragments cached per session and per statement decision, so the hot path
never calls ``json.dumps``. Exempt users' statements are classified (kind, tables,
literal-free text) here too.
"""

from __future__ import annotations

import json
import logging
import time

from policy.skeleton import split_texts

from .protocol import messages as m

log = logging.getLogger("pgveil.session")


class RecordsMixin:
    """Methods of :class:`proxy.session.Session` for audit and metrics."""

    async def _forward_when_durable(self, rid: int, data: bytes) -> None:
        from .audit.errors import AuditUnavailable as _Down

        try:
            ok = await self.server.audit.durable(rid)  # type: ignore[union-attr]
        except _Down:
            ok = False
            if self.server.audit.settings.on_failure == "fail_closed":  # type: ignore[union-attr]
                # the intent is not durable: the statement must not run (fail closed)
                from policy.errors import render

                sqlstate, message, hint = render("audit_unavailable")
                self.server.metrics.denials.labels("audit_unavailable").inc()
                self.fatal(sqlstate, message, hint=hint)
                return
        if not ok:
            log.warning("audit record %d is not durable (on_failure = continue)", rid)
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.write(data)

    def _logs_literals(self) -> bool:
        audit = self.server.audit
        return audit is not None and audit.settings.include_literals

    def _raw_if_logged(self, body: bytes) -> str | None:
        audit = self.server.audit
        if audit is not None and audit.settings.include_literals:
            return m.decode_query(body)
        return None

    def _classify(self, sql: str):
        """The decision record of a statement that is forwarded as it is (exempt users).

        Kept per session by skeleton once the runtime vouched for that skeleton, with what
        the classification depends on: the search_path the server reports and the
        catalog version."""
        runtime = self.server.policy
        fast = split_texts(sql)
        # a skeleton holds "\0" where literals were, so it never equals another exact text
        # (a text without literals is its own skeleton: the same statement either way)
        key = fast[0] if fast is not None else sql
        st = runtime.catalogs.get(self.database)
        context = (self.parameters.get("search_path"), st.version if st is not None else 0)
        hit = self._classified.get(key)
        if hit is not None and hit[0] == context:
            return hit[1]
        d, skeleton = runtime.classify_keyed(sql, user=self.user, database=self.database,
                                             parameters=self.parameters)
        if fast is None or skeleton == key:  # the exact text, or a skeleton vouched for
            if len(self._classified) >= 256:
                self._classified.clear()
            self._classified[key] = (context, d)
        return d

    def _unknown_statement(self):
        return self.server.policy.unknown_statement()

    def _poison(self, error: bytes) -> str:
        if self.guard is not None:
            return self.guard._poison(error)
        from .guard import POISON_PREFIX
        import secrets

        token = POISON_PREFIX + secrets.token_hex(8)
        self.poisons[token] = error
        return token

    def _audit_down(self) -> bytes:
        from policy.errors import render

        self.server.metrics.denials.labels("audit_unavailable").inc()
        sqlstate, message, hint = render("audit_unavailable")
        return m.error_response(sqlstate, message, hint=hint)

    def _begin(self, info, extended: bool, raw: str | None = None) -> int:
        """A statement is sent: write its audit intent (may raise), then count it."""
        cached = info.__dict__  # per-decision cache: decisions are shared, and immutable
        audit = self.server.audit
        rid = 0
        if audit is not None:
            stmt = cached.get("_audit_frag")
            if stmt is None:
                stmt = cached["_audit_frag"] = statement_fragment(info)
            frag = (self._audit_frag or self._session_fragment()) + (
                b'"protocol":"extended",' if extended else b'"protocol":"simple",') + stmt
            if raw is not None and audit.settings.include_literals:
                if isinstance(raw, dict):  # extended: the Parse text and the Bind values
                    frag += b',"sql":' + json.dumps(raw.get("sql"), ensure_ascii=False).encode()
                    frag += b',"params":' + json.dumps(raw.get("params"),
                                                       ensure_ascii=False).encode()
                else:
                    frag += b',"sql":' + json.dumps(raw, ensure_ascii=False).encode()
            if info.kind == "select" and (self._forwarded or audit.takes_forwarded):
                # a query (fsync = "batch"): its intent waits here for the outcome, and both
                # go as one "statement" record — unless an answer is about to reach the
                # client first, or a group commit comes (see _flush_deferred). Anything else
                # has its intent queued now (in the writer's hands at once)
                rid = [frag, time.time()]
                if not self._deferred_n:
                    audit.defer(self)
                self._deferred_n += 1
            elif self._forwarded:
                rid = audit.intent_after_forward(frag)
            else:
                rid = audit.intent_encoded(frag)
                self._last_rid = rid
        counter = cached.get("_stmt_counter")
        if counter is None:
            counter = cached["_stmt_counter"] = self.server.metrics.statement(
                info.kind or "other", info.action)
        counter.value += 1
        if info.action == "deny":
            self.server.metrics.denials.labels(info.reason or "denied").inc()
        if info.masked:
            self.server.metrics.masked_columns.inc(len(info.masked))
        if info.grants_used:
            self.server.metrics.grant_uses.inc()
            jit = self.server.jit
            if jit is not None:
                for gid in info.grants_used:
                    jit.record_use(gid)
        return rid

    def _session_fragment(self) -> bytes:
        frag = self._audit_frag
        if frag is None:
            frag = self._audit_frag = json.dumps({
                "session": self.session_id, "client": self.peer, "user": self.user,
                "database": self.database,
                "application_name": self.parameters.get("application_name") or None,
            }, ensure_ascii=False, separators=(",", ":"))[1:-1].encode() + b","
        return frag

    def _end(self, running, executed: bool) -> None:
        elapsed = time.perf_counter() - running.started
        self.server.metrics.duration.observe(elapsed)
        audit = self.server.audit
        ref = running.ref
        if audit is not None and ref:
            sqlstate = running.sqlstate or ("00000" if executed else "skipped")
            outcome = b'"rows":%d,"duration_ms":%.3f,"sqlstate":"%s"' % (
                running.rows if executed else 0, elapsed * 1000, sqlstate.encode())
            if type(ref) is list:  # a deferred intent: one record for both
                self._deferred_n -= 1
                audit.statement_encoded(ref[0], ref[1], outcome)
            else:
                audit.complete_encoded(ref, outcome + b',"session":"%s"' % self.session_id.encode())

    def _flush_deferred(self) -> None:
        """Queue the intents still deferred (see ``_begin``) as intent records: their
        statements' answers are about to reach the client, or a group commit is due."""
        n, self._deferred_n = self._deferred_n, 0
        tracker = self.tracker
        if not n or tracker is None:
            return
        audit = self.server.audit
        for item in tracker.queue:
            if item is not None and type(item.ref) is list:
                item.ref = audit.intent_deferred(item.ref[0], item.ref[1])  # type: ignore[union-attr]


_FRAGMENTS: dict[tuple, bytes] = {}


def statement_fragment(info) -> bytes:
    """The audit JSON members of a statement decision, cached by what they contain."""
    key = (info.fingerprint, info.action, info.kind, info.tables, getattr(info, "columns", ()), info.masked,
           info.grants_used, info.reason)
    frag = _FRAGMENTS.get(key)
    if frag is None:
        if len(_FRAGMENTS) > 4096:
            _FRAGMENTS.clear()
        frag = _FRAGMENTS[key] = json.dumps({
            "fingerprint": info.fingerprint, "normalized": info.normalized,
            "decision": info.action, "kind": info.kind, "tables": list(info.tables),
            "columns": list(getattr(info, "columns", ())),
            "masked": [f"{t}.{c}" for t, c, _ in info.masked],
            "grants": list(info.grants_used), "reason": info.reason,
        }, ensure_ascii=False, separators=(",", ":"))[1:-1].encode()
    return frag
