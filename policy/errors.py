"""Every error pgveil itself reports, in one table.

Like psycopg's ``errors.py`` maps each SQLSTATE to one class, this module keeps each of
pgveil's own refusals in one place: a short code (what the audit log and tests use), the
SQLSTATE sent in the ``ErrorResponse``, the message (always starting with ``pgveil:``) and a
HINT telling the user what to do next. Messages are format strings; callers fill them with
names (never with data values) through :func:`render`.

The proxy uses the same table for the errors it raises (protocol violations, lost upstream,
shutdown, too many connections), so a client sees one consistent voice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One kind of pgveil error: SQLSTATE, message template and hint template."""

    code: str
    sqlstate: str
    message: str
    hint: str


def _table(*specs: ErrorSpec) -> Mapping[str, ErrorSpec]:
    out: dict[str, ErrorSpec] = {}
    for spec in specs:
        assert spec.code not in out, spec.code
        assert spec.message.startswith("pgveil:"), spec.code
        out[spec.code] = spec
    return out


REQUEST_HINT = (
    "Ask for access with: REQUEST ACCESS TO {table} ({columns}) FOR '30 minutes' BECAUSE '...'"
)

ERRORS: Mapping[str, ErrorSpec] = _table(
    # --- access decisions (42501 insufficient_privilege) ----------------------------------
    ErrorSpec(
        "denied_function", "42501",
        "pgveil: function {name}() is not allowed for masked users",
        "{name}() can read data around pgveil's masks. Ask an administrator to add it to "
        "policy.trusted_functions, or request an approved action.",
    ),
    ErrorSpec(
        "denied_operator", "42501",
        "pgveil: operator {name} runs a user-defined function and is not allowed for masked users",
        "Ask an administrator to add its function to policy.trusted_functions.",
    ),
    ErrorSpec(
        "denied_relation", "42501",
        "pgveil: {name} reveals stored values and is not available to masked users",
        "Statistics catalogs hold sample values of every column. Query the tables themselves; "
        "sensitive columns come back masked.",
    ),
    ErrorSpec(
        "denied_statement", "42501",
        "pgveil: {what} is not allowed for masked users",
        "{what} can run code that reads data around pgveil's masks. Run it as an exempt user, "
        "or request an approved action.",
    ),
    ErrorSpec(
        "denied_function_call", "42501",
        "pgveil: the FunctionCall protocol message is not allowed for masked users",
        "It runs a function by OID with no SQL text for pgveil to check. Call the function "
        "in a SELECT instead.",
    ),
    ErrorSpec(
        "denied_reserved_name", "42501",
        "pgveil: the prepared statement name {name} is reserved for pgveil",
        "pgveil prepares masked statements under names starting with pgveil_; choose another "
        "name.",
    ),
    ErrorSpec(
        "denied_setting", "42501",
        "pgveil: changing {name} is not allowed through pgveil",
        "{name} changes how PostgreSQL reads SQL text; pgveil keeps it at its default so it "
        "reads every statement exactly as the server does.",
    ),
    ErrorSpec(
        "denied_session", "42501",
        "pgveil: this session has {name} = {value}, which pgveil cannot analyse safely",
        "Reconnect without overriding {name} (check PGOPTIONS and ALTER ROLE ... SET).",
    ),
    ErrorSpec(
        "denied_copy_file", "42501",
        "pgveil: COPY to or from a server file or program is not allowed for masked users",
        "Use COPY ... TO STDOUT / FROM STDIN (psql: \\copy).",
    ),
    ErrorSpec(
        "denied_write_predicate", "42501",
        "pgveil: {what} on {table} refers to masked column(s) {columns} of the rows it changes",
        "Conditions and values of a write may only use unmasked columns of its target, because "
        "the number of changed rows would reveal masked values. " + REQUEST_HINT,
    ),
    ErrorSpec(
        "denied_write_masked", "42501",
        "pgveil: {what} on {table} gives values to masked column(s) {columns}",
        "Whether such a write succeeds (a unique or foreign-key violation, ON CONFLICT) tells "
        "which values the column already holds, so writing a masked column needs a grant for "
        "it, as reading it does. " + REQUEST_HINT,
    ),
    ErrorSpec(
        "denied_returning", "42501",
        "pgveil: RETURNING masked column(s) {columns} of {table} is not supported here",
        "Return only unmasked columns, or run the statement on its own (not inside WITH, "
        "COPY, PREPARE or EXPLAIN).",
    ),
    ErrorSpec(
        "denied_foreign_key", "42501",
        "pgveil: a foreign key to masked column(s) of {table} would reveal which values exist",
        "Reference an unmasked key column instead.",
    ),
    ErrorSpec(
        "denied_ambiguous", "42501",
        "pgveil: {name} is not on the search_path pgveil knows for this session, but a masked "
        "relation of that name exists",
        "Schema-qualify the name (for example {qualified}).",
    ),
    ErrorSpec(
        "denied_unknown_relation", "42501",
        "pgveil: relation {name} is not in pgveil's catalog",
        "If it was just created, retry: pgveil refreshes its catalog after DDL.",
    ),
    ErrorSpec(
        "denied_persistent_grant", "42501",
        "pgveil: {what} would keep access granted until {table} outlives the grant",
        "Run the query directly while your grant is live.",
    ),
    ErrorSpec(
        "catalog_changed", "40001",
        "pgveil: {table} changed while this statement was checked; rows withheld",
        "Its schema changed after pgveil loaded the catalog. pgveil has reloaded it: run the "
        "statement again.",
    ),
    ErrorSpec(
        "wire_leak", "42501",
        "pgveil: result column {column} of {table} would be sent unmasked; rows withheld",
        "This is a pgveil bug or a stale catalog; the statement was stopped. Please report it.",
    ),
    ErrorSpec(
        "denied_action", "42501",
        "pgveil: this statement is refused by action rule {name}",
        "The policy does not allow this kind of statement through pgveil. Ask an "
        "administrator if it must run.",
    ),
    ErrorSpec(
        "approval_required", "42501",
        "pgveil: this statement needs approval under action rule {name}",
        "pgveil has opened an approval request for it; run it again once it is approved.",
    ),
    ErrorSpec(
        "approval_pending", "42501",
        "pgveil: this statement needs approval under action rule {name}: request {request} "
        "is {state}",
        "An approver can approve it on the approver page, with `pgveil approve {request}`, or "
        "with APPROVE '{request}'; in the pgveil console. Then run the statement again.",
    ),
    ErrorSpec(
        "catalog_unavailable", "0A000",
        "pgveil: cannot check this statement: the schema catalog of database {database} is "
        "not available ({detail})",
        "pgveil loads the catalog as [upstream] catalog_user; check that it can connect, "
        "then retry.",
    ),
    ErrorSpec(
        "audit_unavailable", "58030",
        "pgveil: the audit log cannot be written, so statements are refused",
        "An operator must fix the audit sink ([audit] path); the proxy fails closed.",
    ),
    # --- cannot be analysed (0A000 feature_not_supported) -------------------------------------
    ErrorSpec(
        "unparsable", "0A000",
        "pgveil: cannot parse this statement ({detail})",
        "pgveil reads SQL with PostgreSQL 18's grammar and forwards only what it understands. "
        "Check the syntax.",
    ),
    ErrorSpec(
        "unsupported_statement", "0A000",
        "pgveil: {what} is not supported for masked users",
        "Run it as an exempt user, or rewrite the statement.",
    ),
    ErrorSpec(
        "unsupported_reference", "0A000",
        "pgveil: {table} is used where pgveil cannot substitute its masked form ({where})",
        "Select from the table in a FROM clause instead.",
    ),
    ErrorSpec(
        "verification_failed", "0A000",
        "pgveil: the masked rewrite of this statement could not be verified ({detail})",
        "This is a pgveil limitation; simplify the statement or report it.",
    ),
    # --- protocol and service errors, raised by the proxy ---------------------------------------
    ErrorSpec(
        "protocol_violation", "08P01",
        "pgveil: protocol violation: {detail}",
        "The client sent a message pgveil does not accept; check the driver version.",
    ),
    ErrorSpec(
        "upstream_lost", "08006",
        "pgveil: lost the connection to the database server",
        "Reconnect; if it keeps happening, check the database server.",
    ),
    ErrorSpec(
        "shutting_down", "57P01",
        "pgveil: the proxy is shutting down",
        "Reconnect in a moment.",
    ),
    ErrorSpec(
        "too_many_connections", "53300",
        "pgveil: too many client connections",
        "Close idle connections or raise proxy.max_client_connections.",
    ),
)


def render(code: str, **names: object) -> tuple[str, str, str]:
    """Return ``(sqlstate, message, hint)`` for ``code`` with ``names`` filled in.

    Missing names are left as ``{name}`` rather than raising, so an error path never fails.
    """
    spec = ERRORS[code]

    class _Keep(dict):
        def __missing__(self, key: str) -> str:
            return "{" + key + "}"

    values = _Keep({k: str(v) for k, v in names.items()})
    return spec.sqlstate, spec.message.format_map(values), spec.hint.format_map(values)
