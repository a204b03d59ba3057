"""What masked users may not run at all, whatever the masks.

Substitution makes every *table read* see masked values. Some things read data without
reading a table in a way substitution can reach — they run SQL given as a string, read
files or large objects, or run code someone else wrote — and some change how the server
*reads* SQL text, which would make pgveil's parse differ from the server's. This module
holds those rules as data plus small pure checks used by :mod:`policy.analyze`:

* :data:`ALLOWED_STATEMENTS` — statement node types a masked user may send; anything else
  (``DO``, ``CREATE FUNCTION``, ``CREATE EXTENSION``, rules, triggers, foreign servers,
  subscriptions, ...) is refused. An allow-list fails closed for statement types added in
  later PostgreSQL versions.
* :func:`function_denial` — built-ins that run SQL text, read files, large objects or WAL;
  and any function outside ``pg_catalog``/``information_schema`` not listed in
  ``policy.trusted_functions`` (user functions run with the data their author can read).
* :func:`setting_denial` — settings that change lexing (``standard_conforming_strings``,
  ``backslash_quote``, ``client_encoding`` other than UTF8).
"""

from __future__ import annotations

from .catalog import Catalog
from .names import SYSTEM_SCHEMAS
from .rules import Policy

ALLOWED_STATEMENTS: frozenset[str] = frozenset(
    """
    SelectStmt InsertStmt UpdateStmt DeleteStmt MergeStmt CopyStmt ExplainStmt
    PrepareStmt ExecuteStmt DeallocateStmt DeclareCursorStmt FetchStmt ClosePortalStmt
    VariableSetStmt VariableShowStmt DiscardStmt TransactionStmt ListenStmt UnlistenStmt
    NotifyStmt LockStmt TruncateStmt VacuumStmt ClusterStmt ReindexStmt CheckPointStmt
    CreateStmt CreateTableAsStmt ViewStmt IndexStmt AlterTableStmt DropStmt RenameStmt
    AlterObjectSchemaStmt AlterOwnerStmt CommentStmt GrantStmt GrantRoleStmt
    AlterDefaultPrivilegesStmt CreateSchemaStmt CreateSeqStmt AlterSeqStmt CreateDomainStmt
    AlterDomainStmt CompositeTypeStmt CreateEnumStmt AlterEnumStmt CreatePolicyStmt
    AlterPolicyStmt CreateStatsStmt AlterStatsStmt RefreshMatViewStmt CreateRoleStmt
    AlterRoleStmt DropRoleStmt CreatedbStmt DropdbStmt AlterDatabaseStmt ReassignOwnedStmt
    DropOwnedStmt ConstraintsSetStmt CallStmt AlterRoleSetStmt AlterDatabaseSetStmt
    AlterTableMoveAllStmt AlterCollationStmt
    """.split()
)

# Human names for refused statement types (for messages).
STATEMENT_NAMES: dict[str, str] = {
    "DoStmt": "DO",
    "CreateFunctionStmt": "CREATE FUNCTION/PROCEDURE",
    "AlterFunctionStmt": "ALTER FUNCTION",
    "CreateTrigStmt": "CREATE TRIGGER",
    "CreateEventTrigStmt": "CREATE EVENT TRIGGER",
    "RuleStmt": "CREATE RULE",
    "CreateExtensionStmt": "CREATE EXTENSION",
    "AlterExtensionStmt": "ALTER EXTENSION",
    "AlterExtensionContentsStmt": "ALTER EXTENSION",
    "LoadStmt": "LOAD",
    "AlterSystemStmt": "ALTER SYSTEM",
    "DefineStmt": "CREATE AGGREGATE/OPERATOR/TYPE",
    "CreateCastStmt": "CREATE CAST",
    "CreatePLangStmt": "CREATE LANGUAGE",
    "CreateTransformStmt": "CREATE TRANSFORM",
    "CreateForeignServerStmt": "CREATE SERVER",
    "CreateUserMappingStmt": "CREATE USER MAPPING",
    "CreateForeignTableStmt": "CREATE FOREIGN TABLE",
    "ImportForeignSchemaStmt": "IMPORT FOREIGN SCHEMA",
    "CreateSubscriptionStmt": "CREATE SUBSCRIPTION",
    "CreatePublicationStmt": "CREATE PUBLICATION",
    "AlterPublicationStmt": "ALTER PUBLICATION",
    "CreateRangeStmt": "CREATE TYPE ... AS RANGE",
}

