"""Terminal output: a progress bar per table while scanning, then a summary table.

Progress always goes to stderr. On a terminal it is a live ``rich`` progress display with
one bar per table; elsewhere (CI logs, pipes) it is one plain line per finished table, so
logs stay readable. The summary table goes to the console the caller picks (stdout unless
stdout carries the policy TOML).
"""

from __future__ import annotations

from typing import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from policy.detectors import ColumnFinding

from .report import mask_text
from .scan import TableInfo, TableScan


class ConsoleObserver:
    """A :class:`~proxy.discover.scan.ScanObserver` that draws progress on ``console``."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> "ConsoleObserver":
        if self.live:
            self.progress = Progress(
                TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                console=self.console, transient=False)
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def tables_found(self, tables: Sequence[TableInfo]) -> None:
        if not self.live:
            self.console.print(f"scanning {len(tables)} tables", highlight=False)

    def table_started(self, table: TableInfo, steps: int) -> None:
        if self.progress is not None:
            self.tasks[table.qualified] = self.progress.add_task(
                table.qualified, total=steps, status="sampling")

    def table_step(self, table: TableInfo) -> None:
        if self.progress is not None:
            self.progress.update(self.tasks[table.qualified], advance=1, status="classifying")

    def table_done(self, scan: TableScan) -> None:
        status = (f"error: {scan.error}" if scan.error else
                  f"{scan.sampled_rows} rows ({scan.method}), {len(scan.findings)} sensitive")
        if self.progress is not None:
            task = self.tasks[scan.table.qualified]
            self.progress.update(task, completed=self.progress.tasks[task].total, status=status)
        else:
            self.console.print(f"  {scan.table.qualified}: {status} in {scan.seconds:.2f}s",
                               highlight=False, markup=False)


def summary_table(findings: Sequence[ColumnFinding], title: str = "Sensitive columns") -> Table:
    table = Table(title=title, show_lines=False)
    for name, kw in (("table", {}), ("column", {}), ("type", {}), ("detected", {}),
                     ("matched", {"justify": "right"}), ("confidence", {"justify": "right"}),
                     ("example (masked)", {}), ("proposed mask", {})):
        table.add_column(name, **kw)  # type: ignore[arg-type]
    for f in sorted(findings, key=lambda f: (f.table, f.column)):
        style = "bold red" if f.confidence >= 0.9 else "yellow" if f.confidence < 0.7 else ""
        kind = f"free_text ({', '.join(f.contains)})" if f.contains else f.detector
        table.add_row(f.table, f.column, f.type_name, kind, f"{f.share:.0%}",
                      f"{f.confidence:.2f}", f.example or "", mask_text(f), style=style)
    return table
