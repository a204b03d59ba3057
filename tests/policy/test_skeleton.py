"""The fast skeleton split: it must agree with PostgreSQL's scanner, or refuse.

The property that makes the decision cache safe: once a statement's fast split agreed with
the real scanner, *every* statement with the same skeleton is lexed by the scanner exactly
as the fast split says (same literal places, same classes).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.skeleton import matches, split, split_texts
from policy.template import literals


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, name, email, ssn FROM bench_customers WHERE id = 12345;",
        "select * from t1 where a = 'it''s' and b > 3.5e3 and c = 99999999999",
        "select x from t where y = 'abc' order by 1",
        "select .5, 5., 1e-3, 2147483647, 2147483648",
        "select '' , 'x''''' , 'multi\nline'",
        "SELECT a.b1 FROM s.t2 a WHERE a.c3 <> 0",
    ],
)
def test_plain_statements_split_like_the_scanner(sql):
    fast = split(sql)
    assert fast is not None
    assert matches(fast[1], literals(sql))
    assert "'" not in fast[0]


@pytest.mark.parametrize(
    "sql",
    [
        "select E'x\\'y'",  # escape string
        "select U&'d\\0061t'",  # unicode escapes
        "select x'ff', b'01'",  # bit strings
        "select 1abc",  # trailing junk after a number
        "select 0x1F, 1_000",  # PostgreSQL 16 integer forms
        "select $1",  # parameter
        "select $$a 'b' c$$",  # dollar quote
        "select 'unterminated",
        "select 1 -- comment 'x'",
        "select /* 'x' */ 1",
        'select "quoted 1"',
        "select 'ü'",
        "select t.1",
    ],
)
def test_subtle_lexing_is_refused(sql):
    assert split(sql) is None


def test_string_continuation_is_caught_by_the_check():
    # PostgreSQL joins 'a'<newline>'b' into one literal; the fast split sees two. The
    # mismatch is what keeps such a skeleton out of the cache.
    sql = "select 'a'\n'b'"
    fast = split(sql)
    assert fast is not None and not matches(fast[1], literals(sql))


_IDENTS = st.sampled_from(["a", "t1", "col_2", "x", "select", "from", "where", "and", "e", "E"])
_OPS = st.sampled_from([" ", "\n", ",", "(", ")", "=", "<>", "+", "-", "*", ".", ";", "::", "||",
                        "!", "@", "#", "%", "^", "&", "|", "~", "?", "[", "]", ":"])
_CHARS = st.sampled_from(list("abc xyz'\n\t.,;()=-+*/\\$\"0123456789eE_&@:%#"))
_STRING = st.text(_CHARS, max_size=8).map(lambda s: "'" + s.replace("'", "''") + "'")
_NUMBER = st.from_regex(r"\A(\d{1,12}(\.\d{0,3})?|\.\d{1,3})([eE][+-]?\d{1,2})?\Z")
_PIECE = st.one_of(_IDENTS, _OPS, _STRING, _NUMBER, st.text(_CHARS, max_size=3))


def _same_class_literal(cls: str, data) -> str:
    if cls == "SCONST":
        return data.draw(_STRING)
    if cls == "ICONST":
        return str(data.draw(st.integers(0, 2147483647)))
    return data.draw(st.sampled_from(["2147483648", "99999999999", "1.5", ".25", "3e5", "7.0E-2"]))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_PIECE, max_size=14).map("".join), st.data())
def test_same_skeleton_lexes_the_same(sql, data):
    fast = split(sql)
    if fast is None:
        return
    scanned = literals(sql)
    if not matches(fast[1], scanned):
        return  # never cached: the runtime checks this before trusting the skeleton
    # the same skeleton with other literal values of the same classes
    out, last = [], 0
    for start, stop, cls in fast[1].spans:
        out.append(sql[last:start])
        out.append(_same_class_literal(cls, data))
        last = stop
    out.append(sql[last:])
    other = "".join(out)
    fast2 = split(other)
    if fast2 is None:
        return  # refused: decided the slow way
    if fast2[0] == fast[0] and fast2[1].classes == fast[1].classes:
        assert matches(fast2[1], literals(other)), (sql, other)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_PIECE, max_size=14).map("".join))
def test_split_texts_agrees_with_split(sql):
    fast, texts = split(sql), split_texts(sql)
    if fast is None:
        assert texts is None, sql
        return
    assert texts is not None, sql
    assert texts[0] == fast[0]
    assert texts[1] == [sql[a:b] for a, b, _ in fast[1].spans]
    assert texts[2] == fast[1].classes


@pytest.mark.parametrize("sql", ["E'x'", "1'x'", "'a' 'b'", "x'1'", "'a'||'b'", "N'a'",
                                 "'a'&'b'", "'it''s' = 'x'", "(5)'a'", "5.'a'"])
def test_split_texts_refuses_what_split_refuses(sql):
    assert (split_texts(sql) is None) == (split(sql) is None)
