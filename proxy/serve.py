"""Run the proxy: event loop, listeners, signals, worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile

from .config import Settings
from .server import ProxyServer, reuseport_socket

log = logging.getLogger("pgveil")


def say(line: str) -> None:
    """A status line on stderr; tests and operators wait for these."""
    print(f"pgveil: {line}", file=sys.stderr, flush=True)


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def run(settings: Settings, *, sock=None, admin: bool = True, ready=None,
              cancel_key: bytes | None = None, worker: int | None = None,
              metrics_dir: str | None = None, workers: int = 1) -> None:
    from .admin import bound_port, start_admin

    server = ProxyServer(settings, cancel_key)
    metrics_socket = None
    if metrics_dir is not None and worker is not None:
        from . import worker_metrics

        if worker == 0:  # serves /metrics: the others' metrics are fetched at scrape time
            server.metrics_peers = {str(i): worker_metrics.socket_path(metrics_dir, i)
                                    for i in range(1, workers)}
        else:
            metrics_socket = await worker_metrics.serve_text(
                worker_metrics.socket_path(metrics_dir, worker), server.metrics.render)
    if settings.audit is not None:
        from .audit.writer import AuditLog

        audit_settings = settings.audit if worker is None else settings.audit.for_worker(worker)
        server.audit = AuditLog(audit_settings)
        await server.audit.start()
        say(f"audit log: {audit_settings.sink} {audit_settings.path if audit_settings.sink == 'file' else ''}".rstrip())
    if settings.jit is not None:
        from .jit.service import JitService

        from .audit.records import RESERVED

        def on_event(kind: str, fields: dict) -> None:
            if server.audit is not None:
                server.audit.event(kind, {(f"jit_{k}" if k in RESERVED else k): v
                                          for k, v in fields.items()})

        server.jit = JitService(settings.jit, server.instance,
                                on_change=server.policy.set_grants, on_event=on_event)
        await server.jit.start()
        server.policy.set_grants(server.jit.grant_set())
    await server.start(sock)
    refresher = asyncio.get_running_loop().create_task(server.policy.refresh_loop())
    for host, port in server.bound:
        say(f"listening on {host}:{port}")
    runner = None
    if admin and settings.admin.listen is not None:
        a = settings.admin.listen
        runner = await start_admin(server, a.host, a.port)
        say(f"admin on http://{a.host}:{bound_port(runner)}")
    if ready is not None:
        ready(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    say(f"shutting down: waiting up to {settings.proxy.shutdown_timeout:g}s for "
        f"{sum(not s.is_idle() for s in server.sessions)} running statements")
    await server.shutdown(settings.proxy.shutdown_timeout)
    refresher.cancel()
    if server.jit is not None:
        await server.jit.close()
    if server.audit is not None:
        await server.audit.close()
    if runner is not None:
        await runner.cleanup()
    if metrics_socket is not None:
        metrics_socket.close()
    say("stopped")


def serve(settings: Settings, workers: int = 1) -> int:
    logging.basicConfig(level=os.environ.get("PGVEIL_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    install_uvloop()
    if workers <= 1:
        asyncio.run(run(settings))
        return 0
    listen = settings.proxy.listen
    sock = reuseport_socket(listen.host, listen.port)
    cancel_key = os.urandom(32)  # shared by the workers, so any of them can route a cancel
    # the workers' metrics sockets, in a folder only this user can enter (mode 0700)
    metrics_dir = tempfile.mkdtemp(prefix="pgveil-metrics-")
    children = []
    for i in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                asyncio.run(run(settings, sock=sock, admin=(i == 0), cancel_key=cancel_key,
                                worker=i, metrics_dir=metrics_dir, workers=workers))
            except BaseException:  # noqa: BLE001 - report it, and let the parent see it
                import traceback

                traceback.print_exc()
                say(f"worker {i} failed")
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    sock.close()
    def forward(signum, _frame):
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    try:
        for pid in children:
            _, status = os.waitpid(pid, 0)
            code = code or os.waitstatus_to_exitcode(status)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return code
