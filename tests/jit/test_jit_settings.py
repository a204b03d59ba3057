"""Durations and the [jit] / [state] / [[webhooks]] settings."""

from __future__ import annotations

import pytest

from proxy.jit.durations import format_duration, parse_duration
from proxy.jit.settings import JitConfigError, jit_settings_from_config


@pytest.mark.parametrize("text,seconds", [
    ("30 minutes", 1800), ("1 hour", 3600), ("2h", 7200), ("90s", 90), ("1 day", 86400),
    ("1h30m", 5400), ("1 hour 30 minutes", 5400), ("00:30:00", 1800), ("45", 45), (60, 60),
    ("2 HOURS", 7200), ("interval '10 minutes'", 600), ("1.5 hours", 5400),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "3 fortnights", "1 month", 0, -5, True, None, "1h x"])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration():
    assert format_duration(5400) == "1h30m"
    assert format_duration(86400 + 61) == "1d1m1s"


def test_defaults(tmp_path):
    s = jit_settings_from_config({}, {}, [], str(tmp_path))
    assert s.default_duration == 1800 and s.max_duration == 8 * 3600
    assert s.min_approvals == 1 and s.self_approval is False and s.hold_seconds == 30
    assert s.state.kind == "sqlite" and s.state.path == str(tmp_path / "pgveil-state.db")
    assert s.webhooks == ()


def test_full_config(tmp_path):
    s = jit_settings_from_config(
        {
            "approvers": ["alice", "bob"], "default_duration": "15 minutes", "max_duration": "2h",
            "self_approval": True, "min_approvals": 2, "hold_seconds": 5,
            "auto_approve": [
                {"users": ["ci"], "columns": ["public.customers.email"], "max_duration": "1 hour"},
                {"users": ["ops"], "actions": ["truncate"]},
            ],
        },
        {"url": "postgresql://u@db:5432/state", "schema": "veil"},
        [{"url": "https://hooks.example/x", "secret": "s3", "format": "slack",
          "events": ["request.created"], "max_attempts": 3, "backoff": 0.01}],
        str(tmp_path),
    )
    assert s.approvers == ("alice", "bob") and s.default_duration == 900 and s.max_duration == 7200
    assert s.auto_approve[0].columns == ("public.customers.email",)
    assert s.auto_approve[0].max_duration == 3600 and s.auto_approve[0].name == "auto:0"
    assert s.auto_approve[1].actions == ("truncate",) and s.auto_approve[1].max_duration == 900
    assert s.state.kind == "postgresql" and s.state.schema == "veil"
    w = s.webhooks[0]
    assert (w.format, w.events, w.max_attempts, w.backoff) == ("slack", ("request.created",), 3, 0.01)


@pytest.mark.parametrize("url,path", [
    ("sqlite:///var/lib/pgveil/state.db", "/var/lib/pgveil/state.db"),
    ("sqlite:state.db", "CFG/state.db"),
    ("sqlite://./sub/state.db", "CFG/sub/state.db"),
    ("sqlite::memory:", ":memory:"),
])
def test_sqlite_urls(tmp_path, url, path):
    s = jit_settings_from_config({}, {"url": url}, [], str(tmp_path))
    assert s.state.path == path.replace("CFG", str(tmp_path))


@pytest.mark.parametrize("jit,state,hooks,key", [
    ({"max_duration": "forever"}, {}, [], "jit.max_duration"),
    ({"default_duration": "9h"}, {}, [], "jit.default_duration"),
    ({"min_approvals": 0}, {}, [], "jit.min_approvals"),
    ({"approvers": "alice"}, {}, [], "jit.approvers"),
    ({"self_approval": "no"}, {}, [], "jit.self_approval"),
    ({"bogus": 1}, {}, [], "jit.bogus"),
    ({"auto_approve": [{"columns": ["public.t.c"]}]}, {}, [], "jit.auto_approve[0].users"),
    ({"auto_approve": [{"users": ["u"]}]}, {}, [], "jit.auto_approve[0]"),
    ({"auto_approve": [{"users": ["u"], "columns": ["t.c"]}]}, {}, [], "jit.auto_approve[0].columns"),
    ({"auto_approve": [{"users": ["u"], "tables": ["s.t"], "max_duration": "9h"}]}, {}, [],
     "jit.auto_approve[0].max_duration"),
    ({}, {"url": "mysql://x"}, [], "state.url"),
    ({}, {"schema": "a-b"}, [], "state.schema"),
    ({}, {}, [{"url": "ftp://x"}], "webhooks[0].url"),
    ({}, {}, [{"url": "http://x", "events": ["nope"]}], "webhooks[0].events"),
    ({}, {}, [{"url": "http://x", "format": "xml"}], "webhooks[0].format"),
    ({}, {}, [{"url": "http://x", "max_attempts": 0}], "webhooks[0].max_attempts"),
])
def test_config_errors_name_the_key(tmp_path, jit, state, hooks, key):
    with pytest.raises(JitConfigError) as ei:
        jit_settings_from_config(jit, state, hooks, str(tmp_path))
    assert ei.value.key == key, ei.value
