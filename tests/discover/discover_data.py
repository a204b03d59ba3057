"""A generated database with known ground truth, for measuring discovery.

Every column is labelled with the detector that should fire (or None for hard negatives
built to look like something sensitive: Luhn-failing 16-digit numbers starting with 4,
valid EAN-13 barcodes, 9-digit order and employee numbers, hex tracking codes, UUIDs, git
SHAs, CamelCase slugs, timestamps, product names). Values come from a seeded generator, so
every run sees the same data; :data:`SENSITIVE_VALUES` collects the raw sensitive values
so tests can assert none of them ever appears in any output.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import random
import string
import uuid
from dataclasses import dataclass
from typing import Callable

from policy.detectors.checksums import luhn_ok

ALNUM = string.ascii_letters + string.digits
B64 = string.ascii_letters + string.digits + "./"

FIRST = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret",
         "Linus", "Radia", "Guido", "Bjarne", "Anita", "Katherine", "Dennis", "Sophie", "Yuki",
         "Olga", "Mohammed", "Chen", "Fatima", "Lucas", "Noah", "Emma", "Liam", "Ingrid",
         "Siobhan", "Tariq", "Mei"]
LAST = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
        "Hamilton", "Torvalds", "Perlman", "van Rossum", "Stroustrup", "Borg", "Johnson",
        "Ritchie", "Nakamura", "Ivanova", "Haddad", "Wang", "O'Brien", "Müller", "García",
        "Smith-Jones", "Nguyen", "Kowalski", "Okafor", "Svensson", "Rossi", "Dubois"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "example.co.uk"]
WORDS = ["delivery", "arrived", "late", "box", "damaged", "great", "service", "refund",
         "please", "thanks", "order", "again", "quality", "price", "support", "slow", "fast",
         "wrapped", "gift", "colour", "size", "fits", "well", "return", "label"]
PRODUCTS = ["Blue Widget", "Red Gadget", "Steel Sprocket", "Mini Lamp", "Garden Hose",
            "Coffee Grinder", "Desk Organizer", "Travel Mug", "Yoga Mat", "Paper Clips"]


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for d in string.digits:
        if luhn_ok(body + d):
            return body + d
    raise AssertionError


def luhn_fail(prefix: str, length: int, rng: random.Random) -> str:
    good = luhn_complete(prefix, length, rng)
    return good[:-1] + str((int(good[-1]) + 1 + rng.randrange(9)) % 10)


def ean13(rng: random.Random) -> str:
    body = str(rng.randint(400, 440)) + "".join(rng.choice(string.digits) for _ in range(9))
    s = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(body))
    return body + str((10 - s % 10) % 10)


def iban(rng: random.Random) -> str:
    country, bban = rng.choice([
        ("DE", "".join(rng.choice(string.digits) for _ in range(18))),
        ("GB", "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
         + "".join(rng.choice(string.digits) for _ in range(14))),
        ("FR", "".join(rng.choice(string.digits) for _ in range(23))),
        ("NL", "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
         + "".join(rng.choice(string.digits) for _ in range(10))),
    ])
    num = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    compact = f"{country}{98 - num % 97:02d}{bban}"
    if rng.random() < 0.5:
        return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))
    return compact


def ssn(rng: random.Random, dashed: bool = True) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    s = f"{area:03d}", f"{rng.randint(1, 99):02d}", f"{rng.randint(1, 9999):04d}"
    return "-".join(s) if dashed else "".join(s)


def phone(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    area = str(rng.randint(201, 989))
    return rng.choice([
        lambda: f"+1{area}{rng.randint(200, 999)}{d(4)}",
        lambda: f"+1 {area} {rng.randint(200, 999)} {d(4)}",
        lambda: f"+44 20 {d(4)} {d(4)}",
        lambda: f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"+49 30 {d(8)}",
        lambda: f"({area}) {rng.randint(200, 999)}-{d(4)}",
        lambda: f"{area}-{rng.randint(200, 999)}-{d(4)}",
        lambda: f"020 {d(4)} {d(4)}",
        lambda: f"07{d(3)} {d(6)}",
        lambda: f"01 {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"030 {d(8)}",
    ])()


def card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15),
                                 ("37", 15), ("6011", 16), ("35", 16)])
    if prefix == "35":
        prefix = str(rng.randint(3528, 3589))
    n = luhn_complete(prefix, length, rng)
    style = rng.random()
    if style < 0.4:
        return n
    sep = " " if style < 0.7 else "-"
    if length == 15:
        return sep.join([n[:4], n[4:10], n[10:]])
    return sep.join(n[i:i + 4] for i in range(0, 16, 4))


def rand(rng: random.Random, n: int, alphabet: str = ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def password_hash(rng: random.Random) -> str:
    b = lambda n: base64.b64encode(rng.randbytes(n)).decode().rstrip("=")  # noqa: E731
    return rng.choice([
        lambda: f"$2b$12${rand(rng, 53, B64)}",
        lambda: f"$argon2id$v=19$m=65536,t=3,p=4${b(16)}${b(32)}",
        lambda: f"$scrypt$ln=16,r=8,p=1${b(16)}${b(32)}",
        lambda: f"pbkdf2_sha256$600000${rand(rng, 22)}${b(32)}=",
        lambda: f"$6$rounds=5000${rand(rng, 16, B64)}${rand(rng, 86, B64)}",
        lambda: f"SCRAM-SHA-256$4096:{b(16)}=${b(32)}=:{b(32)}=",
        lambda: "md5" + rng.randbytes(16).hex(),
    ])()


def api_key(rng: random.Random) -> str:
    return rng.choice([
        lambda: "sk_live_" + rand(rng, 24),
        lambda: "AKIA" + rand(rng, 16, string.ascii_uppercase + string.digits),
        lambda: "ghp_" + rand(rng, 36),
        lambda: f"xoxb-{rng.randint(10**10, 10**11)}-{rng.randint(10**10, 10**11)}-{rand(rng, 24)}",
        lambda: "glpat-" + rand(rng, 20),
    ])()


def jwt(rng: random.Random) -> str:
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": str(rng.randint(1, 10**6)), "iat": 1700000000}).encode())
    return f"{head}.{body}.{b64(rng.randbytes(32))}"


def pem(rng: random.Random) -> str:
    lines = [base64.b64encode(rng.randbytes(48)).decode() for _ in range(4)]
    return "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END RSA PRIVATE KEY-----"


def ip(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return str(ipaddress.IPv4Address(rng.randint(0x01000000, 0xDFFFFFFF)))
    return str(ipaddress.IPv6Address(rng.randint(0x20010DB8 << 96, (0x20010DB8 << 96) + 2**96)))


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."


def slug(rng: random.Random) -> str:
    parts = rng.sample(["Summer", "Winter", "Sale", "Campaign", "Banner", "Promo", "Launch",
                        "Newsletter", "Spring", "Holiday", "Flash", "Weekend"], 3)
    return "".join(parts) + str(rng.randint(2019, 2026))


def timestamp(rng: random.Random) -> str:
    t = dt.datetime(2020, 1, 1) + dt.timedelta(seconds=rng.randint(0, 150_000_000))
    return t.isoformat(sep=" ")


def birth(rng: random.Random) -> str:
    return (dt.date(1940, 1, 1) + dt.timedelta(days=rng.randint(0, 25000))).isoformat()


@dataclass
class Col:
    name: str
    sql_type: str
    gen: Callable[[random.Random, int], object]
    truth: str | None  # expected detector, None for negatives
    null_share: float = 0.0


def _name(rng: random.Random) -> str:
    return rng.choice(FIRST)


def _full(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _comment(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.15:
        return f"{sentence(rng)} Contact me at {rng.choice(FIRST).lower()}.{rng.randint(1, 999)}@{rng.choice(DOMAINS)} please"
    if r < 0.25:
        return f"Call back on +44 20 {rand(rng, 4, string.digits)} {rand(rng, 4, string.digits)} after 5pm"
    return sentence(rng)


def _hr_note(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.12:
        return f"SSN {ssn(rng)} verified by HR on {timestamp(rng)[:10]}"
    if r < 0.2:
        return f"Salary paid to {iban(rng)} from next month"
    return f"{sentence(rng)} Reviewed {timestamp(rng)}."


def _description(rng: random.Random) -> str:
    return (f"{rng.choice(PRODUCTS)} batch {rng.randint(100000, 999999999)} shipped "
            f"{timestamp(rng)}; {sentence(rng)} Version {rng.randint(1, 9)}.{rng.randint(0, 20)}")


TABLES: dict[str, list[Col]] = {
    "crm.customers": [
        Col("id", "integer", lambda r, i: i, None),
        Col("first_name", "text", lambda r, i: _name(r), "person_name"),
        Col("last_name", "text", lambda r, i: r.choice(LAST), "person_name"),
        Col("email", "text", lambda r, i: f"{r.choice(FIRST).lower()}.{i}@{r.choice(DOMAINS)}", "email", 0.1),
        Col("phone", "text", lambda r, i: phone(r), "phone", 0.2),
        Col("ssn", "text", lambda r, i: ssn(r), "ssn"),
        Col("birth_date", "date", lambda r, i: birth(r), "date_of_birth"),
        Col("created_at", "timestamptz", lambda r, i: timestamp(r), None),
        Col("signup_ip", "inet", lambda r, i: ip(r), "ip_address"),
        Col("comment", "text", lambda r, i: _comment(r), "free_text", 0.3),
        Col("loyalty_tier", "text", lambda r, i: r.choice(["gold", "silver", "bronze"]), None),
        Col("referral_code", "text", lambda r, i: r.randbytes(12).hex().upper(), None),
        Col("balance", "numeric(12,2)", lambda r, i: round(r.uniform(0, 9999), 2), None),
    ],
    "crm.leads_archive": [  # empty: name evidence only
        Col("lead_id", "bigint", lambda r, i: i, None),
        Col("contact_email", "text", lambda r, i: "", "email"),
        Col("status", "text", lambda r, i: "", None),
    ],
    "billing.payments": [
        Col("id", "bigint", lambda r, i: i, None),
        Col("card_number", "text", lambda r, i: card(r), "card"),
        Col("payer_iban", "text", lambda r, i: iban(r), "iban"),
        Col("amount", "numeric(10,2)", lambda r, i: round(r.uniform(1, 500), 2), None),
        Col("invoice_number", "text", lambda r, i: str(r.randint(100_000_000, 999_999_999)), None),
        Col("reference", "bigint", lambda r, i: int(luhn_fail("4", 16, r)), None),
        Col("card_fingerprint", "text", lambda r, i: r.randbytes(20).hex(), None),
        Col("paid_at", "timestamp", lambda r, i: timestamp(r), None),
        Col("pan_stored", "numeric(20,0)", lambda r, i: int(luhn_complete("4", 16, r)), "card"),
    ],
    "app.users": [
        Col("id", "uuid", lambda r, i: str(uuid.UUID(int=r.getrandbits(128))), None),
        Col("username", "text", lambda r, i: f"{r.choice(FIRST).lower()}{r.randint(1, 99)}", None),
        Col("password_hash", "text", lambda r, i: password_hash(r), "password_hash"),
        Col("legacy_password", "text", lambda r, i: r.randbytes(16).hex(), "password_hash"),
        Col("api_key", "text", lambda r, i: api_key(r), "secret", 0.5),
        Col("session_token", "text", lambda r, i: b64(r.randbytes(32)), "secret"),
        Col("last_login_ip", "text", lambda r, i: ip(r), "ip_address"),
        Col("avatar_sha", "text", lambda r, i: r.randbytes(20).hex(), None),
        Col("request_id", "text", lambda r, i: str(uuid.UUID(int=r.getrandbits(128))), None),
        Col("email_status", "text", lambda r, i: r.choice(["verified", "bounced", "pending"]), None),
        Col("phone_verified", "boolean", lambda r, i: r.random() < 0.5, None),
        Col("logged_at", "text", lambda r, i: timestamp(r), None),
        Col("order_ref", "text", lambda r, i: str(r.randint(10**9, 10**10 - 1)), None),
        Col("locale", "text", lambda r, i: r.choice(["en_US", "fr_FR", "de_DE"]), None),
        Col("login_count", "integer", lambda r, i: r.randint(0, 5000), None),
    ],
    "app.integrations": [
        Col("id", "integer", lambda r, i: i, None),
        Col("signing_material", "text", lambda r, i: pem(r), "secret"),
        Col("last_bearer", "text", lambda r, i: jwt(r), "secret"),
        Col("verifier", "text", lambda r, i: password_hash(r), "password_hash"),
        Col("commit_sha", "text", lambda r, i: r.randbytes(20).hex(), None),
        Col("tracking_code", "text", lambda r, i: r.randbytes(16).hex(), None),
        Col("webhook_url", "text", lambda r, i: f"https://hooks.example.com/{r.randint(1, 10**6)}", None),
        Col("campaign_slug", "text", lambda r, i: slug(r), None),
    ],
    "shop.products": [
        Col("sku", "text", lambda r, i: f"SKU-{r.randint(2019, 2026)}-{rand(r, 4, string.ascii_uppercase)}-{r.randint(1000, 9999)}", None),
        Col("name", "text", lambda r, i: r.choice(PRODUCTS), None),
        Col("ean13", "text", lambda r, i: ean13(r), None),
        Col("gtin", "bigint", lambda r, i: int(ean13(r)), None),
        Col("order_no", "integer", lambda r, i: r.randint(100_000_000, 999_999_999), None),
        Col("description", "text", lambda r, i: _description(r), None),
        Col("shipped_at", "timestamptz", lambda r, i: timestamp(r), None),
        Col("price", "numeric(8,2)", lambda r, i: round(r.uniform(1, 200), 2), None),
        Col("barcode_text", "text", lambda r, i: luhn_fail("4", 16, r), None),
        Col("release", "text", lambda r, i: f"{r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 99)}", None),
        Col("attributes", "jsonb", lambda r, i: json.dumps({"colour": r.choice(["red", "blue"]), "w": r.randint(1, 9)}), None),
    ],
    "hr.employees": [
        Col("employee_number", "text", lambda r, i: str(r.randint(100_000_000, 899_999_999)), None),
        Col("name", "text", lambda r, i: _full(r), "person_name"),
        Col("ssn", "text", lambda r, i: ssn(r, dashed=False), "ssn"),
        Col("dob", "text", lambda r, i: birth(r), "date_of_birth"),
        Col("home_phone", "text", lambda r, i: phone(r), "phone"),
        Col("notes", "text", lambda r, i: _hr_note(r), "free_text"),
        Col("hired_on", "date", lambda r, i: birth(r), None),
        Col("salary", "integer", lambda r, i: r.randint(30000, 200000), None),
        Col("city", "text", lambda r, i: r.choice(["Victoria", "Paris", "Berlin", "Austin", "Leeds"]), None),
        Col("department", "text", lambda r, i: r.choice(["R&D", "Sales", "Ops"]), None),
    ],
}

ROWS = {"crm.leads_archive": 0, "hr.employees": 800}
DEFAULT_ROWS = 3000


def truth() -> dict[tuple[str, str], str | None]:
    return {(t, c.name): c.truth for t, cols in TABLES.items() for c in cols}


def generate(seed: int = 7) -> dict[str, list[tuple[object, ...]]]:
    """Rows of every table (values as Python objects, None for NULL)."""
    rng = random.Random(seed)
    data: dict[str, list[tuple[object, ...]]] = {}
    for table, cols in TABLES.items():
        rows = []
        for i in range(ROWS.get(table, DEFAULT_ROWS)):
            rows.append(tuple(None if c.null_share and rng.random() < c.null_share
                              else c.gen(rng, i) for c in cols))
        data[table] = rows
    return data


def ddl() -> str:
    schemas = sorted({t.split(".")[0] for t in TABLES})
    out = [f"CREATE SCHEMA {s};" for s in schemas]
    for table, cols in TABLES.items():
        out.append(f"CREATE TABLE {table} ({', '.join(f'{c.name} {c.sql_type}' for c in cols)});")
    return "\n".join(out)


def load(dsn: str, seed: int = 7) -> dict[str, list[tuple[object, ...]]]:
    """Create and fill the tables in the database at ``dsn``; returns the generated rows."""
    import psycopg

    data = generate(seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ddl())
        for table, rows in data.items():
            names = ", ".join(c.name for c in TABLES[table])
            with conn.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as cp:
                for row in rows:
                    cp.write_row(row)
        conn.execute("ANALYZE")
    return data


def sensitive_values(data: dict[str, list[tuple[object, ...]]], min_len: int = 8) -> set[str]:
    """Raw values of every sensitive column (long enough to be searched for in outputs)."""
    out: set[str] = set()
    for table, cols in TABLES.items():
        for j, c in enumerate(cols):
            if c.truth is None:
                continue
            for row in data[table]:
                v = row[j]
                if v is not None and len(str(v)) >= min_len:
                    out.add(str(v))
    return out
