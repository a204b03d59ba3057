"""``pgveil discover``: find sensitive data in a database and propose a minimal policy.

The I/O half of discovery (the pure detectors live in :mod:`policy.detectors`):

* :mod:`.scan` — read the catalog and a bounded, read-only sample of each table, classify
  each column (:func:`scan` → :class:`ScanResult`);
* :mod:`.proposal` — render findings as ``[[policy.mask]]`` TOML, or a whole ``pgveil.toml``;
* :mod:`.inventory` — cross-check findings with the audit log (unmasked reads, never-read
  columns, unused grants);
* :mod:`.report` / :mod:`.chart` — Markdown and HTML (inline SVG) reports;
* :mod:`.console` — rich progress and summary; :mod:`.cli` — the ``discover`` subcommand.

No sampled value is ever printed or stored: findings carry aggregates and a masked example.
"""

from __future__ import annotations

from .scan import ScanResult, TableInfo, TableScan, scan

__all__ = ["ScanResult", "TableInfo", "TableScan", "scan"]
