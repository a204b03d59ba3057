"""A client that connects and never finishes the startup is cut off, as PostgreSQL does."""

from __future__ import annotations

import psycopg

from helpers import ProxyProcess, RawConnection


def test_silent_client_is_closed_after_startup_timeout(pg, tmp_path):
    proxy = ProxyProcess(workdir=tmp_path, upstream_host=pg.host, upstream_port=pg.port,
                         name="startup-timeout")
    # the [proxy] table is written first; put the setting there
    proxy.write_config()
    text = proxy.config_path.read_text().replace("[proxy]\n", "[proxy]\nstartup_timeout = 0.5\n", 1)
    original = proxy.write_config
    proxy.write_config = lambda: (proxy.config_path.write_text(text), proxy.config_path)[1]
    proxy.start()
    try:
        with RawConnection(proxy.host, proxy.port, timeout=10) as raw:
            fields = raw.read_error_then_eof()  # sends nothing at all
        assert fields["C"] == "08P01"
        assert "timeout" in fields["M"] and fields["M"].startswith("pgveil:")
        # a client that does connect in time is not affected, even when it stays idle longer
        with psycopg.connect(proxy.dsn("postgres", pg.superuser), autocommit=True) as conn:
            import time

            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:  # idle past the startup timeout, then use it
                conn.execute("SELECT 1")
            assert conn.execute("SELECT 42").fetchone() == (42,)
    finally:
        proxy.write_config = original
        proxy.kill()
