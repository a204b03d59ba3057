"""Dates of birth and person names: mostly name evidence, confirmed by value shape.

Neither can be recognised from a value alone — ``1987-03-14`` is also an order date and
``Grace Hopper`` looks like ``Blue Widget`` — so a matching value is WEAK unless it carries
its own proof. Dates of birth: a date-typed (or date-looking text) column whose name says
birth (``dob``, ``birth_date``, ``date_of_birth``, ``born_on``…) with values in 1900–2099.
Person names: 1–4 capitalised words of letters (apostrophes and hyphens allowed); a value
whose first word is a common given name is STRONG, so a ``name`` column full of people is
found even in a table called ``accounts``, while ``products.name`` is not.
"""

from __future__ import annotations

import re

from .base import Detector, Strength, TypeClass, hints

_DATE = re.compile(r"((?:19|20)\d\d)-(\d\d)-(\d\d)(?:[ T][0-9:.+-]*)?")
_DATE_OTHER = re.compile(r"(\d\d)[./](\d\d)[./]((?:19|20)\d\d)")


def match_dob(value: str) -> Strength:
    v = value.strip()
    m = _DATE.fullmatch(v)
    if m and 1 <= int(m.group(2)) <= 12 and 1 <= int(m.group(3)) <= 31:
        return Strength.WEAK
    if _DATE_OTHER.fullmatch(v):
        return Strength.WEAK
    return Strength.NONE


def example_dob(value: str) -> str:
    m = re.search(r"(?:19|20)\d\d", value)
    return f"{m.group(0)[:3]}x-**-**" if m else "****-**-**"


# Common given names across several languages (lower case). A dictionary only helps: a
# name missing here is still found through the column name.
GIVEN_NAMES: frozenset[str] = frozenset("""
aaron abigail ada adam adrian agnes ahmed aisha alan albert alejandro alex alexander
alexandra alice alicia alison amanda amelia amir amy ana andrea andrew angela anita ann anna
anne anthony antonio arthur ashley barbara ben benjamin bernard beth betty bill bob brandon
brenda brian bruce carl carlos carmen carol caroline catherine charles charlie charlotte chen
chris christian christina christine christopher claire clara craig cynthia daniel david
deborah dennis diana diane diego dmitri donald donna dorothy douglas edsger edward elena
elizabeth ella emily emma eric erik eva evelyn fatima frances francesca francisco frank fred
gabriel gary george grace gregory hannah harold harry heather helen henry hiroshi hugo ian
irene isabella jack jacob james jamie jan jane janet jason jean jeffrey jennifer jessica jim
joan joe john jonathan jorge jose joseph joshua joyce juan judith julia julie justin karen
kate katherine kathleen kelly ken kenneth kevin kim kyle larry laura lauren leo linda lisa
liam lucas lucy luis margaret maria marie mark martha martin mary matthew megan melissa
michael michelle mike mohammed muhammad nancy natalie nathan nicholas nicole noah olga olivia
oscar pamela patricia patrick paul paula peter philip rachel ralph raymond rebecca richard
robert roger ronald rose ruth ryan samuel sandra sara sarah scott sean sharon sophia sophie
stephanie stephen steven susan tanaka teresa thomas timothy tom tyler victoria vincent
virginia walter wei william yuki zoe
""".split())

_UP, _LOW = "A-ZÀ-ÖØ-Þ", "a-zß-öø-ÿ"
_WORD = (rf"(?:[{_UP}]['’])?[{_UP}][{_LOW}]+(?:[{_UP}][{_LOW}]+)?"
         rf"(?:-[{_UP}][{_LOW}]+)?")
_PARTICLE = r"(?:van|von|de|der|den|da|di|du|la|le|del|della|bin|al|ten|ter)"
_PERSON = re.compile(
    rf"(?:{_PARTICLE} )?{_WORD}(?: (?:[A-Z]\.|{_PARTICLE}|{_WORD})){{0,3}}|{_WORD}(?: {_PARTICLE})?(?: {_WORD})?, {_WORD}"
)


def match_person_name(value: str) -> Strength:
    v = value.strip()
    if len(v) > 60 or not _PERSON.fullmatch(v):
        return Strength.NONE
    first = v.split(", ")[-1] if ", " in v else v.split(" ")[0]
    if first.lower() in GIVEN_NAMES:
        return Strength.STRONG
    return Strength.WEAK


def example_person_name(value: str) -> str:
    words = value.strip().replace(",", "").split()
    return " ".join(w[0] + "***" for w in words)


DOB = Detector(
    name="date_of_birth",
    label="date of birth",
    match=match_dob,
    example=example_dob,
    name_hints=hints(strong=["dob", "birth", "birthday", "birthdate", "date_of_birth",
                             "born", "born_on", "birth_date", "geburtsdatum"]),
    applies_to=frozenset({TypeClass.DATE, TypeClass.TIMESTAMP, TypeClass.TEXT}),
    reliability=0.0,  # a date alone never proves a birth date
    weak_reliability=0.5,
)

PERSON_NAME = Detector(
    name="person_name",
    label="person name",
    match=match_person_name,
    example=example_person_name,
    name_hints=hints(
        strong=["first_name", "last_name", "given_name", "family_name", "surname", "full_name",
                "middle_name", "maiden_name", "forename", "customer_name", "contact_name",
                "employee_name", "patient_name", "person_name", "holder_name",
                "cardholder_name", "legal_name"],
        weak=["name", "fname", "lname"],
        veto=["product", "company", "file", "host", "table", "column", "user", "username",
              "display", "item", "category", "brand", "city", "country", "street", "project",
              "team", "org", "organization", "domain", "app", "service", "db", "schema",
              "bank", "business", "store", "shop", "event", "plan", "tag", "role", "group"],
    ),
    reliability=0.75,
    weak_reliability=0.5,
)

# Tables whose bare ``name`` column is a person's name (singular forms).
PERSON_TABLES: frozenset[str] = frozenset("""
customer user employee people person patient contact member student author client staff
subscriber applicant candidate driver passenger guest lead account holder teacher doctor
user_profile profile
""".split())


def is_person_table(table_tokens: tuple[str, ...]) -> bool:
    """``customers``, ``app_users``, ``people`` … (plural ``s`` ignored)."""
    return any(t in PERSON_TABLES or t.rstrip("s") in PERSON_TABLES for t in table_tokens)
