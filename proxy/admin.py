"""The admin HTTP listener (aiohttp): ``/healthz``, ``/metrics``, and with ``[jit]`` the
approval API and approver page (``proxy/web``)."""

from __future__ import annotations

from aiohttp import web

from .server import ProxyServer


def build_app(server: ProxyServer) -> web.Application:
    app = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        if server.closing:
            return web.Response(status=503, text="shutting down\n")
        problems = []
        if server.audit is not None and not server.audit.healthy:
            problems.append("audit sink failing")
        if server.jit is not None and not server.jit.healthy:
            problems.append("state store unreachable")
        if problems:
            return web.Response(status=503, text="; ".join(problems) + "\n")
        return web.Response(text="ok\n")

    async def metrics(request: web.Request) -> web.Response:
        body = server.metrics.render()
        peers = getattr(server, "metrics_peers", None)
        if peers:  # --workers N: the other workers' metrics too, labelled by worker
            from .worker_metrics import gather_and_merge

            body = await gather_and_merge(body, peers)
        return web.Response(body=body,
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    if server.jit is not None:
        from .web import add_routes

        add_routes(app, service=server.jit, tokens=server.settings.admin_tokens,
                   exposure=server.policy.exposure)
    return app


async def start_admin(server: ProxyServer, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(server), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return server.sockets[0].getsockname()[1]
    return 0
