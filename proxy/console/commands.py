"""The console's small language, parsed without I/O.

::

    REQUEST ACCESS TO public.customers (ssn, email) FOR '30 minutes' BECAUSE 'INC-4711';
    SHOW REQUESTS;            SHOW GRANTS;           SHOW ALL REQUESTS;
    CANCEL REQUEST 'r_…';     APPROVE 'r_…';         DENY 'r_…' BECAUSE '…';
    HELP;

Keywords are case-insensitive; identifiers fold to lower case unless double-quoted, as in
PostgreSQL; strings are single-quoted with '' for a quote. An unqualified table name means
``public.<name>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HELP = """\
REQUEST ACCESS TO schema.table (col, ...) FOR '30 minutes' BECAUSE 'reason'
SHOW REQUESTS | SHOW ALL REQUESTS | SHOW GRANTS
CANCEL REQUEST 'id'
APPROVE 'id' | DENY 'id' BECAUSE 'reason'      (approvers only)"""


class ConsoleSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Command:
    verb: str  # request, show_requests, show_all_requests, show_grants, cancel, approve, deny, help
    table: str | None = None
    columns: tuple[str, ...] = ()
    duration: str | None = None
    reason: str | None = None
    request_id: str | None = None


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^']|'')*')
      | (?P<qid>"(?:[^"]|"")+")
      | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
      | (?P<punct>[(),.;*])
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            rest = text[pos:].strip()
            if not rest:
                break
            raise ConsoleSyntaxError(f"syntax error at or near {rest[:20]!r}")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "str":
            value = value[1:-1].replace("''", "'")
        elif kind == "qid":
            value = value[1:-1].replace('""', '"')
        elif kind == "word":
            value = value.lower()
        out.append((kind, value))
        pos = m.end()
    while out and out[-1] == ("punct", ";"):
        out.pop()
    return out


class _Parser:
    def __init__(self, toks: list[tuple[str, str]]) -> None:
        self.toks = toks
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def word(self, *expected: str) -> str:
        t = self.peek()
        if t is None or t[0] != "word" or (expected and t[1] not in expected):
            want = " or ".join(e.upper() for e in expected) or "a word"
            got = "end of input" if t is None else repr(t[1])
            raise ConsoleSyntaxError(f"expected {want}, got {got}")
        self.i += 1
        return t[1]

    def optional(self, word: str) -> bool:
        t = self.peek()
        if t == ("word", word):
            self.i += 1
            return True
        return False

    def string(self, what: str) -> str:
        t = self.peek()
        if t is None or t[0] != "str":
            raise ConsoleSyntaxError(f"expected {what} as a quoted string, e.g. '…'")
        self.i += 1
        return t[1]

    def ident(self) -> str:
        t = self.peek()
        if t is None or t[0] not in ("word", "qid"):
            raise ConsoleSyntaxError("expected a name")
        self.i += 1
        return t[1]

    def punct(self, p: str) -> bool:
        if self.peek() == ("punct", p):
            self.i += 1
            return True
        return False

    def end(self) -> None:
        if self.peek() is not None:
            raise ConsoleSyntaxError(f"unexpected {self.peek()[1]!r} at the end")


def parse(text: str) -> Command:
    toks = _tokens(text)
    if not toks:
        raise ConsoleSyntaxError("empty command")
    p = _Parser(toks)
    verb = p.word("request", "show", "cancel", "approve", "deny", "help")
    if verb == "help":
        p.end()
        return Command("help")
    if verb == "show":
        if p.optional("all"):
            p.word("requests")
            p.end()
            return Command("show_all_requests")
        what = p.word("requests", "grants")
        p.end()
        return Command(f"show_{what}")
    if verb == "cancel":
        p.word("request")
        rid = p.string("the request id")
        p.end()
        return Command("cancel", request_id=rid)
    if verb == "approve":
        rid = p.string("the request id")
        p.end()
        return Command("approve", request_id=rid)
    if verb == "deny":
        rid = p.string("the request id")
        p.word("because")
        reason = p.string("the reason")
        p.end()
        return Command("deny", request_id=rid, reason=reason)
    # REQUEST ACCESS TO table [(cols)] [FOR 'duration'] BECAUSE 'reason'
    p.word("access")
    p.word("to")
    first = p.ident()
    table = f"{first}.{p.ident()}" if p.punct(".") else f"public.{first}"
    columns: list[str] = []
    if p.punct("("):
        while True:
            if p.punct("*"):
                columns.append("*")
            else:
                columns.append(p.ident())
            if p.punct(")"):
                break
            if not p.punct(","):
                raise ConsoleSyntaxError("expected ',' or ')' in the column list")
    duration = None
    if p.optional("for"):
        duration = p.string("the duration")
    p.word("because")
    reason = p.string("the reason")
    p.end()
    if not reason.strip():
        raise ConsoleSyntaxError("the reason must not be empty")
    return Command("request", table=table, columns=tuple(columns) or ("*",),
                   duration=duration, reason=reason)


def split_statements(text: str) -> list[str]:
    """Split on semicolons outside quotes; empty pieces are dropped."""
    out, cur, quote = [], [], None
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
            cur.append(ch)
        elif ch == ";":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [s.strip() for s in out if s.strip()]
