"""What the admin web handlers share, stored on the aiohttp application."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web

from .auth import SessionStore, TokenAuthority


@dataclass
class WebState:
    service: Any                       # proxy.jit.service.JitService (or a stand-in)
    authority: TokenAuthority
    sessions: SessionStore
    exposure: Callable[[str], Any] | None = None


WEB_STATE: web.AppKey[WebState] = web.AppKey("pgveil_web_state", WebState)


def get_state(app: web.Application) -> WebState:
    return app[WEB_STATE]
