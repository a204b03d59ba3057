"""The admin HTTP API and the approver page, mounted on the admin listener's aiohttp app.

``add_routes(app, service=..., tokens=...)`` adds:

- ``/api/requests`` (POST opens a request, GET lists), ``/api/requests/{id}``,
  ``/api/requests/{id}/approve``, ``/api/requests/{id}/deny``, ``/api/requests/{id}/cancel``,
  ``/api/grants`` (GET lists, POST grants directly), ``/api/grants/{id}`` (DELETE revokes),
  ``/api/uses`` — JSON, ``Authorization: Bearer <token>``;
- ``/`` — the approver page (sign in with a token; approve, deny, revoke).

The service is a :class:`proxy.jit.service.JitService`; ``exposure(table)`` estimates how
many rows a grant on ``table`` would expose (sync or async; None when unknown).
"""

from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from .api import add_api_routes
from .auth import (ROLES, Identity, SessionStore, TokenAuthority, TokenConfigError, TokenSpec,
                   hash_token, tokens_from_config)
from .page import add_page_routes
from .state import WEB_STATE, WebState

__all__ = ["add_routes", "TokenSpec", "TokenConfigError", "tokens_from_config", "hash_token",
           "ROLES", "Identity", "WEB_STATE"]


def add_routes(app: web.Application, *, service: Any, tokens: list[TokenSpec],
               exposure: Callable[[str], Any] | None = None,
               session_idle_seconds: float = 3600.0,
               session_max_seconds: float = 12 * 3600.0) -> None:
    """Mount the API and the approver page on ``app`` (before it starts)."""
    app[WEB_STATE] = WebState(
        service=service, authority=TokenAuthority(tokens),
        sessions=SessionStore(idle_seconds=session_idle_seconds,
                              max_seconds=session_max_seconds),
        exposure=exposure)
    add_api_routes(app)
    add_page_routes(app)
