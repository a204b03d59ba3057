"""``[[admin.tokens]]`` validation and constant-time token lookup."""

from __future__ import annotations

import pytest

from proxy.web import TokenConfigError, TokenSpec, hash_token, tokens_from_config
from proxy.web.auth import TokenAuthority

H1, H2 = hash_token("one"), hash_token("two")


def test_valid() -> None:
    specs = tokens_from_config([{"name": "alice", "token_sha256": H1.upper(), "role": "admin"},
                                {"name": "bob", "token_sha256": H2}])
    assert specs == [TokenSpec("alice", H1, "admin"), TokenSpec("bob", H2, "approver")]
    assert tokens_from_config(None) == []


@pytest.mark.parametrize("raw,key", [
    ({"name": "a"}, "admin.tokens"),
    (["x"], "admin.tokens[0]"),
    ([{"token_sha256": H1, "role": "admin"}], "admin.tokens[0].name"),
    ([{"name": "a", "role": "admin"}], "admin.tokens[0].token_sha256"),
    ([{"name": "a", "token_sha256": "abc", "role": "admin"}], "admin.tokens[0].token_sha256"),
    ([{"name": "a", "token_sha256": H1, "role": "root"}], "admin.tokens[0].role"),
    ([{"name": "a", "token_sha256": H1, "token": "x"}], "admin.tokens[0].token"),
    ([{"name": "a", "token_sha256": H1}, {"name": "a", "token_sha256": H2}],
     "admin.tokens[1].name"),
    ([{"name": "a", "token_sha256": H1}, {"name": "b", "token_sha256": H1}],
     "admin.tokens[1].token_sha256"),
])
def test_errors_name_the_key(raw, key: str) -> None:
    with pytest.raises(TokenConfigError) as info:
        tokens_from_config(raw)
    assert isinstance(info.value, ValueError)
    assert info.value.key == key
    assert str(info.value).startswith(key + ":")


def test_identify() -> None:
    auth = TokenAuthority(tokens_from_config([{"name": "alice", "token_sha256": H1},
                                              {"name": "bob", "token_sha256": H2,
                                               "role": "admin"}]))
    assert auth.identify("one").name == "alice"
    assert auth.identify("two").role == "admin"
    assert auth.identify("three") is None
    assert auth.identify("") is None and auth.identify(None) is None
    assert auth.identify("\udcff") is None  # unencodable input does not raise
