"""Pure detector tests: positives, hard negatives, properties. No database."""

from __future__ import annotations

import random
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.detectors import Strength, classify_column, name_tokens, suggest_mask, type_class
from policy.detectors.checksums import ean13_ok, iban_ok, luhn_ok
from policy.detectors.contact import match_email, match_phone
from policy.detectors.credentials import looks_random, match_password_hash, match_secret
from policy.detectors.financial import match_card, match_iban
from policy.detectors.government import match_ssn
from policy.detectors.network import match_ip
from policy.detectors.personal import match_person_name

import discover_data as gen

S, W, N = Strength.STRONG, Strength.WEAK, Strength.NONE


@pytest.mark.parametrize("v,exp", [
    ("ada@example.com", S), ("first.last+tag@mail.example.co.uk", S), ("o'brien@example.ie", S),
    ("not an email", N), ("a@b", N), ("user@@example.com", N), ("@example.com", N),
    ("x..y@example.com", N),
])
def test_email(v: str, exp: Strength) -> None:
    assert match_email(v) is exp


@pytest.mark.parametrize("v", [
    "+14155550123", "+1 415 555 0123", "+44 20 7946 0958", "+33 1 23 45 67 89", "+49 30 12345678",
    "(415) 555-0123", "415-555-0123", "415.555.0123", "020 7946 0958", "07700 900123",
    "01 23 45 67 89", "030 12345678",
])
def test_phone_positive(v: str) -> None:
    assert match_phone(v) is S


@pytest.mark.parametrize("v", [
    "2024-03-01", "01.02.2024", "12/31/1999", "10:30:00", "2024-03-01 10:30:00+00",
    "123-45-6789", "4111 1111 1111 1111", "482913374", "12345", "1.2.3.4", "+1", "+12",
])
def test_phone_negative(v: str) -> None:
    assert match_phone(v) is not S


def test_phone_bare_digits_are_weak() -> None:
    assert match_phone("4155550123") is W


@pytest.mark.parametrize("v", [
    "4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "5555555555554444",
    "378282246310005", "3782 822463 10005", "6011111111111117", "3530111333300000",
    "2221000000000009",
])
def test_card_positive(v: str) -> None:
    assert match_card(v) is S


@pytest.mark.parametrize("v", [
    "4111111111111112",  # fails Luhn
    "1234567812345678",  # no issuer, fails Luhn
    "4006381333924",  # valid EAN-13 that also passes Luhn and starts with 4
    "0000000000000000", "41111111 11111111", "4111 1111 1111 111",
])
def test_card_negative(v: str) -> None:
    assert match_card(v) is N


def test_ean13_that_passes_luhn_is_not_a_card() -> None:
    assert ean13_ok("4006381333924") and luhn_ok("4006381333924")
    assert match_card("4006381333924") is N


@pytest.mark.parametrize("v,exp", [
    ("123-45-6789", S), ("078 05 1120", S),
    ("000-12-3456", W), ("666-12-3456", W), ("912-34-5678", W), ("123-00-4567", W),
    ("123-45-0000", W), ("123456789", W), ("000456789", N), ("12345678", N), ("1234-56-789", N),
])
def test_ssn(v: str, exp: Strength) -> None:
    assert match_ssn(v) is exp


@pytest.mark.parametrize("v", [
    "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606",
    "NL91ABNA0417164300", "gb82 west 1234 5698 7654 32",
])
def test_iban_positive(v: str) -> None:
    assert match_iban(v) is S


@pytest.mark.parametrize("v", [
    "DE89 3704 0044 0532 0130 01", "GB82WEST1234569876543", "XX00", "DE00370400440532013000",
])
def test_iban_negative(v: str) -> None:
    assert match_iban(v) is N


@pytest.mark.parametrize("v,exp", [
    ("192.168.1.10", S), ("10.0.0.0/8", S), ("2001:db8::1", S), ("::1", S), ("fe80::1%eth0", S),
    ("256.1.1.1", N), ("1.2.3", N), ("10:30:00", N), ("2024-03-01", N), ("1.2.3.4.5", N),
])
def test_ip(v: str, exp: Strength) -> None:
    assert match_ip(v) is exp


@pytest.mark.parametrize("v", [
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "AKIAIOSFODNN7EXAMPLE", "ghp_" + "aB3" * 12,
    "xoxb-12345678901-12345678901-abcdefABCDEF123456", "glpat-xxxxxxxxxxxxxxxxxxxx",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "Zx8Kq2LmP9vR4tW7yB1nC6dF3gH5jA0s",
])
def test_secret_positive(v: str) -> None:
    assert match_secret(v) is S


