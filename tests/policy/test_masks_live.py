"""Mask expressions evaluated by a live PostgreSQL (no sample schema needed)."""

from __future__ import annotations

import pytest

from policy.catalog import Column
from policy.masks import mask_sql
from policy.rules import MaskRule


@pytest.mark.parametrize("type_sql", ['pg_catalog."text"', "character varying(30)", "character(20)"])
def test_email_mask_edge_values(pg, type_sql):
    expr = mask_sql(MaskRule("t", "v", "email"), Column("v", 1, type_sql, "S"), "v")
    expected = {
        "user@example.com": "u***@example.com", "a@b@c.com": "a***@c.com",
        "noat": "REDACTED", "@dom.com": "REDACTED", "": "REDACTED", None: None,
        "x@": "x***@", "line\nbreak@ex.org": "l***@ex.org", "ü@ümlaut.de": "ü***@ümlaut.de",
        "@@x": "REDACTED",
    }
    with pg.connect() as conn:
        for scs in ("on", "off"):
            conn.execute(f"SET standard_conforming_strings = {scs}")
            for value, want in expected.items():
                got = conn.execute(f"SELECT {expr} FROM (SELECT CAST(%s AS {type_sql}) AS v) s",
                                   (value,)).fetchone()[0]
                got = got.rstrip(" ") if got is not None and type_sql.startswith("character(") else got
                assert got == want, (scs, type_sql, value)
