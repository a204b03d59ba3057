"""pgveil's decision layer: pure functions from (statement, user, catalog, policy, grants)
to a :class:`~policy.decision.Decision`.

Modules, one job each:

- :mod:`policy.decision` — ``decide()`` and ``Decision``: the pipeline.
- :mod:`policy.analyze` — one walk over PostgreSQL's parse tree (pglast): reads, write
  targets, CTE scopes, calls; produces splice edits and findings; re-checks rewritten text.
- :mod:`policy.rewrite` — masked derived tables and byte-exact splicing.
- :mod:`policy.masks` — type-preserving mask expressions; ``INSTALL_SQL`` for keyed hashing.
- :mod:`policy.gate` — what masked users may not run (statements, functions, settings).
- :mod:`policy.catalog` — ``CATALOG_QUERY``, ``Catalog.from_rows``, view provenance, mask plans.
- :mod:`policy.rules` — ``Policy``, ``MaskRule``, ``policy_from_dict``, ``PolicyError``.
- :mod:`policy.grants` — ``Grant``, ``GrantSet`` (``now`` is always passed in).
- :mod:`policy.names` — PostgreSQL name rules: quoting, search_path.
- :mod:`policy.tokens` — token spans from PostgreSQL's scanner.
- :mod:`policy.fingerprint` — literal-free normalized text and fingerprints.
- :mod:`policy.scrub` — ``scrub_error_fields`` for ErrorResponse/NoticeResponse fields.
- :mod:`policy.errors` — the one table of pgveil's SQLSTATEs, messages and hints.

Nothing here opens a socket or file, reads a clock or the environment, or sleeps.
"""