@pytest.mark.parametrize("v", [
    "550e8400-e29b-41d4-a716-446655440000",  # UUID
    "9fceb02d0ae598e95dc970b74767f19372d61af8",  # git SHA
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # sha256
    "D41D8CD98F00B204E9800998ECF8427E",  # upper-case hex tracking code
    "SummerSaleCampaignBanner2024", "ThisIsMyLongCampaignName2024", "Invoice_2024_03_ACME_Corp_Q1",
    "SKU-2024-ABCD-1234-XYZ9", "2024-03-01T10:30:00.123456+00:00", "https://example.com/a/b/c/d",
    "user_1234567890_abcdefGH", "the quick brown fox jumps over",
])
def test_secret_negative(v: str) -> None:
    assert match_secret(v) is N


def test_random_tokens_mostly_look_random() -> None:
    rng = random.Random(3)
    hits = sum(looks_random(gen.b64(rng.randbytes(24))) for _ in range(500))
    assert hits >= 0.9 * 500


@pytest.mark.parametrize("v", [
    "$2b$12$" + "a" * 53, "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
    "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
    "pbkdf2_sha256$600000$abcdefghijkl$" + "A" * 43 + "=",
    "$pbkdf2-sha256$29000$N2bMWavVmlPqXUsp5dzaew$" + "a" * 43,
    "$6$rounds=5000$saltsalt$" + "b" * 86, "$1$saltsalt$" + "c" * 22,
    "md5" + "0" * 32,
    "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVka2V5c3RvcmVka2V5:c2VydmVya2V5c2VydmVya2V5",
])
def test_password_hash_positive(v: str) -> None:
    assert match_password_hash(v) is S


def test_bare_digest_is_weak_and_needs_a_password_name() -> None:
    rng = random.Random(1)
    values = [rng.randbytes(16).hex() for _ in range(50)]
    assert match_password_hash(values[0]) is W
    assert classify_column("public.t", "tracking_code", "text", values) is None
    f = classify_column("public.t", "legacy_password", "text", values)
    assert f is not None and f.detector == "password_hash"


@pytest.mark.parametrize("v,exp", [
    ("Grace Hopper", S), ("Hopper, Grace", S), ("Ada", S), ("Siobhan O'Neill", W),
    ("Blue Widget", W), ("blue widget", N), ("R2-D2", N), ("ACME Corp", N),
])
def test_person_name_values(v: str, exp: Strength) -> None:
    assert match_person_name(v) is exp


def test_name_tokens() -> None:
    assert name_tokens("customerEmail_2") == ("customer", "email")
    assert name_tokens("DateOfBirth") == ("date", "of", "birth")


@pytest.mark.parametrize("t,c", [
    ("character varying(80)", "text"), ("integer", "integer"), ("numeric(10,2)", "numeric"),
    ("timestamp with time zone", "timestamp"), ("date", "date"), ("inet", "inet"),
    ("jsonb", "json"), ("text[]", "json"), ("uuid", "other"), ("boolean", "other"),
])
def test_type_class(t: str, c: str) -> None:
    assert type_class(t) == c


# -- columns ---------------------------------------------------------------------------------


def _column(column: str, values: list[str | None], type_name: str = "text",
            table: str = "public.t") -> str | None:
    f = classify_column(table, column, type_name, values)
    return f.detector if f else None


def test_hard_negative_columns() -> None:
    rng = random.Random(5)
    n = 300
    assert _column("order_no", [str(rng.randint(10**8, 10**9 - 1)) for _ in range(n)]) is None
    assert _column("employee_number", [str(rng.randint(10**8, 10**9 - 1)) for _ in range(n)],
                   "integer") is None
    assert _column("ean", [gen.ean13(rng) for _ in range(n)]) is None
    assert _column("ref", [gen.luhn_fail("4", 16, rng) for _ in range(n)]) is None
    assert _column("tracking", [rng.randbytes(16).hex() for _ in range(n)]) is None
    assert _column("sha", [rng.randbytes(20).hex() for _ in range(n)]) is None
    assert _column("created_at", [gen.timestamp(rng) for _ in range(n)], "timestamptz") is None
    assert _column("logged_at", [gen.timestamp(rng) for _ in range(n)]) is None
    assert _column("hired_on", [gen.birth(rng) for _ in range(n)], "date") is None
    assert _column("slug", [gen.slug(rng) for _ in range(n)]) is None
    assert _column("name", [rng.choice(gen.PRODUCTS) for _ in range(n)], table="shop.products") is None


def test_ssn_column_needs_dashes_or_the_name() -> None:
    rng = random.Random(2)
    bare = [gen.ssn(rng, dashed=False) for _ in range(200)]
    assert _column("ssn", bare) == "ssn"
    assert _column("employee_no", bare) is None
    assert _column("anything", [gen.ssn(rng) for _ in range(200)]) == "ssn"


