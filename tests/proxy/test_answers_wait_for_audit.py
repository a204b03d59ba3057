"""When the audit writer process lags so far that handed-off intents are still in the
proxy's memory (its pipe is full), answers wait until they are in the pipe: a statement
whose answer reached its client must have its intent outside the proxy.

A session with stand-in sockets and a real audit log with its writer process; the writer
is stopped (SIGSTOP) until its pipe fills, then let go.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from proxy.audit import AuditLog, AuditSettings
from proxy.audit.keys import load_key
from proxy.audit.verify import verify_files
from proxy.config import parse_settings
from proxy.protocol import messages as m
from proxy.protocol.framer import RelayScanner
from proxy.server import ProxyServer
from proxy.session import Session
from proxy.states import READY, TRACKED_INTERESTING
from proxy.tracker import StatementTracker
from tests.proxy.fakes import FakeTransport

_ANSWER = (m.row_description(["n"]) + m.data_row(["1"]) + m.command_complete("SELECT 1")
           + m.ready_for_query(b"I"))


def test_answers_wait_while_intents_are_still_in_the_proxy(tmp_path: Path) -> None:
    settings = AuditSettings(path=str(tmp_path / "a.jsonl"), key_file=str(tmp_path / "a.key"),
                             instance="t", writer="process")
    padding = "x" * 3000  # big statements fill the pipe sooner

    async def main() -> tuple[int, int]:
        log = AuditLog(settings)
        await log.start()
        srv = ProxyServer(parse_settings(""))
        srv.audit = log
        s = Session(srv)
        s.client, s.upstream = FakeTransport(), FakeTransport()
        s.startup = m.StartupMessage(196608, {"user": "postgres", "database": "db"})
        s.parameters = {"search_path": "public", "standard_conforming_strings": "on"}
        s.state = READY
        s.tracker = StatementTracker(s._begin, s._end)
        s._backend = RelayScanner(TRACKED_INTERESTING, 1 << 20)
        writer = log._sink._proc.pid  # type: ignore[attr-defined]
        os.kill(writer, signal.SIGSTOP)
        try:
            sent = 0
            while not log.handoff_lagging:
                assert sent < 5000, "the writer's pipe never filled"
                s.data_received(m.encode_query(f"SELECT 1 AS c_{sent}, '{padding}' AS pad"))
                s.upstream_data(_ANSWER)
                sent += 1
            answered = len(s.client.sent)
            # the pipe is full: this statement's answer must wait
            s.data_received(m.encode_query("SELECT 2 AS c_last"))
            s.upstream_data(_ANSWER)
            assert len(s.client.sent) == answered, "an answer left before its intent did"
            assert s._answers_held is not None
        finally:
            os.kill(writer, signal.SIGCONT)
        await asyncio.wait_for(s._answers_task, 30)  # type: ignore[arg-type]
        assert s._answers_held is None
        # delivered once the intents were handed off: the answer of the statement whose
        # hand-off found the pipe full, and the last one
        assert b"".join(s.client.sent[answered:]) == _ANSWER * 2
        await log.flush(30)
        await log.close()
        return sent, log.handoffs_stalled

    sent, stalled = asyncio.run(main())
    assert stalled >= 1
    report = verify_files(settings.path, load_key(settings.key_file))
    assert report.ok, report
    assert report.records == 2 + 2 * (sent + 1)  # start, stop, intent+completion each
