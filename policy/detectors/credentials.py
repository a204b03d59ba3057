"""Secrets (API keys, private keys, tokens) and password hashes.

Secrets: well-known vendor prefixes (Stripe ``sk_live_``, AWS ``AKIA``/``ASIA``, GitHub
``ghp_``/``github_pat_``, Slack ``xoxb-``/``xoxp-``, GitLab ``glpat-``, Google ``AIza``,
OpenAI ``sk-``, npm, SendGrid), PEM private keys, JWTs, and otherwise *random-looking*
tokens: at least 20 characters from a base64/base62 alphabet, mixing upper case, lower case
and digits, with Shannon entropy close to the maximum for their length. Hex strings (UUIDs,
git SHAs, tracking codes, digests) are never called secrets for entropy alone: a 40-char SHA
is an identifier, not a key.

Password hashes: bcrypt ``$2b$``, argon2 ``$argon2id$``, scrypt, PBKDF2 (Django, passlib,
werkzeug layouts), crypt ``$1$``/``$5$``/``$6$``/``$y$``, PostgreSQL ``md5…`` and
``SCRAM-SHA-256$…`` verifiers are STRONG; a bare 32/40/64-hex digest is only WEAK — it
counts when the column is named like a password.
"""

from __future__ import annotations

import math
import re
from typing import Iterator

from .base import Detector, Strength, TypeClass, hints, shannon_entropy

_SECRET_PREFIXES = re.compile(
    r"(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}"
    r"|whsec_[0-9A-Za-z]{24,}"
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}"
    r"|gh[pousr]_[0-9A-Za-z]{36,}"
    r"|github_pat_[0-9A-Za-z_]{40,}"
    r"|xox[bpoasr]-[0-9A-Za-z-]{10,}"
    r"|xapp-[0-9A-Za-z-]{10,}"
    r"|glpat-[0-9A-Za-z_-]{20,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|sk-(?:proj-)?[0-9A-Za-z_-]{20,}"
    r"|npm_[0-9A-Za-z]{36}"
    r"|SG\.[0-9A-Za-z_-]{22}\.[0-9A-Za-z_-]{43}"
    r"|eyJ[0-9A-Za-z_-]{8,}\.eyJ[0-9A-Za-z_-]{8,}\.[0-9A-Za-z_-]{8,}"
)
_PEM = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9+/=_.~-]{20,512}")
_HEXISH = re.compile(r"[0-9a-fA-F-]+")


def _expected_entropy(n: int, k: int = 62) -> float:
    """Plug-in entropy expected from ``n`` uniform draws over ``k`` symbols (Miller–Madow)."""
    return min(math.log2(n), math.log2(k) - (k - 1) / (2 * n * math.log(2)))


def _char_class(c: str) -> int:
    return 0 if c.isupper() else 1 if c.islower() else 2 if c.isdigit() else 3


def looks_random(token: str) -> bool:
    """A random base62/base64 token, not hex and not made of words or parts.

    Four tests, each passed by ~99 % of truly random tokens of 20+ characters: entropy at
    least 85 % of what random draws give at that length; the character class (upper, lower,
    digit, other) switches between at least 40 % of neighbours (``CampaignName2024`` switches
    rarely); at most a quarter of neighbours are consecutive characters (``abcdef``,
    ``123456``); at most half the characters sit in word-like runs (``Name``, ``user``).
    Hex strings (UUIDs, SHAs, digests, tracking codes) and ``A-12-B-34``-style structured
    identifiers are rejected outright.
    """
    if not _TOKEN_CHARS.fullmatch(token) or _HEXISH.fullmatch(token):
        return False
    if not (any(c.isupper() for c in token) and any(c.islower() for c in token)
            and any(c.isdigit() for c in token)):
        return False
    parts = re.split(r"[_.~-]", token)
    if len(parts) >= 3 and all(len(p) <= 8 for p in parts):
        return False
    n = len(token)
    pairs = list(zip(token, token[1:]))
    if shannon_entropy(token) < 0.85 * _expected_entropy(n):
        return False
    if sum(_char_class(a) != _char_class(b) for a, b in pairs) < 0.4 * (n - 1):
        return False
    if sum(abs(ord(a) - ord(b)) <= 1 and a.isalnum() and b.isalnum() for a, b in pairs) > 0.25 * (n - 1):
        return False
    wordy = sum(len(m.group(0)) for m in _WORDLIKE.finditer(token))
    return wordy <= 0.5 * n


_WORDLIKE = re.compile(r"[A-Z]?[a-z]{3,}")


def match_secret(value: str) -> Strength:
    v = value.strip()
    if _PEM.search(v[:200]):
        return Strength.STRONG
    if len(v) > 512 or not v:
        return Strength.NONE
    if _SECRET_PREFIXES.fullmatch(v):
        return Strength.STRONG
    if looks_random(v):
        return Strength.STRONG
    return Strength.NONE


