"""Token spans of a statement, in UTF-8 byte offsets, from PostgreSQL's own scanner.

pglast's parse tree gives the *start* of names (``location``, a byte offset) but not their
end; its scanner gives every token with character offsets. :class:`Tokens` converts the
latter to byte offsets and answers the few span questions the rewrite needs: where does
the (possibly qualified, possibly ``U&"..." UESCAPE '!'``) name starting here end, what is
the token before this one, where does a statement's last token end.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from pglast import parser as pg_parser


@dataclass(frozen=True, slots=True)
class Tok:
    start: int  # byte offset of first byte
    end: int  # byte offset one past the last byte
    name: str  # token name as pglast reports it: IDENT, SCONST, ASCII_46 ('.'), SELECT, ...


class Tokens:
    __slots__ = ("toks", "starts")

    def __init__(self, text: str) -> None:
        raw = [t for t in pg_parser.scan(text) if t.name not in ("SQL_COMMENT", "C_COMMENT")]
        if text.isascii():
            toks = [Tok(t.start, t.end + 1, t.name) for t in raw]
        else:
            offsets = [0]
            total = 0
            for ch in text:
                total += len(ch.encode("utf-8"))
                offsets.append(total)
            toks = [Tok(offsets[t.start], offsets[t.end + 1], t.name) for t in raw]
        self.toks = toks
        self.starts = [t.start for t in toks]

    def index_at(self, offset: int) -> int:
        i = bisect_left(self.starts, offset)
        if i >= len(self.toks) or self.toks[i].start != offset:
            raise LookupError(f"no token starts at byte {offset}")
        return i

    def name_end(self, i: int, parts: int) -> int:
        """Index of the last token of a dotted name of ``parts`` parts starting at token i."""
        j = i
        for p in range(parts):
            if p:
                j += 1
                if self.toks[j].name != "ASCII_46":
                    raise LookupError("expected '.' in qualified name")
                j += 1
            if self.toks[j].name == "ASCII_46":
                raise LookupError("unexpected '.'")
            if (
                self.toks[j].name in ("UIDENT", "USCONST")
                and j + 2 < len(self.toks)
                and self.toks[j + 1].name == "UESCAPE"
            ):
                j += 2
        return j

    def prev(self, i: int) -> Tok | None:
        return self.toks[i - 1] if i > 0 else None

    def next(self, i: int) -> Tok | None:
        return self.toks[i + 1] if i + 1 < len(self.toks) else None

    def last_in(self, start: int, end: int) -> Tok | None:
        """The last non-';' token inside ``[start, end)``."""
        i = bisect_left(self.starts, end) - 1
        while i >= 0 and self.toks[i].start >= start:
            if self.toks[i].name != "ASCII_59":
                return self.toks[i]
            i -= 1
        return None

    def find_last_top_level(self, start: int, end: int, name: str) -> Tok | None:
        """The last token called ``name`` at parenthesis depth 0 inside ``[start, end)``."""
        depth = 0
        found: Tok | None = None
        i = bisect_left(self.starts, start)
        while i < len(self.toks) and self.toks[i].start < end:
            t = self.toks[i]
            if t.name in ("ASCII_40", "ASCII_91"):
                depth += 1
            elif t.name in ("ASCII_41", "ASCII_93"):
                depth -= 1
            elif depth == 0 and t.name == name:
                found = t
            i += 1
        return found