# Statement kinds reported in Decision.kind.
KINDS: dict[str, str] = {
    "SelectStmt": "select", "InsertStmt": "insert", "UpdateStmt": "update",
    "DeleteStmt": "delete", "MergeStmt": "merge", "CopyStmt": "copy", "ExplainStmt": "explain",
    "PrepareStmt": "prepare", "ExecuteStmt": "execute", "DeallocateStmt": "deallocate",
    "DeclareCursorStmt": "declare", "FetchStmt": "fetch", "ClosePortalStmt": "close",
    "VariableSetStmt": "set", "VariableShowStmt": "show", "DiscardStmt": "discard",
    "TransactionStmt": "transaction", "ListenStmt": "listen", "UnlistenStmt": "unlisten",
    "NotifyStmt": "notify", "LockStmt": "lock", "TruncateStmt": "truncate",
    "VacuumStmt": "vacuum", "CallStmt": "call", "DoStmt": "do",
    "CreateFunctionStmt": "ddl", "CheckPointStmt": "checkpoint",
}

# Built-in functions that run SQL given as text, or read files, large objects, WAL or logs.
DENIED_FUNCTIONS: frozenset[str] = frozenset(
    """
    query_to_xml query_to_xmlschema query_to_xml_and_xmlschema
    cursor_to_xml cursor_to_xmlschema
    table_to_xml table_to_xmlschema table_to_xml_and_xmlschema
    schema_to_xml schema_to_xmlschema schema_to_xml_and_xmlschema
    database_to_xml database_to_xmlschema database_to_xml_and_xmlschema
    ts_stat ts_rewrite
    loread lowrite
    pg_read_file pg_read_binary_file pg_stat_file pg_current_logfile
    pg_logdir_ls pg_file_write pg_file_rename pg_file_unlink pg_file_sync
    pg_get_wal_replay_pause_state pg_walfile_name_offset
    """.split()
)
DENIED_FUNCTION_PREFIXES: tuple[str, ...] = (
    "lo_", "dblink", "pg_ls_", "pg_logical_", "pg_replication_origin", "pg_read_",
)

# Settings that change how SQL text is lexed: pgveil's parser assumes their defaults.
LEXER_SETTINGS: frozenset[str] = frozenset(
    {"standard_conforming_strings", "backslash_quote", "client_encoding"}
)
_SAFE_SETTING_VALUES: dict[str, frozenset[str]] = {
    "standard_conforming_strings": frozenset({"on", "true", "yes", "1"}),
    "client_encoding": frozenset({"utf8", "utf-8", "unicode"}),
    "backslash_quote": frozenset({"safe_encoding", "off", "false", "no", "0"}),
}


def setting_is_safe(name: str, value: str | None) -> bool:
    """May a masked user set ``name`` to ``value`` (None: RESET / DEFAULT)?"""
    name = name.lower()
    if name not in LEXER_SETTINGS:
        return True
    if value is None:
        return True  # back to the server default, which the proxy checks at startup
    return value.strip().lower() in _SAFE_SETTING_VALUES[name]


def session_denial(settings: dict[str, str] | None) -> tuple[str, str] | None:
    """A reported session setting under which pgveil's parse would differ from the server's."""
    if not settings:
        return None
    for name, value in settings.items():
        if name.lower() in LEXER_SETTINGS and value is not None:
            if not setting_is_safe(name, value):
                return name, value
    return None


def is_denied_builtin(name: str) -> bool:
    return name in DENIED_FUNCTIONS or name.startswith(DENIED_FUNCTION_PREFIXES)


def function_denial(
    schema: str | None, name: str, catalog: Catalog, policy: Policy
) -> str | None:
    """Why calling ``schema.name`` (schema None: unqualified) is refused, or None."""
    if is_denied_builtin(name):
        return "denied_function"
    if policy.trusts_function(schema, name):
        return None
    if schema is not None:
        if schema in SYSTEM_SCHEMAS:
            return None
        return "denied_function"
    funcs = catalog.functions.get(name)
    if funcs is None:
        # Not in the catalog: a built-in we did not load, or created since the snapshot.
        return "denied_function" if catalog.functions_complete else None
    if any(f.is_user and not policy.trusts_function(f.schema, f.name) for f in funcs):
        return "denied_function"
    return None


def operator_denial(schema: str | None, name: str, catalog: Catalog, policy: Policy) -> bool:
    """Operators backed by a user function written in SQL or a PL run arbitrary queries."""
    if schema in SYSTEM_SCHEMAS:
        return False
    for op_schema, func_oid in catalog.operators.get(name, ()):
        if schema is not None and op_schema != schema:
            continue
        f = catalog.functions_by_oid.get(func_oid)
        if f is None:
            return True
        if f.is_user and f.language not in ("c", "internal") and not policy.trusts_function(
            f.schema, f.name
        ):
            return True
    return False
