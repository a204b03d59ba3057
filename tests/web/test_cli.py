"""``pgveil requests/request/approve/deny/grants/grant/revoke`` against a live admin API."""

from __future__ import annotations

import json

import pytest

from proxy import jitcli

from .conftest import LiveServer


def run(live: LiveServer, capsys, *argv: str, token: str = "alice-token") -> tuple[int, str, str]:
    cmd, rest = argv[0], list(argv[1:])
    code = jitcli.main([cmd, "--url", live.url, "--token", token, *rest])
    out, err = capsys.readouterr()
    return code, out, err


def test_request_list_approve(live: LiveServer, capsys) -> None:
    code, out, _ = run(live, capsys, "request", "--user", "dave", "--table", "public.customers",
                       "--columns", "ssn,email", "--duration", "30 minutes", "--reason",
                       "ticket 123", token="carol-token")
    assert code == 0 and "is pending" in out
    rid = out.split()[1]
    code, out, _ = run(live, capsys, "requests", "--state", "pending")
    assert code == 0
    header, _, row = out.splitlines()[:3]
    assert header.split()[:4] == ["ID", "STATE", "USER", "ACCESS"]
    assert rid in row and "public.customers (ssn, email)" in row and "30m" in row
    assert "ticket 123" in row and "carol" in row
    code, out, _ = run(live, capsys, "approve", rid, "--max-uses", "2")
    assert code == 0 and f"approved request {rid}" in out
    code, out, _ = run(live, capsys, "grants")
    assert code == 0 and "dave" in out and "0/2" in out
    code, out, _ = run(live, capsys, "grants", "--json")
    grants = json.loads(out)
    assert grants[0]["user"] == "dave"
    code, out, _ = run(live, capsys, "revoke", grants[0]["id"], token="bob-token")
    assert code == 0 and "revoked grant" in out
    code, out, _ = run(live, capsys, "grants")
    assert out.strip() == "no active grants"


def test_deny_and_json(live: LiveServer, capsys) -> None:
    rid = live.pending()
    code, out, _ = run(live, capsys, "deny", rid, "--reason", "use staging", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["state"] == "denied" and d["deny_reason"] == "use staging"
    code, out, _ = run(live, capsys, "requests", "--json")
    assert json.loads(out)[0]["id"] == rid


def test_admin_grant(live: LiveServer, capsys) -> None:
    code, out, _ = run(live, capsys, "grant", "--user", "dave", "--table", "public.customers",
                       "--columns", "ssn", "--duration", "600", "--reason", "incident",
                       token="bob-token")
    assert code == 0 and out.startswith("granted g")
    code, _, err = run(live, capsys, "grant", "--user", "dave", "--table", "public.customers",
                       "--duration", "600", "--reason", "incident")
    assert code == 1 and "needs 'admin'" in err


def test_api_errors_exit_nonzero(live: LiveServer, capsys) -> None:
    rid = live.pending(requested_by="alice")
    code, out, err = run(live, capsys, "approve", rid)
    assert code == 1 and out == ""
    assert "cannot approve their own request" in err and "hint: ask another approver" in err.lower()
    code, _, err = run(live, capsys, "approve", "r404")
    assert code == 1 and "no request r404" in err
    code, _, err = run(live, capsys, "requests", token="wrong")
    assert code == 1 and "bearer token" in err


def test_missing_token_and_unreachable(live: LiveServer, capsys, monkeypatch) -> None:
    monkeypatch.delenv("PGVEIL_TOKEN", raising=False)
    assert jitcli.main(["requests", "--url", live.url]) == 2
    assert "no token" in capsys.readouterr().err
    assert jitcli.main(["requests", "--url", "http://127.0.0.1:1", "--token", "x"]) == 2
    assert "cannot reach the admin API" in capsys.readouterr().err


def test_env_defaults(live: LiveServer, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PGVEIL_ADMIN_URL", live.url)
    monkeypatch.setenv("PGVEIL_TOKEN", "alice-token")
    assert jitcli.main(["requests"]) == 0
    assert capsys.readouterr().out.strip() == "no requests"


def test_register_into_an_existing_parser() -> None:
    import argparse
    p = argparse.ArgumentParser(prog="pgveil")
    sub = p.add_subparsers(dest="command", required=True)
    jitcli.register(sub)
    args = p.parse_args(["deny", "r1", "--reason", "no", "--token", "t"])
    assert args.command == "deny" and args.id == "r1" and callable(args.func)
    with pytest.raises(SystemExit):
        p.parse_args(["approve", "r1", "--max-uses", "0"])
    with pytest.raises(SystemExit):
        p.parse_args(["requests", "--state", "bogus"])
