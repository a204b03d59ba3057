"""Fixtures for the audit tests: settings pointing into a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.audit import AuditSettings


@pytest.fixture
def settings(tmp_path: Path) -> AuditSettings:
    # writer = "thread": these tests reach into the file sink in this process; the writer
    # process is tested in test_audit_process.py and by every test through the proxy
    return AuditSettings(path=str(tmp_path / "audit.jsonl"), key_file=str(tmp_path / "audit.key"),
                         instance="test-1", writer="thread")
