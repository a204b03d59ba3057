"""The admin HTTP listener (aiohttp): ``/healthz`` now; the API, page and metrics later."""

from __future__ import annotations

from aiohttp import web

from .server import ProxyServer


def build_app(server: ProxyServer) -> web.Application:
    app = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        if server.closing:
            return web.Response(status=503, text="shutting down\n")
        return web.Response(text="ok\n")

    app.router.add_get("/healthz", healthz)
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
