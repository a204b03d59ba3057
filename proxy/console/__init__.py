"""The console database: ``psql "dbname=pgveil …"`` talks to pgveil itself, not to PostgreSQL."""