def test_bare_name_column_depends_on_the_table() -> None:
    rng = random.Random(4)
    people = [f"{rng.choice(['Siobhan', 'Tariq', 'Ingrid'])} {rng.choice(gen.LAST)}" for _ in range(100)]
    assert _column("name", people, table="public.customers") == "person_name"
    assert _column("name", people, table="public.shipments") is None
    assert _column("last_name", [rng.choice(gen.LAST) for _ in range(100)]) == "person_name"


def test_name_only_evidence_and_contradiction() -> None:
    f = classify_column("public.t", "email", "text", [])
    assert f is not None and f.detector == "email" and f.confidence == pytest.approx(0.6)
    assert classify_column("public.t", "email", "text", ["pending", "sent"] * 10) is None
    assert classify_column("public.t", "email_status", "text", []) is None


def test_inet_by_type_and_dob_by_name() -> None:
    assert _column("addr", ["10.0.0.1", "10.0.0.2"], "inet") == "ip_address"
    assert _column("birthday", ["1980-01-02"] * 20, "date") == "date_of_birth"
    assert _column("shipped", ["1980-01-02"] * 20, "date") is None


def test_free_text_containing_pii() -> None:
    rng = random.Random(6)
    values = [gen.sentence(rng) for _ in range(180)]
    values += [f"Please email me at ada.{i}@example.com soon" for i in range(20)]
    f = classify_column("public.orders", "comment", "text", values)
    assert f is not None and f.detector == "free_text" and f.contains == ("email",)
    assert f.example is not None and "ada." not in f.example
    clean = [gen.sentence(rng) + f" at {gen.timestamp(rng)} #{rng.randint(1, 10**9)}" for _ in range(200)]
    assert classify_column("public.orders", "comment", "text", clean) is None


def test_json_column_is_free_text() -> None:
    values = ['{"email": "u%d@example.com", "plan": "pro"}' % i for i in range(50)]
    assert _column("payload", values, "jsonb") == "free_text"


# -- properties ------------------------------------------------------------------------------


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_detectors_never_raise(value: str) -> None:
    classify_column("public.t", "comment", "text", [value, value + " x"])


@given(st.randoms(use_true_random=False))
@settings(max_examples=100, deadline=None)
def test_valid_cards_always_match_and_a_wrong_check_digit_never(rnd: random.Random) -> None:
    good = gen.luhn_complete(rnd.choice(["4", "51", "37", "6011"]), 16, rnd)
    if good.startswith("37"):
        good = gen.luhn_complete("37", 15, rnd)
    assert match_card(good) is S
    bad = good[:-1] + str((int(good[-1]) + 1 + rnd.randrange(9)) % 10)
    assert match_card(bad) is N


@given(st.randoms(use_true_random=False))
@settings(max_examples=100, deadline=None)
def test_generated_ibans_validate_and_one_changed_digit_fails(rnd: random.Random) -> None:
    value = gen.iban(rnd).replace(" ", "")
    assert iban_ok(value)
    i = rnd.randrange(4, len(value))
    if value[i].isdigit():
        changed = value[:i] + str((int(value[i]) + 1) % 10) + value[i + 1:]
        assert not iban_ok(changed)


@given(st.randoms(use_true_random=False))
@settings(max_examples=60, deadline=None)
def test_masked_examples_never_contain_the_value(rnd: random.Random) -> None:
    cases = [("email", lambda r: f"someone.{r.randint(1, 10**6)}@example.com"), ("ssn", gen.ssn),
             ("card_number", gen.card), ("iban", gen.iban), ("phone", gen.phone),
             ("api_key", gen.api_key), ("password", gen.password_hash),
             ("client_ip", gen.ip), ("full_name", lambda r: f"{r.choice(gen.FIRST)} {r.choice(gen.LAST)}")]
    for column, make in cases:
        values = [make(rnd) for _ in range(10)]
        f = classify_column("public.t", column, "text", values)
        assert f is not None, column
        assert f.example is not None
        for v in values:
            assert v not in f.example and v.strip() not in f.example


@pytest.mark.parametrize("detector", ["email", "phone", "card", "ssn", "iban", "ip_address",
                                      "date_of_birth", "person_name", "secret", "password_hash",
                                      "free_text"])
@pytest.mark.parametrize("type_name", ["text", "bigint", "date", "inet", "jsonb", "numeric(20,0)"])
def test_suggested_masks_are_valid_policy(detector: str, type_name: str) -> None:
    from policy.detectors import ColumnFinding
    from policy.rules import policy_from_dict

    f = ColumnFinding("public.t", "c", type_name, detector, 1.0, 1.0, 10, 0.6, 1.0)
    entry = {"table": "public.t", "column": "c", **suggest_mask(f)}
    policy = policy_from_dict(tomllib.loads("")  # noqa: SIM
                              | {"mask": [entry], "exempt_users": ["postgres"]})
    assert policy.rules[0].mask == entry["mask"]
