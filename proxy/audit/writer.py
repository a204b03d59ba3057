"""``AuditLog``: the proxy's one handle on the audit trail.

The query path only ever *enqueues*: ``intent``/``complete``/``event`` give the record its
``seq`` and timestamp and append its JSON — without the ``prev`` and ``mac`` members — to
an in-memory queue: no hashing, no I/O, under a microsecond. The ``seq`` fixes the order:
the log's order is the order of the calls.

One background task drains the queue into the sink: it takes everything queued and hands it
to the sink as one batch. By default the sink is the audit writer process
(:mod:`.child`, ``writer = "process"``), which chains and seals the batch (:mod:`.sealing`)
and writes it (one write + one fsync) on another core; with ``writer = "thread"`` (and for
the stdout sink) the task seals the batch itself and the sink writes it on its own thread.
Meanwhile new records pile up for the next batch. That is group commit: under load batches grow, fsyncs
per record shrink, and nothing on the event loop waits for the disk.

Durability and failure:

* ``fsync = "always"``: the session ``await log.durable(rid)`` before it forwards the
  statement (``log.wait_before_forward`` says whether to). ``"batch"``: it does not wait;
  the record is durable one group commit later.
* When the sink fails, ``healthy`` turns False and the writer retries (backoff up to 2 s,
  reopening the sink) until it works again; nothing queued is lost while the process lives,
  and a record is never dropped once it has a ``seq`` (the chain stays whole).
* ``on_failure = "fail_closed"``: while unhealthy, ``intent`` raises
  :class:`AuditUnavailable` and the session refuses the statement; ``durable`` waiters get
  the same error. ``"continue"``: statements go on; records that do not fit in the queue
  (``max_pending``) are dropped *before* they get a ``seq``, counted in ``dropped``, and a
  ``records_dropped`` event with the count is logged once records fit again.

Use from the event loop's thread only.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import itertools
import logging
import os
import time
from collections import deque
from typing import Any, Mapping

from . import records
from .errors import AuditUnavailable
from .keys import key_id, load_or_create_key
from .records import Sealer, StatementIntent, StatementResult
from .sealing import seal_prefixes
from .settings import AuditSettings
from .sinks import Sink, make_local_sink, make_sink

log = logging.getLogger("pgveil.audit")

MAX_BATCH_RECORDS = 10_000
BATCH_DELAY = 0.010  # fsync = "batch": seconds a group commit waits for more records
MAX_BATCH_BYTES = 8 * 1024 * 1024
STALL_SECONDS = 30.0            # a sink that has not acknowledged anything for this long is unhealthy
BACKOFF_START, BACKOFF_MAX = 0.05, 2.0


class AuditLog:
    """Tamper-evident, group-committed audit log. See the module docstring."""

    def __init__(self, settings: AuditSettings, *, sink: Sink | None = None,
                 key: bytes | None = None) -> None:
        self.settings = settings
        explicit_key = key is not None
        key = key if key is not None else load_or_create_key(settings.key_file)
        self.key_id = key_id(key)
        self._sealer = Sealer(key)
        if sink is None:
            # the writer process reads the key from key_file: a key handed in directly
            # (tests, tools) stays with a sink in this process
            sink = (make_local_sink(settings, self._sealer) if explicit_key
                    else make_sink(settings, self._sealer))
        self._sink = sink
        self._fail_closed = settings.on_failure == "fail_closed"
        self._batch_delay = BATCH_DELAY if settings.fsync == "batch" else 0.0
        self._instance_json = json.dumps(settings.instance, ensure_ascii=False).encode()
        self._literals = settings.include_literals
        self._sink_seals = bool(getattr(self._sink, "seals", False))
        # a sink in another process takes each record as it is queued (shared memory, see
        # handoff): it survives the proxy from then on
        self._hands_off = callable(getattr(self._sink, "put", None))
        self._unsent: list[bytes] = []  # prefixes queued that the sink could not take yet
        self._unsent_first = 0  # the seq of _unsent[0]
        self._deferring: set[Any] = set()  # sessions holding intents back (see defer)
        # the next seq to give out, and the chain's tip (hash of the last *written* line,
        # used when this process seals; a sealing sink keeps its own)
        self._next_seq = 1
        self._prev = records.GENESIS
        # queue of (seq, record prefix without prev/mac, enqueued at monotonic)
        self._queue: deque[tuple[int, bytes, float]] = deque()
        self._durable_seq = 0
        self._waiters: list[tuple[int, int, asyncio.Future[bool], bool]] = []
        self._tiebreak = itertools.count()
        self._wake = asyncio.Event()
        self._woken = False  # _wake was set since the writer last cleared it
        self._task: asyncio.Task[None] | None = None
        self._opened = False
        self._closing = False
        self._sink_closed = False
        self._error: str | None = None
        self._unreported_drops = 0
        self.written = 0
        self.dropped = 0
        self.batches = 0

    # -- state for the proxy and for metrics ----------------------------------------------
    @property
    def healthy(self) -> bool:
        """False while the sink is not open, failing, stalled, or the queue is full."""
        return (
            self._opened
            and not self._closing
            and self._error is None
            and len(self._queue) < self.settings.max_pending
            and self.lag_seconds < STALL_SECONDS
        )

    @property
    def last_error(self) -> str | None:
        """Why the log is unhealthy (None when it is healthy)."""
        if self._error is not None:
            return self._error
        if not self._opened:
            return "audit log not started"
        if self._closing:
            return "audit log closed"
        if len(self._queue) >= self.settings.max_pending:
            return f"audit queue full ({len(self._queue)} records not yet written)"
        if self.lag_seconds >= STALL_SECONDS:
            return f"audit sink stalled: nothing written for {self.lag_seconds:.0f} s"
        return None

    @property
    def lag_seconds(self) -> float:
        """Age of the oldest record not yet durable (0 when all are)."""
        return time.monotonic() - self._queue[0][2] if self._queue else 0.0

    @property
    def handoffs_stalled(self) -> int:
        """Records the writer process's ring could not take at once (the writer lagged a
        ring behind): they waited in the proxy (see :mod:`.sinks.child`)."""
        return getattr(self._sink, "stalled", 0)

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def last_seq(self) -> int:
        """The last durable seq: export it (metrics) as an outside copy of the head."""
        return self._durable_seq

    @property
    def wait_before_forward(self) -> bool:
        """Whether the session must ``await durable(rid)`` before forwarding."""
        return self.settings.fsync == "always"

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, *, strict: bool = True) -> None:
        """Open the sink and start the writer task.

        ``strict``: raise :class:`AuditUnavailable` if the sink cannot be opened (what
        ``serve`` wants: a clear error at startup). Otherwise come up unhealthy and keep
        retrying in the background.
        """
        if self._task is not None:
            return
        try:
            await self._open()
        except Exception as exc:
            self._error = f"cannot open {self._sink.describe()}: {_reason(exc)}"
            if strict:
                self._sink_closed = True
                await self._sink.close()
                raise AuditUnavailable(self._error) from exc
            log.error("audit: %s", self._error)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pgveil-audit-writer")

    async def _open(self) -> None:
        tip = await self._sink.open()
        self._next_seq, self._prev = tip.seq + 1, tip.hash
        self._durable_seq = tip.seq
        self._opened, self._error = True, None
        for note in tip.notes:
            kind = note.pop("event")
            self._append("event", {"event": kind, **note})
        self._append("event", {"event": "start", "pid": os.getpid(), "key_id": self.key_id,
                               "sink": self._sink.name, "fsync": self.settings.fsync})

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything enqueued so far is durable, deferred intents included;
        raise if the sink is failing."""
        self._take_deferred()
        if self._next_seq - 1 > self._durable_seq:
            await asyncio.wait_for(self._wait(self._next_seq - 1, fail=True), timeout)

    async def close(self, timeout: float = 10.0) -> None:
        """Log ``stop``, flush (up to ``timeout``), stop the writer and close the sink.

        Close the sessions first: from here on new records are refused (or dropped)."""
        if self._closing:
            return
        self._take_deferred()
        if self.healthy:
            self._append("event", {"event": "stop"})
        self._closing = True
        try:
            await self.flush(timeout)
        except (AuditUnavailable, asyncio.TimeoutError) as exc:
            log.error("audit: closing with %d records not written: %s", len(self._queue), exc)
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._fail_waiters(AuditUnavailable("audit log closed"))
        if not self._sink_closed:
            self._sink_closed = True
            await self._sink.close()

    # -- the API of the query path --------------------------------------------------------
    def intent(self, fields: Mapping[str, Any] | StatementIntent) -> int:
        """Record a statement about to run; returns its ``rid`` (its seq), 0 if dropped."""
        if not self.healthy and self._fail_closed:
            raise AuditUnavailable(self.last_error or "")
        data = fields.to_fields() if isinstance(fields, StatementIntent) else fields
        return self._enqueue("intent", data)

    def complete(self, rid: int, fields: Mapping[str, Any] | StatementResult) -> int:
        """Record a statement's outcome, linked to its intent by ``rid``. Never raises for
        sink trouble (the statement has run: its outcome is queued, or counted as dropped)."""
        if rid <= 0:
            return 0
        data = fields.to_fields() if isinstance(fields, StatementResult) else dict(fields)
        return self._enqueue("complete", {"rid": rid, **data})

    # -- the hot path: records from pre-encoded JSON fragments ---------------------------------
    @property
    def takes_forwarded(self) -> bool:
        """Whether a statement may go upstream before its intent is queued: the log takes
        records now, without waiting for durability, and logs no literals. Checked right
        before forwarding; the intents queued right after cannot be refused
        (:meth:`intent_after_forward`), so nothing runs unrecorded."""
        q = self._queue
        return (self._error is None and self._opened and not self._closing
                and not self._unreported_drops and not self._literals
                and self._batch_delay and len(q) < self.settings.max_pending
                and (not q or time.monotonic() - q[0][2] < STALL_SECONDS))

    def intent_after_forward(self, fragment: bytes) -> int:
        """The intent of a statement forwarded after :attr:`takes_forwarded` said yes in
        the same turn of the loop: queued even if the queue just filled up."""
        if not self._opened or self._closing:
            self.dropped += 1
            self._unreported_drops += 1
            return 0
        return self._push(b"intent", fragment)

    def intent_encoded(self, fragment: bytes) -> int:
        """Like :meth:`intent`, for a body already encoded as JSON members (``"k":v,...``,
        no braces, no reserved keys, no literal fields). The session caches the fragments
        of its own fields and of each statement, so a record costs no ``json.dumps``."""
        q = self._queue
        if (self._error is None and self._opened and not self._closing
                and not self._unreported_drops and len(q) < self.settings.max_pending
                and (not q or time.monotonic() - q[0][2] < STALL_SECONDS)):
            return self._push(b"intent", fragment)  # healthy: the common case, inlined
        if not self.healthy and self._fail_closed:
            raise AuditUnavailable(self.last_error or "")
        return self._enqueue_encoded(b"intent", fragment)

    def complete_encoded(self, rid: int, fragment: bytes) -> int:
        if rid <= 0:
            return 0
        fragment = b'"rid":%d,%s' % (rid, fragment)
        if (self._opened and not self._closing and not self._unreported_drops
                and len(self._queue) < self.settings.max_pending):
            return self._push(b"complete", fragment)
        return self._enqueue_encoded(b"complete", fragment)

    def defer(self, holder: Any) -> None:
        """``holder`` (a session) keeps intents back to merge them with their outcomes
        (see :meth:`statement_encoded`): the next group commit calls its
        ``_flush_deferred``, so a statement still running then has its intent written."""
        self._deferring.add(holder)
        if not self._woken:
            self._woken = True
            self._wake.set()

    def _take_deferred(self) -> None:
        if self._deferring:
            holders, self._deferring = self._deferring, set()
            for holder in holders:
                holder._flush_deferred()

    def intent_deferred(self, fragment: bytes, ts: float) -> int:
        """A deferred intent (of a statement already forwarded) queued on its own, with
        the time it was sent: its outcome will follow as a ``complete`` record."""
        if not self._opened or self._closing:
            self.dropped += 1
            self._unreported_drops += 1
            return 0
        return self._push(b"intent", fragment, ts)

    def statement_encoded(self, fragment: bytes, ts: float, outcome: bytes) -> int:
        """One ``statement`` record: a deferred intent's members (``ts`` = when it was
        sent) and its outcome's, for a statement that ended before its intent had to be
        queued alone. Never raises (the statement has run)."""
        fragment = b"%s,%s" % (fragment, outcome)
        if (self._opened and not self._closing and not self._unreported_drops
                and len(self._queue) < self.settings.max_pending):
            return self._push(b"statement", fragment, ts)
        return self._enqueue_encoded(b"statement", fragment)

    def _push(self, type_: bytes, fragment: bytes, ts: float | None = None) -> int:
        seq = self._next_seq
        self._next_seq = seq + 1
        prefix = b'{"seq":%d,"ts":"%s","instance":%s,"type":"%s",%s' % (
            seq, records.utc_timestamp_bytes(time.time() if ts is None else ts),
            self._instance_json, type_, fragment)
        self._queue.append((seq, prefix, time.monotonic()))
        if self._hands_off and (self._unsent or not self._sink.put(seq, prefix)):  # type: ignore[attr-defined]
            self._add_unsent(seq, prefix)
        if not self._woken:
            self._woken = True
            self._wake.set()
        return seq

    # -- hand-off to a writer process ----------------------------------------------------
    def _add_unsent(self, seq: int, prefix: bytes) -> None:
        if not self._unsent:
            self._unsent_first = seq
        self._unsent.append(prefix)

    def handoff(self) -> None:
        """Give the writer process the records it could not take when they were queued
        (its ring was full, or it was restarting). Sessions call it when ``_unsent`` is not
        empty before they write answers to their client, so a statement's intent has left
        this process before any of its answer has whenever the ring has room; what is left
        goes with the next group commit."""
        unsent = self._unsent
        if unsent:
            done = self._sink.put_many(self._unsent_first, unsent)  # type: ignore[attr-defined]
            if done >= len(unsent):
                self._unsent = []
            elif done:
                del unsent[:done]
                self._unsent_first += done

    def _enqueue_encoded(self, type_: bytes, fragment: bytes) -> int:
        if (not self._opened or self._closing or self._unreported_drops
                or len(self._queue) >= self.settings.max_pending):
            if self._unreported_drops and self._opened and not self._closing and len(
                    self._queue) < self.settings.max_pending:
                count, self._unreported_drops = self._unreported_drops, 0
                self._append("event", {"event": "records_dropped", "count": count})
            else:
                self.dropped += 1
                self._unreported_drops += 1
                return 0
        return self._push(type_, fragment)

    def event(self, kind: str, fields: Mapping[str, Any] | None = None, /, *,
              must: bool = False, **more: Any) -> int:
        """Record an event (request, approval, grant use…). ``must``: raise like ``intent``
        instead of dropping when the log cannot take it."""
        if must and not self.healthy and self._fail_closed:
            raise AuditUnavailable(self.last_error or "")
        return self._enqueue("event", {"event": kind, **(fields or {}), **more})

    async def durable(self, rid: int, timeout: float | None = None) -> bool:
        """Wait until record ``rid`` is durable. True when it is; in ``continue`` mode False
        if the sink is failing (do not hold statements for a dead sink); in ``fail_closed``
        mode :class:`AuditUnavailable` instead."""
        if rid <= self._durable_seq:
            return True
        if self._error is not None or not self._opened or self._closing:
            if self._fail_closed:
                raise AuditUnavailable(self.last_error or "")
            return False
        return await asyncio.wait_for(self._wait(rid, fail=self._fail_closed), timeout)

    # -- internals ------------------------------------------------------------------------
    def _enqueue(self, type_: str, fields: Mapping[str, Any]) -> int:
        if not self._opened or self._closing or len(self._queue) >= self.settings.max_pending:
            self.dropped += 1
            self._unreported_drops += 1
            return 0
        if self._unreported_drops:
            count, self._unreported_drops = self._unreported_drops, 0
            self._append("event", {"event": "records_dropped", "count": count})
        return self._append(type_, fields)

    def _append(self, type_: str, fields: Mapping[str, Any]) -> int:
        seq = self._next_seq
        rec = records.build(seq, self.settings.instance, type_, fields, "",
                            include_literals=self._literals)
        del rec["prev"]  # sealing appends prev and mac (see .sealing)
        self._next_seq = seq + 1
        prefix = records.encode(rec)[:-1]
        self._queue.append((seq, prefix, time.monotonic()))
        if self._hands_off and (self._unsent or not self._sink.put(seq, prefix)):  # type: ignore[attr-defined]
            self._add_unsent(seq, prefix)
        self._wake.set()
        return seq

    def _wait(self, seq: int, *, fail: bool) -> asyncio.Future[bool]:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (seq, next(self._tiebreak), fut, fail))
        return fut

    def _release_waiters(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._durable_seq:
            _, _, fut, _ = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(True)

    def _fail_waiters(self, exc: AuditUnavailable) -> None:
        """The sink failed: fail-closed waiters get ``exc``, the others are told False."""
        waiters, self._waiters = self._waiters, []
        for _, _, fut, fail in waiters:
            if fut.done():
                continue
            if fail:
                fut.set_exception(exc)
            else:
                fut.set_result(False)

    async def _run(self) -> None:
        backoff = BACKOFF_START
        while True:
            if not self._opened:
                try:
                    await self._open()
                    log.warning("audit: %s open again", self._sink.describe())
                    backoff = BACKOFF_START
                except Exception as exc:
                    self._error = f"cannot open {self._sink.describe()}: {_reason(exc)}"
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
            if not self._queue and not self._deferring:
                if self._closing:
                    return
                self._wake.clear()
                self._woken = False
                await self._wake.wait()
                continue
            if (self._batch_delay and not self._closing and not self._waiters
                    and len(self._queue) < MAX_BATCH_RECORDS):
                # group commit: let a few milliseconds of records gather, so one write and
                # one fsync serve many statements instead of one or two
                await asyncio.sleep(self._batch_delay)
            self._take_deferred()  # statements still running: their intents go now
            if not self._queue:
                continue
            batch = [item[1] for item in itertools.islice(self._queue, MAX_BATCH_RECORDS)]
            if sum(map(len, batch)) > MAX_BATCH_BYTES:  # rare: huge records (include_literals)
                nbytes, keep = 0, 0
                for line in batch:
                    if keep and nbytes + len(line) > MAX_BATCH_BYTES:
                        break
                    nbytes += len(line)
                    keep += 1
                del batch[keep:]
            first = self._queue[0][0]
            try:
                if self._sink_seals:
                    await self._sink.write(first, batch)
                else:
                    lines, tip = seal_prefixes(self._sealer, self._prev, batch)
                    await self._sink.write(first, lines)
                    self._prev = tip
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                first_failure = self._error is None
                self._error = f"cannot write {self._sink.describe()}: {_reason(exc)}"
                if first_failure:
                    log.error("audit: %s", self._error)
                self._fail_waiters(AuditUnavailable(self._error))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if self._error is not None:
                log.warning("audit: %s writable again", self._sink.describe())
            self._error = None
            backoff = BACKOFF_START
            popleft = self._queue.popleft
            for _ in range(len(batch)):
                popleft()
            self._durable_seq = first + len(batch) - 1
            if self._unsent:  # what the group commit sent needs no hand-off any more
                done = self._durable_seq - self._unsent_first + 1
                if done >= len(self._unsent):
                    self._unsent = []
                elif done > 0:
                    del self._unsent[:done]
                    self._unsent_first += done
                self.handoff()  # the commit freed ring space: the rest goes in now
            self.written += len(batch)
            self.batches += 1
            self._release_waiters()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__
