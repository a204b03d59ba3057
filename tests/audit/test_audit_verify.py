"""verify: an intact chain passes; each kind of tampering fails at the right record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from proxy.audit import AuditSettings
from proxy.audit import files as audit_files
from proxy.audit.verify import verify_files

from audit_helpers import key_of, lines_of, run, write_log

PAIRS = 20  # start + 20 intents + 20 completions + stop = 42 records


@pytest.fixture
def log_path(settings: AuditSettings) -> str:
    run(write_log(settings, PAIRS))
    return settings.path


def verify(settings: AuditSettings, **kw: object):
    return verify_files(settings.path, key_of(settings), **kw)  # type: ignore[arg-type]


def rewrite(path: str, lines: list[bytes]) -> None:
    Path(path).write_bytes(b"".join(lines))


def test_intact_log_passes(settings: AuditSettings, log_path: str) -> None:
    report = verify(settings)
    assert report.ok, report.summary()
    assert (report.records, report.first_seq, report.last_seq, report.head_seq) == (42, 1, 42, 42)
    assert report.notes == []
    assert report.summary().startswith("OK 42 records in 1 file(s)")


@pytest.mark.parametrize("lineno", [1, 2, 17, 42])
@pytest.mark.parametrize("where", ["value", "prev", "mac", "newline"])
def test_one_flipped_byte_fails_at_that_line(settings: AuditSettings, log_path: str,
                                             lineno: int, where: str) -> None:
    lines = lines_of(log_path)
    line = bytearray(lines[lineno - 1])
    pos = {"value": line.index(b'"ts":"') + 10,
           "prev": line.index(b'"prev":"') + 12,
           "mac": line.index(b'"mac":"') + 20,
           "newline": len(line) - 1}[where]
    line[pos] ^= 0x01
    lines[lineno - 1] = bytes(line)
    rewrite(log_path, lines)
    report = verify(settings)
    assert not report.ok
    assert report.problem is not None
    assert (report.problem.file, report.problem.line) == (log_path, lineno), report.summary()


def test_flip_every_byte_of_one_record_is_always_caught(settings: AuditSettings, log_path: str) -> None:
    original = lines_of(log_path)
    target = 9
    for pos in range(len(original[target - 1]) - 1):
        lines = list(original)
        line = bytearray(lines[target - 1])
        line[pos] ^= 0x20 if chr(line[pos]).isalpha() else 0x01
        lines[target - 1] = bytes(line)
        rewrite(log_path, lines)
        report = verify(settings)
        assert not report.ok and report.problem and report.problem.line == target, (pos, report.summary())


def test_an_edited_value_with_valid_json_is_an_edit(settings: AuditSettings, log_path: str) -> None:
    lines = lines_of(log_path)
    lines[5] = lines[5].replace(b'"decision":"forward"', b'"decision":"deny"')
    rewrite(log_path, lines)
    report = verify(settings)
    assert report.problem and report.problem.line == 6 and "MAC mismatch" in report.problem.reason


@pytest.mark.parametrize("lineno", [1, 10, 41])
def test_deleted_line_fails_where_the_gap_is(settings: AuditSettings, log_path: str, lineno: int) -> None:
    lines = lines_of(log_path)
    del lines[lineno - 1]
    rewrite(log_path, lines)
    report = verify(settings)
    assert report.problem and report.problem.line == lineno
    assert "missing" in report.problem.reason or "start at seq 1" in report.problem.reason


def test_swapped_lines_fail_at_the_first_of_them(settings: AuditSettings, log_path: str) -> None:
    lines = lines_of(log_path)
    lines[11], lines[12] = lines[12], lines[11]
    rewrite(log_path, lines)
    report = verify(settings)
    assert report.problem and report.problem.line == 12 and report.problem.seq == 13


def test_duplicated_line_is_caught(settings: AuditSettings, log_path: str) -> None:
    lines = lines_of(log_path)
    lines.insert(20, lines[19])
    rewrite(log_path, lines)
    report = verify(settings)
    assert report.problem and report.problem.line == 21 and "duplicated" in report.problem.reason


@pytest.mark.parametrize("cut", [1, 3, 41])
def test_truncated_tail_is_caught_by_the_head(settings: AuditSettings, log_path: str, cut: int) -> None:
    lines = lines_of(log_path)
    rewrite(log_path, lines[:-cut])
    report = verify(settings)
    assert report.problem is not None
    assert report.problem.line == 42 - cut + 1 and report.problem.seq == 42 - cut + 1
    assert f"the last {cut} record(s) were removed" in report.problem.reason


def test_tail_cut_mid_record_is_caught(settings: AuditSettings, log_path: str) -> None:
    data = Path(log_path).read_bytes()
    Path(log_path).write_bytes(data[:-50])
    report = verify(settings)
    assert report.problem and report.problem.line == 42 and "incomplete" in report.problem.reason


def test_emptied_log_is_caught(settings: AuditSettings, log_path: str) -> None:
    Path(log_path).write_bytes(b"")
    report = verify(settings)
    assert report.problem and "42 record(s) were removed" in report.problem.reason


def test_missing_or_edited_head_fails(settings: AuditSettings, log_path: str) -> None:
    head = audit_files.head_path(log_path)
    original = head.read_bytes()
    head.write_bytes(original.replace(b'"seq":42', b'"seq":40'))
    report = verify(settings)
    assert report.problem and "head" in report.problem.reason
    head.unlink()
    report = verify(settings)
    assert report.problem and "head file missing" in report.problem.reason
    assert verify(settings, require_head=False).ok


def test_wrong_key_fails_at_the_first_record(settings: AuditSettings, log_path: str) -> None:
    report = verify_files(log_path, os.urandom(32))
    assert report.problem and report.problem.line == 1 and "MAC" in report.problem.reason


def test_rotation_keeps_the_chain_verifiable(settings: AuditSettings) -> None:
    settings.max_bytes = 4096
    run(write_log(settings, 60))
    chain = audit_files.chain_files(settings.path)
    assert len(chain) > 5
    for f in chain:
        assert f.stat().st_size <= 4096
    firsts = [json.loads(lines_of(f)[0]) for f in chain]
    assert [r["seq"] for r in firsts] == sorted(r["seq"] for r in firsts)
    report = verify(settings)
    assert report.ok and report.records == 122 and len(report.files) == len(chain)


def test_rotation_gaps_are_caught(settings: AuditSettings) -> None:
    settings.max_bytes = 4096
    run(write_log(settings, 60))
    chain = audit_files.chain_files(settings.path)
    # a whole middle file deleted: the next file's first record does not link
    middle = chain[2]
    lost = len(lines_of(middle))
    middle.rename(middle.with_name("elsewhere"))
    report = verify(settings)
    assert report.problem and report.problem.file == str(chain[3]) and report.problem.line == 1
    assert "are missing" in report.problem.reason and report.problem.seq is not None
    middle.with_name("elsewhere").rename(middle)
    # the newest file deleted: the head catches it
    Path(settings.path).unlink()
    report = verify(settings)
    assert report.problem and "were removed" in report.problem.reason
    assert lost > 0


def test_oldest_files_pruned_needs_allow_pruned(settings: AuditSettings) -> None:
    settings.max_bytes = 4096
    run(write_log(settings, 60))
    chain = audit_files.chain_files(settings.path)
    chain[0].unlink()
    report = verify(settings)
    assert report.problem and "does not start at seq 1" in report.problem.reason
    report = verify(settings, allow_pruned=True)
    assert report.ok and any("pruned" in n for n in report.notes)


def test_truncation_while_down_is_reported_after_restart(settings: AuditSettings) -> None:
    run(write_log(settings, 10))
    lines = lines_of(settings.path)
    rewrite(settings.path, lines[:-4])           # cut the last 4 records while pgveil is down
    run(write_log(settings, 3))                  # the writer restarts and continues
    report = verify(settings)
    assert report.problem and report.problem.line == len(lines) - 4 + 1
    assert "missing" in report.problem.reason


def test_torn_partial_line_from_a_crash_is_cut_and_noted(settings: AuditSettings) -> None:
    run(write_log(settings, 3))
    with open(settings.path, "ab") as f:         # a crash mid-write, never acknowledged
        f.write(b'{"seq":9,"ts":"2025-')
    run(write_log(settings, 2))
    report = verify(settings)
    assert report.ok, report.summary()
    assert any("partial line" in n for n in report.notes)
