"""Tampering with a log the real proxy wrote: ``pgveil audit verify`` names the record.

One proxy run produces a log (module fixture). Each test edits a *copy* of it — the log, its
``.head`` file (the verifier requires it) and the key — and runs the verifier as a separate
process: it must exit non-zero and point at the right file, line and seq.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest

from audit_fixtures import audit_config, read_log, run_verify
from helpers import ProxyProcess

STATEMENTS = 12


@pytest.fixture(scope="module")
def produced_log(pg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gracefully closed log with a few dozen records; returns its folder."""
    work = tmp_path_factory.mktemp("tamper-src")
    proxy = ProxyProcess(workdir=work, upstream_host=pg.host, upstream_port=pg.port,
                         passwords=pg.passwords, superuser=pg.superuser, name="pgveil-tamper",
                         extra_config=audit_config(work, fsync="always"))
    proxy.start()
    try:
        with psycopg.connect(proxy.dsn("postgres"), autocommit=True) as conn:
            for k in range(STATEMENTS):
                conn.execute(f"SELECT {k} AS c_s0_k{k}", prepare=False)
    finally:
        code = proxy.stop()
    assert code == 0, proxy.output()
    records = read_log(work / "audit.jsonl")
    assert len(records) == 2 * STATEMENTS + 2  # start, intents+completions (fsync = always), stop
    assert run_verify(work / "audit.jsonl", work / "audit.key").returncode == 0
    return work


@pytest.fixture
def copy(produced_log: Path, tmp_path: Path) -> Path:
    """A private copy of the log, head and key; returns the log's path."""
    for name in ("audit.jsonl", "audit.jsonl.head", "audit.key"):
        shutil.copy2(produced_log / name, tmp_path / name)
    return tmp_path / "audit.jsonl"


def _lines(log: Path) -> list[bytes]:
    return log.read_bytes().splitlines(keepends=True)


def _verify_fails(log: Path) -> str:
    result = run_verify(log, log.parent / "audit.key")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "FAIL" in out
    return out


def test_untouched_copy_verifies(copy: Path) -> None:
    result = run_verify(copy, copy.parent / "audit.key")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK {2 * STATEMENTS + 2} records" in result.stdout


def test_flipped_byte_inside_a_value_is_an_edit_at_that_line(copy: Path) -> None:
    lines = _lines(copy)
    line = lines[4]                                   # line 5 = seq 5
    rec = json.loads(line)
    assert rec["seq"] == 5 and rec["type"] in ("intent", "complete")
    pos = line.index(b'"ts":"') + len(b'"ts":"') + 3   # a digit of the year: still valid JSON
    flipped = bytearray(line)
    flipped[pos] = ord("9") if flipped[pos] != ord("9") else ord("8")
    lines[4] = bytes(flipped)
    copy.write_bytes(b"".join(lines))
    out = _verify_fails(copy)
    assert f"{copy}:5: seq 5: MAC mismatch" in out


def test_flipped_bit_breaking_the_json_is_caught_at_that_line(copy: Path) -> None:
    lines = _lines(copy)
    flipped = bytearray(lines[6])                     # line 7
    flipped[0] ^= 0x01                                # "{" -> "z"
    lines[6] = bytes(flipped)
    copy.write_bytes(b"".join(lines))
    out = _verify_fails(copy)
    assert f"{copy}:7: not a valid audit record" in out


def test_deleted_line_is_named_where_the_gap_is(copy: Path) -> None:
    lines = _lines(copy)
    del lines[4]                                      # remove seq 5
    copy.write_bytes(b"".join(lines))
    out = _verify_fails(copy)
    assert f"{copy}:5: seq 6: seq 5 expected: records 5..5 are missing" in out


def test_swapped_lines_fail_at_the_first_of_them(copy: Path) -> None:
    lines = _lines(copy)
    lines[3], lines[4] = lines[4], lines[3]           # seq 5 now on line 4
    copy.write_bytes(b"".join(lines))
    out = _verify_fails(copy)
    assert f"{copy}:4: seq 5: seq 4 expected" in out


def test_removed_tail_is_caught_by_the_head(copy: Path) -> None:
    lines = _lines(copy)
    total = len(lines)
    copy.write_bytes(b"".join(lines[:-3]))
    out = _verify_fails(copy)
    assert f"{copy}:{total - 2}: seq {total - 2}: missing: the log ends at seq {total - 3}" in out
    assert f"head records seq {total}" in out


def test_edited_head_is_caught(copy: Path) -> None:
    head = copy.parent / "audit.jsonl.head"
    rec = json.loads(head.read_bytes())
    head.write_bytes(head.read_bytes().replace(f'"seq":{rec["seq"]}'.encode(),
                                               f'"seq":{rec["seq"] - 1}'.encode()))
    out = _verify_fails(copy)
    assert "audit.jsonl.head:1: head file signature does not match" in out


def test_missing_head_is_a_failure(copy: Path) -> None:
    (copy.parent / "audit.jsonl.head").unlink()
    out = _verify_fails(copy)
    assert "head file missing" in out


def test_wrong_key_fails_at_the_first_record(copy: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    other.write_text("ab" * 32 + "\n")
    other.chmod(0o600)
    result = run_verify(copy, other)
    assert result.returncode == 1
    assert f"{copy}:1: seq 1: MAC mismatch" in result.stdout
