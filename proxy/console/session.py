"""Session part: the console database, answered by pgveil itself.

After a client that asked for the console database has authenticated against the upstream
(as ``[proxy] console_auth_database``), the upstream connection is closed and each simple
Query is run by :class:`proxy.console.handler.ConsoleHandler`.
"""

from __future__ import annotations

import asyncio
import logging

from ..protocol import messages as m

log = logging.getLogger("pgveil.session")
_X, _Q, _SYNC = b"XQS"


class ConsoleMixin:
    """Methods of :class:`proxy.session.Session` for console sessions."""

    def _console_ready(self, data: bytes) -> None:
        """The console database: simple-protocol commands answered by pgveil itself."""
        buf, upto, spans = self._frontend.feed_spans(data)
        for i, (mtype, start, stop) in enumerate(spans):
            if mtype == _X:
                self.terminated = True
                self.close()
                return
            if mtype == _Q:
                text = m.decode_query(buf[start + 5 : stop])
                self._backlog = b"".join(buf[a:b] for _, a, b in spans[i + 1 :]) + \
                    self._frontend.take_buffered() + self._backlog
                self._hold(asyncio.get_running_loop().create_task(self._console_query(text)))
                return
            if mtype == _SYNC:
                self._console_failed = False
                self.client.write(m.ready_for_query(b"I"))  # type: ignore[union-attr]
            elif not self._console_failed and mtype != 72:  # 'H' Flush needs no answer
                self._console_failed = True
                self.client.write(m.error_response(  # type: ignore[union-attr]
                    "0A000", "pgveil console: only the simple query protocol is supported",
                    hint="Use psql, or your driver's simple-query mode."))

    async def _console_query(self, text: str) -> None:
        try:
            reply = await self.console.run(text)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - a console bug must not kill the proxy
            log.exception("console command failed")
            reply = m.error_response("XX000", f"pgveil console: internal error ({type(exc).__name__})")
        audit = self.server.audit
        if audit is not None and audit._unsent:
            audit.handoff()  # the command's intent leaves before its answer
        if self.client is not None and not self.client.is_closing():
            self.client.write(reply + m.ready_for_query(b"I"))
