"""Just-in-time access: requests, approvals, grants, their state store and webhooks.

- :mod:`.settings` — ``[jit]``, ``[state]``, ``[[webhooks]]`` from the config file;
- :mod:`.durations` — "30 minutes" → seconds;
- :mod:`.model` — :class:`Request` and :class:`GrantRecord`;
- :mod:`.store` / :mod:`.store_pg` — SQLite (embedded, default) and PostgreSQL (shared,
  LISTEN/NOTIFY) stores;
- :mod:`.webhooks` — signed, retried, queued event delivery;
- :mod:`.service` — :class:`JitService`, what the proxy, console and admin API call.
"""

from .model import GrantRecord, Request, action_key
from .service import JitError, JitService
from .settings import JitConfigError, JitSettings, jit_settings_from_config

__all__ = [
    "GrantRecord", "JitConfigError", "JitError", "JitService", "JitSettings", "Request",
    "action_key", "jit_settings_from_config",
]
