"""Fixtures for the audit tests: settings pointing into a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.audit import AuditSettings


@pytest.fixture
def settings(tmp_path: Path) -> AuditSettings:
    return AuditSettings(path=str(tmp_path / "audit.jsonl"), key_file=str(tmp_path / "audit.key"),
                         instance="test-1")
