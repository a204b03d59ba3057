"""Fixtures for the end-to-end JIT tests (``test_jit_*``): a database per module, proxies, tokens.

Deliberately not a ``conftest.py``: other suites share ``tests/e2e``. Test modules import the
fixtures they use from here; ``pg`` comes from ``tests/conftest.py``.

- ``jit_db`` (module): a fresh database loaded with ``shared/attacks/schema.sql`` (``analyst``
  is cluster-wide: an existing role is altered, not created) plus the approver roles
  ``boss`` and ``carol`` (LOGIN; the embedded server's hba is trust).
- ``tokens`` (module): a random approver token (name ``boss``) and admin token (``secadmin``);
  the config holds only their SHA-256.
- ``start_proxy(name, extra_config)`` (module): a pgveil process with that config appended
  after ``[admin]``; killed at the end of the module, its output attached to failing tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from helpers import missing

from jit_e2e_helpers import JitProxy, Tokens, attacks_schema, create_jit_database, drop_database, make_proxy


def _root_conftest(config: pytest.Config):
    root = Path(__file__).resolve().parents[1] / "conftest.py"
    for plugin in config.pluginmanager.get_plugins():
        if getattr(plugin, "__file__", None) and Path(plugin.__file__).resolve() == root:
            return plugin
    return None


@pytest.fixture(scope="module")
def schema_path() -> Path:
    found = attacks_schema()
    if found is None:
        missing("shared/attacks/schema.sql not found: set PGVEIL_ATTACKS_DIR")
    return found


@pytest.fixture(scope="module")
def jit_db(pg, schema_path: Path) -> Iterator[str]:
    name, created_analyst = create_jit_database(pg, schema_path)
    try:
        yield name
    finally:
        drop_database(pg, name)
        if created_analyst:
            try:
                pg.execute("DROP ROLE IF EXISTS analyst")
            except Exception:
                pass  # owns something elsewhere; recreated-or-altered next time


@pytest.fixture(scope="module")
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture(scope="module")
def start_proxy(pg, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., JitProxy]]:
    started: list[JitProxy] = []

    def start(name: str, extra_config: str) -> JitProxy:
        proxy = make_proxy(pg, tmp_path_factory.mktemp(name), name, extra_config)
        started.append(proxy)
        return proxy.start()

    try:
        yield start
    finally:
        for proxy in started:
            proxy.kill()
            (proxy.workdir / "output.log").write_text(proxy.output())


@pytest.fixture
def watch(request: pytest.FixtureRequest) -> Callable[[JitProxy], JitProxy]:
    """``watch(proxy)``: attach the proxy's output to this test's failure report."""
    plugin = _root_conftest(request.config)

    def attach(proxy: JitProxy) -> JitProxy:
        if plugin is not None:
            plugin._attach(request.node, proxy)
        return proxy

    return attach
