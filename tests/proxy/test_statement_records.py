"""What pgveil records a client's named statement to be, against what the server has.

Its record decides the re-checks at Bind (a grant that ended, a schema change): it must be
the statement the server runs."""

from __future__ import annotations

from proxy.statements import StatementMap

_PARSE_COMPLETE, _READY = 49, 90


def test_a_refused_second_parse_keeps_the_first_statement():
    sm = StatementMap()
    sm.parsed("s9", "SELECT ssn FROM customers", [], "decision A")
    sm.end_batch()
    sm.answered(_PARSE_COMPLETE)
    sm.ready()
    # the same name again: the server answers 42P05 and keeps the first statement
    sm.parsed("s9", "SELECT 'other'", [], "decision B")
    sm.end_batch()
    assert sm.prepared["s9"].query == "SELECT ssn FROM customers"  # not before the answer
    sm.ready()  # an error, then ReadyForQuery: the Parse was not taken
    assert sm.prepared["s9"].decision == "decision A"


def test_a_second_parse_the_server_takes_replaces_the_record():
    # (the first was deallocated by SQL in between: the server takes the new one)
    sm = StatementMap()
    sm.parsed("s9", "SELECT 1", [], "decision A")
    sm.end_batch()
    sm.answered(_PARSE_COMPLETE)
    sm.ready()
    sm.parsed("s9", "SELECT 2", [], "decision B")
    sm.end_batch()
    sm.answered(_PARSE_COMPLETE)
    assert sm.prepared["s9"].query == "SELECT 2" and sm.prepared["s9"].decision == "decision B"


def test_the_unnamed_statement_is_replaced_at_once():
    sm = StatementMap()
    sm.parsed("", "SELECT 1", [], "decision A")
    sm.parsed("", "SELECT 2", [], "decision B")
    assert sm.prepared[""].query == "SELECT 2"
