"""pgveil's benchmark: pgbench against the database, pgbouncer and pgveil, side by side.

The figure that matters is a *ratio*: pgveil's throughput and added latency compared with a
direct connection and with pgbouncer, measured in the same run on the same machine. So the
bench starts every target once, then interleaves them run by run (direct, pgbouncer, pgveil,
direct, …) so that drift — a noisy neighbour, a warming cache, thermal throttling — hits all
of them alike, and reports the median of several rounds.

Modules, one job each:

- :mod:`bench.server` — the PostgreSQL under test (embedded, or an existing one by DSN).
- :mod:`bench.procs` — start a helper process, wait until it listens, stop it cleanly.
- :mod:`bench.targets` — what pgbench connects to: a name, how to start it, and a DSN.
- :mod:`bench.pgbench` — workloads, the pgbench command line, and parsing its output.
- :mod:`bench.machine` — a description of the machine for the report.
- :mod:`bench.report` — medians, ratios, the text and markdown tables, the JSON file.
- :mod:`bench.run` — the command line, and the loop that ties it together.
"""