_SECRET_IN_TEXT = re.compile(r"(?<![0-9A-Za-z_])(?:" + _SECRET_PREFIXES.pattern + r")")


def find_secret(text: str) -> Iterator[str]:
    m = _PEM.search(text)
    if m:
        yield m.group(0)
    yield from (m.group(0) for m in _SECRET_IN_TEXT.finditer(text))


def example_secret(value: str) -> str:
    v = value.strip()
    if _PEM.search(v[:200]):
        return "-----BEGIN … PRIVATE KEY----- ***"
    m = re.match(r"(sk|rk)_(live|test)_|whsec_|AKIA|ASIA|gh[pousr]_|github_pat_|xox[bpoasr]-|"
                 r"xapp-|glpat-|AIza|sk-|npm_|SG\.|eyJ", v)
    return (m.group(0) if m else "") + "***"


_HASHES = re.compile(
    r"\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}"
    r"|\$argon2(?:id|i|d)\$(?:v=\d+\$)?m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}"
    r"|\$scrypt\$[^\s]{10,}|\$7\$[./A-Za-z0-9]{11,}\$[./A-Za-z0-9]{20,}"
    r"|scrypt:\d+:\d+:\d+\$[^\s$]+\$[0-9a-f]{20,}"
    r"|pbkdf2_sha(?:1|256|512)\$\d+\$[^\s$]+\$[A-Za-z0-9+/=]{20,}"
    r"|\$pbkdf2(?:-sha(?:1|256|512))?\$\d+\$[./A-Za-z0-9+=]+\$[./A-Za-z0-9+=]{20,}"
    r"|pbkdf2:sha(?:1|256|512):\d+\$[^\s$]+\$[0-9a-f]{20,}"
    r"|\$(?:1|5|6)\$(?:rounds=\d+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{22,86}"
    r"|\$(?:y|gy|7)\$[./A-Za-z0-9]+\$[./A-Za-z0-9]*\$[./A-Za-z0-9]{20,}"
    r"|md5[0-9a-f]{32}"
    r"|SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+"
    r"|\{(?:SSHA|SHA|SSHA256|SSHA512|CRYPT)\}[A-Za-z0-9+/=$./]{16,}"
)
_BARE_DIGEST = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{40}|[0-9a-fA-F]{64}|[0-9a-fA-F]{128}")


def match_password_hash(value: str) -> Strength:
    v = value.strip()
    if len(v) > 512:
        return Strength.NONE
    if _HASHES.fullmatch(v):
        return Strength.STRONG
    if _BARE_DIGEST.fullmatch(v):
        return Strength.WEAK
    return Strength.NONE


_HASH_IN_TEXT = re.compile(r"\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53}|\$argon2(?:id|i|d)\$v=\d+\$\S+")


def find_password_hash(text: str) -> Iterator[str]:
    yield from (m.group(0) for m in _HASH_IN_TEXT.finditer(text))


def example_password_hash(value: str) -> str:
    v = value.strip()
    m = re.match(r"\$[0-9a-z-]+\$|SCRAM-SHA-256\$|md5|pbkdf2[_:]sha\d+|scrypt:|\{[A-Z0-9]+\}", v)
    return (m.group(0) if m else "") + "***"


SECRET = Detector(
    name="secret",
    label="secret / API key",
    match=match_secret,
    find=find_secret,
    example=example_secret,
    name_hints=hints(strong=["api_key", "apikey", "secret", "secret_key", "access_key",
                             "private_key", "client_secret", "access_token", "refresh_token",
                             "auth_token", "bearer", "webhook_secret", "signing_key"],
                     weak=["token", "key", "credential", "credentials"],
                     veto=["id", "public", "fingerprint", "name", "count", "expires", "expiry",
                           "at", "type", "last", "prefix", "hash"]),
    applies_to=frozenset({TypeClass.TEXT}),
    reliability=0.85,
)

PASSWORD_HASH = Detector(
    name="password_hash",
    label="password hash",
    match=match_password_hash,
    find=find_password_hash,
    example=example_password_hash,
    name_hints=hints(strong=["password", "passwd", "pwd", "password_hash", "hashed_password",
                             "pw_hash", "passhash", "pass_hash", "rolpassword", "pass_digest",
                             "password_digest", "encrypted_password"], weak=["pass", "pw"],
                     veto=["reset", "changed", "expires", "expiry", "at", "policy", "length",
                           "hint", "count", "attempts", "updated"]),
    applies_to=frozenset({TypeClass.TEXT}),
    reliability=0.99,
    weak_reliability=0.8,
)
