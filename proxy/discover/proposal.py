"""Turn findings into a pgveil policy: a ``[policy]`` fragment or a whole ``pgveil.toml``.

Without ``--out``, ``pgveil discover`` prints the ``[policy]`` fragment (to paste or merge
into an existing configuration). With ``--out FILE`` it writes a *complete* configuration:
``[proxy]`` listening on ``127.0.0.1:6432`` and ``[upstream]`` host/port/sslmode taken from
the scanned DSN (never its user or password), followed by the same ``[policy]``. Either text
is accepted by :func:`proxy.config.parse_settings` and, for its ``[policy]`` table, by
:func:`policy.rules.policy_from_dict`.

Rules are exact (glob characters in names are escaped), one per finding, ordered by table
and column; each carries a comment with the detector, the confidence and the matched share —
never a value, not even a masked one (policy files get committed and reviewed).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from psycopg.conninfo import conninfo_to_dict

from policy.detectors import ColumnFinding, suggest_mask

DEFAULT_EXEMPT_USERS: tuple[str, ...] = ("postgres",)
SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")


def toml_str(s: str) -> str:
    """A TOML basic string."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def glob_escape(name: str) -> str:
    """Escape fnmatch metacharacters so a pattern matches exactly ``name``."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _comment(text: str) -> str:
    return "# " + text.replace("\n", " ").replace("\r", " ")


def mask_entry(f: ColumnFinding) -> dict[str, Any] | None:
    """The ``[[policy.mask]]`` table for one finding (None if the name cannot be expressed)."""
    schema, _, table = f.table.partition(".")
    if "." in table or "." in schema:
        return None  # policy patterns are 'schema.table'; a dotted name cannot be written
    entry: dict[str, Any] = {"table": f"{glob_escape(schema)}.{glob_escape(table)}",
                             "column": glob_escape(f.column)}
    entry.update(suggest_mask(f))
    return entry


def render_policy(findings: Iterable[ColumnFinding], *,
                  exempt_users: Sequence[str] = DEFAULT_EXEMPT_USERS) -> str:
    """The ``[policy]`` table and its ``[[policy.mask]]`` entries, as TOML text."""
    lines = [
        "[policy]",
        "# users who see raw values (review this list: superusers bypass masking)",
        f"exempt_users = [{', '.join(toml_str(u) for u in exempt_users)}]",
        "trusted_functions = []",
    ]
    for f in sorted(findings, key=lambda f: (f.table, f.column)):
        entry = mask_entry(f)
        lines.append("")
        what = f.label
        lines.append(_comment(
            f"{f.table}.{f.column} ({f.type_name}): {what}; confidence {f.confidence:.2f}, "
            f"{f.share:.0%} of {f.sampled} sampled values"))
        if entry is None:
            lines.append(_comment("cannot express a table name containing '.'; mask it by hand"))
            continue
        lines.append("[[policy.mask]]")
        for k, v in entry.items():
            lines.append(f"{k} = {toml_str(v) if isinstance(v, str) else v}")
    return "\n".join(lines) + "\n"


def upstream_from_dsn(dsn: str) -> dict[str, Any]:
    """host/port/sslmode(/sslrootcert) for ``[upstream]`` from a libpq DSN or URI."""
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or params.get("hostaddr") or "127.0.0.1").split(",")[0]
    port_s = str(params.get("port") or "5432").split(",")[0]
    up: dict[str, Any] = {"host": host, "port": int(port_s) if port_s.isdigit() else 5432}
    sslmode = str(params.get("sslmode") or "prefer")
    if sslmode == "allow":
        sslmode = "prefer"
    if sslmode not in SSLMODES:
        sslmode = "prefer"
    if sslmode in ("verify-ca", "verify-full") and not params.get("sslrootcert"):
        sslmode = "require"  # the config wants an explicit CA file for verification
    up["sslmode"] = sslmode
    if params.get("sslrootcert") and sslmode in ("verify-ca", "verify-full"):
        up["sslrootcert"] = str(params["sslrootcert"])
    return up


def render_config(dsn: str, findings: Iterable[ColumnFinding], *, database: str = "",
                  exempt_users: Sequence[str] = DEFAULT_EXEMPT_USERS) -> str:
    """A complete ``pgveil.toml``: ``[proxy]``, ``[upstream]`` from ``dsn``, ``[policy]``."""
    up = upstream_from_dsn(dsn)
    lines = [
        _comment("pgveil configuration proposed by `pgveil discover`"
                 + (f" for database {database}" if database else "")),
        "# Review every rule before use: detection is sampled and heuristic.",
        "",
        "[proxy]",
        'listen = "127.0.0.1:6432"',
        "",
        "[upstream]",
    ]
    for k, v in up.items():
        lines.append(f"{k} = {toml_str(v) if isinstance(v, str) else v}")
    lines.append("")
    return "\n".join(lines) + "\n" + render_policy(findings, exempt_users=exempt_users)
