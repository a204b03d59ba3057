"""Per-session shortcuts for masked statements the session has sent before.

A masked ``SELECT … WHERE id = 42`` sent with the simple protocol goes upstream as a Bind of
pgveil's cached prepared statement (:mod:`proxy.stmt_cache`). Deciding it the full way — the
runtime's decision cache, filling the rewrite template, keying the statement cache by the
rewritten text — costs more than the relay itself. Once a statement has taken that way, its
*plan* is kept, keyed by the statement's skeleton (:mod:`policy.skeleton`: the text with
each literal cut out):

* the decision (literal-free: kind, tables, masked columns, fingerprint);
* which literals are parameters, and their types; the other literals' exact text;
* the statement cache key of the prepared rewrite.

A later statement with the same skeleton is sent as ``Bind Describe Execute Sync`` on that
statement straight away, **only if** every input the full way would read is unchanged: the
search_path the server reports, the lexer settings, the catalog, policy and grant versions.
Its literals must be of the same classes, each parameter literal must convert to a value of
the same type, and every inline literal must have the same text — then the full way would
produce exactly this Bind, because the decision, the template and the parameter rules are
functions of those inputs alone. Anything else falls through to the full way, which may
learn a new plan. A statement under a grant never gets a plan.

The extended protocol has its plans too: a client's unnamed ``Parse`` of a text (with its
parameter types) that was masked and prepared upstream before is answered from the plan —
the decision and the cached statement — under the same conditions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from policy.params import param_value
from policy.skeleton import matches, split, split_texts
from policy.template import literals

from .protocol import messages as m

if TYPE_CHECKING:
    from .stmt_cache import StatementCache

#: plans kept per session; all are dropped beyond this (a client generating endless
#: distinct statements gains nothing from them)
LIMIT = 256

_TAIL = m.msg(b"D", b"P\x00") + m.msg(b"E", b"\x00\x00\x00\x00\x00") + m.msg(b"S", b"")


class QueryPlan:
    __slots__ = ("context", "decision", "classes", "slots", "types", "fixed", "key", "name",
                 "bind_head")

    def __init__(self, context, decision, classes, slots, types, fixed, key) -> None:
        self.context = context
        self.decision = decision
        self.classes = classes
        self.slots = slots  # literal index of each parameter, in $n order
        self.types = types  # type oid of each parameter
        self.fixed = fixed  # (literal index, exact text) of literals sent inline
        self.key = key  # the statement cache key of the prepared rewrite
        self.name = ""  # the upstream name the Bind head below was made for
        self.bind_head = b""

    def bind(self, name: str, values: list[str]) -> bytes:
        """Bind("", name, values): text parameters, text results."""
        if name != self.name:
            self.name = name
            self.bind_head = m.bind_text_head("", name, len(self.slots))
        return m.encode_bind_text("", name, values, self.bind_head)


class QueryPlans:
    __slots__ = ("plans", "parses", "hits")

    def __init__(self) -> None:
        self.plans: dict[str, QueryPlan] = {}
        #: (text, parameter types) -> (context, decision, statement cache key)
        self.parses: dict[tuple, tuple] = {}
        self.hits = 0

    def clear(self) -> None:
        self.plans.clear()
        self.parses.clear()

    def parse(self, query: str, types: list[int], context: tuple,
              cache: "StatementCache") -> tuple[Any, str, bytes, int] | None:
        """``(decision, upstream name, Closes to send first, how many)`` for an unnamed
        Parse of ``query`` by its plan, or None."""
        key = (query, tuple(types))
        hit = self.parses.get(key)
        if hit is None:
            return None
        if hit[0] != context:
            del self.parses[key]
            return None
        name = cache.ready_name(hit[2])
        if name is None:
            return None
        closes = len(cache.to_close)
        self.hits += 1
        return hit[1], name, cache.take_closes() if closes else b"", closes

    def learn_parse(self, query: str, types: list[int], context: tuple, decision,
                    key: tuple) -> None:
        if len(self.parses) >= LIMIT:
            self.parses.clear()
        self.parses[(query, tuple(types))] = (context, decision, key)

    def send(self, sql: str, context: tuple, cache: "StatementCache") -> tuple[Any, bytes,
                                                                              int] | None:
        """``(decision, messages, Closes sent first)`` for ``sql`` by its plan, or None."""
        fast = split_texts(sql)
        if fast is None:
            return None
        skeleton, texts, classes = fast
        plan = self.plans.get(skeleton)
        if plan is None:
            return None
        if plan.context != context:
            del self.plans[skeleton]
            return None
        if classes != plan.classes:
            return None
        for idx, text in plan.fixed:
            if texts[idx] != text:
                return None
        values = []
        for idx, typ in zip(plan.slots, plan.types):
            pv = param_value(texts[idx], classes[idx])
            if pv is None or pv[0] != typ:
                return None
            values.append(pv[1])
        name = cache.ready_name(plan.key)
        if name is None:
            return None  # evicted or dropped: the full way prepares it again
        closes = len(cache.to_close)
        prefix = cache.take_closes() if closes else b""
        self.hits += 1
        return plan.decision, prefix + plan.bind(name, values) + _TAIL, closes

    def learn(self, sql: str, context: tuple, decision, form, key: tuple) -> None:
        """Keep the plan of ``sql``, just sent the full way as ``form`` (text, types,
        values) on the cached statement ``key``; nothing if it cannot be replayed."""
        fast = split(sql)
        tpl = decision.__dict__.get("template")
        if fast is None or tpl is None:
            return
        skeleton, lits = fast
        # the template's literal numbering is PostgreSQL's scanner's: the fast split must
        # agree with it here, which also makes the skeleton trustworthy for later texts
        if lits.classes != tpl.classes or not matches(lits, literals(sql)):
            return
        slots: list[int] = []
        fixed: list[tuple[int, str]] = []
        for gap, idx in enumerate(tpl.order):
            start, stop, cls = lits.spans[idx]
            text = sql[start:stop]
            if tpl.slots[gap] and param_value(text, cls) is not None:
                slots.append(idx)
            else:
                fixed.append((idx, text))
        if len(slots) != len(form[1]) or any(i not in tpl.order for i in range(len(lits.spans))):
            return
        if len(self.plans) >= LIMIT:
            self.plans.clear()
        # the decision as every statement of this skeleton has it: the rewrite with
        # parameters, never this statement's literals
        shared = object.__new__(type(decision))
        shared.__dict__.update(decision.__dict__)
        shared.__dict__["sql"] = form[0]
        self.plans[skeleton] = QueryPlan(context, shared, lits.classes, tuple(slots),
                                         tuple(form[1]), tuple(fixed), key)
