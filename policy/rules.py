"""Masking rules: which columns of which relations are masked, and how.

A :class:`Policy` is the ``[policy]`` table of the configuration file, validated: a list of
:class:`MaskRule` (``table``/``column`` glob patterns plus a mask kind and its parameters),
the users who are exempt from masking, and the user-defined functions trusted to run for
masked users. Patterns are matched against catalog names exactly as PostgreSQL stores them
(case-sensitive): a ``table`` pattern containing a dot is matched against ``schema.table``,
one without a dot against the bare table name. The first rule that matches a column wins,
like a firewall rule list.

``policy_from_dict`` is the only way a Policy is built from configuration; it raises
:class:`PolicyError` naming the offending key, so ``pgveil check`` can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Mapping

MASK_KINDS: tuple[str, ...] = (
    "redact", "null", "partial", "email", "hash", "year", "month", "round", "strip",
)

# Catalog relations whose contents are samples of other tables' values.
DEFAULT_DENIED_RELATIONS: tuple[str, ...] = (
    "pg_catalog.pg_stats",
    "pg_catalog.pg_stats_ext",
    "pg_catalog.pg_stats_ext_exprs",
    "pg_catalog.pg_statistic",
    "pg_catalog.pg_statistic_ext_data",
    "pg_catalog.pg_largeobject",
)

UNKNOWN_RELATION_MODES: tuple[str, ...] = ("forward_temp", "deny", "forward")

# Keys of [policy] owned by other parts of pgveil (action rules); accepted and kept as is.
PASSTHROUGH_KEYS: frozenset[str] = frozenset({"approval", "auto_approve"})


class PolicyError(ValueError):
    """A bad ``[policy]`` entry: ``key`` is the dotted path to it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class MaskRule:
    """Mask columns matching ``column`` of relations matching ``table`` with ``mask``."""

    table: str
    column: str
    mask: str = "redact"
    keep_first: int = 0
    keep_last: int = 0
    digits: int = 0

    def matches(self, schema: str, table: str, column: str) -> bool:
        target = f"{schema}.{table}" if "." in self.table else table
        return fnmatchcase(target, self.table) and fnmatchcase(column, self.column)


@dataclass(frozen=True)
class Policy:
    """The validated policy. Immutable; cheap to hash by identity for caches."""

    rules: tuple[MaskRule, ...] = ()
    exempt_users: frozenset[str] = frozenset()
    trusted_functions: frozenset[str] = frozenset()
    denied_relations: frozenset[str] = frozenset(DEFAULT_DENIED_RELATIONS)
    unknown_relations: str = "forward_temp"
    actions: tuple = ()  # policy.actions.ActionRule, from [[policy.action]]
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __hash__(self) -> int:  # identity: policies are compared by object in caches
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def rule_for(self, schema: str, table: str, column: str) -> MaskRule | None:
        for rule in self.rules:
            if rule.matches(schema, table, column):
                return rule
        return None

    def is_exempt(self, user: str) -> bool:
        return user in self.exempt_users

    def trusts_function(self, schema: str | None, name: str) -> bool:
        if name in self.trusted_functions:
            return True
        return schema is not None and f"{schema}.{name}" in self.trusted_functions


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(key, "must be a list of non-empty strings")
    return tuple(value)


def _int(value: Any, key: str, *, minimum: int | None = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(key, "must be an integer")
    if minimum is not None and value < minimum:
        raise PolicyError(key, f"must be at least {minimum}")
    return value


def _rule_from_dict(raw: Any, key: str) -> MaskRule:
    if not isinstance(raw, Mapping):
        raise PolicyError(key, "must be a table with keys table, column and mask")
    allowed = {"table", "column", "mask", "keep_first", "keep_last", "digits"}
    for k in raw:
        if k not in allowed:
            raise PolicyError(f"{key}.{k}", f"unknown key (expected one of {sorted(allowed)})")
    for k in ("table", "column"):
        if not isinstance(raw.get(k), str) or not raw[k]:
            raise PolicyError(f"{key}.{k}", "is required and must be a non-empty string")
    table = raw["table"]
    if table.count(".") > 1:
        raise PolicyError(f"{key}.table", "must be 'table' or 'schema.table' (glob allowed)")
    mask = raw.get("mask", "redact")
    if mask not in MASK_KINDS:
        raise PolicyError(f"{key}.mask", f"unknown mask {mask!r} (expected one of {list(MASK_KINDS)})")
    keep_first = _int(raw.get("keep_first", 0), f"{key}.keep_first")
    keep_last = _int(raw.get("keep_last", 0), f"{key}.keep_last")
    digits = _int(raw.get("digits", 0), f"{key}.digits", minimum=None)
    if mask != "partial" and ("keep_first" in raw or "keep_last" in raw):
        raise PolicyError(f"{key}.keep_first", "only applies to mask = 'partial'")
    if mask != "round" and "digits" in raw:
        raise PolicyError(f"{key}.digits", "only applies to mask = 'round'")
    if mask == "partial" and keep_first + keep_last == 0:
        raise PolicyError(f"{key}.keep_first", "partial needs keep_first and/or keep_last > 0")
    return MaskRule(table, raw["column"], mask, keep_first, keep_last, digits)


def policy_from_dict(raw: Mapping[str, Any]) -> Policy:
    from .actions import actions_from_config

    """Validate the ``[policy]`` table of the configuration and build a :class:`Policy`."""
    if not isinstance(raw, Mapping):
        raise PolicyError("policy", "must be a table")
    known = {"exempt_users", "trusted_functions", "mask", "denied_relations", "unknown_relations",
             "action"}
    extra: dict[str, Any] = {}
    for k in raw:
        if k in PASSTHROUGH_KEYS:
            extra[k] = raw[k]
        elif k not in known:
            raise PolicyError(f"policy.{k}", f"unknown key (expected one of {sorted(known)})")
    masks = raw.get("mask", [])
    if not isinstance(masks, (list, tuple)):
        raise PolicyError("policy.mask", "must be an array of tables ([[policy.mask]])")
    rules = tuple(_rule_from_dict(m, f"policy.mask[{i}]") for i, m in enumerate(masks))
    denied = raw.get("denied_relations", list(DEFAULT_DENIED_RELATIONS))
    denied_t = _str_list(denied, "policy.denied_relations")
    for d in denied_t:
        if d.count(".") != 1:
            raise PolicyError("policy.denied_relations", f"{d!r} must be 'schema.relation'")
    unknown = raw.get("unknown_relations", "forward_temp")
    if unknown not in UNKNOWN_RELATION_MODES:
        raise PolicyError(
            "policy.unknown_relations", f"must be one of {list(UNKNOWN_RELATION_MODES)}"
        )
    return Policy(
        rules=rules,
        exempt_users=frozenset(_str_list(raw.get("exempt_users", []), "policy.exempt_users")),
        trusted_functions=frozenset(
            _str_list(raw.get("trusted_functions", []), "policy.trusted_functions")
        ),
        denied_relations=frozenset(denied_t),
        unknown_relations=unknown,
        actions=actions_from_config(raw.get("action")),
        extra=extra,
    )
