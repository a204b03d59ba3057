"""``/metrics`` across worker processes (``pgveil serve --workers N``).

Each worker counts what its own sessions do. Workers other than the first serve their
metrics text on a Unix socket in a directory only the proxy's user can enter; the first
worker, which runs the admin listener, reads them at scrape time and serves everything,
each sample labelled with the ``worker`` it came from (``sum without (worker)`` in a query
gives the whole proxy). ``pgveil_worker_up{worker=…}`` says which workers answered.
"""

from __future__ import annotations

import asyncio
import os

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

TIMEOUT = 2.0  # seconds a scrape waits for a worker


def socket_path(folder: str, worker: int) -> str:
    return os.path.join(folder, f"worker-{worker}.sock")


async def serve_text(path: str, render) -> asyncio.AbstractServer:
    """Answer every connection on ``path`` with ``render()`` (bytes), then close it."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(render())
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_unix_server(answer, path=path)


async def fetch(path: str, timeout: float = TIMEOUT) -> bytes | None:
    """One worker's metrics text, or None if it does not answer in time."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    finally:
        writer.close()


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def describe(self):  # noqa: D401 - prometheus_client protocol
        return []

    def collect(self):
        yield from self.families


def merge(texts: dict[str, bytes | None]) -> bytes:
    """One exposition from several workers' (``{worker: text}``, None for one that did not
    answer): every sample gains a ``worker`` label; families keep one HELP and TYPE."""
    merged: dict[str, Metric] = {}
    up = Metric("pgveil_worker_up", "1 when the worker answered this scrape", "gauge")
    for worker, text in texts.items():
        up.samples.append(Sample("pgveil_worker_up", {"worker": worker}, 0 if text is None else 1))
        if text is None:
            continue
        for fam in text_string_to_metric_families(text.decode()):
            into = merged.get(fam.name)
            if into is None:
                into = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for s in fam.samples:
                into.samples.append(Sample(s.name, {**s.labels, "worker": worker}, s.value,
                                           s.timestamp, s.exemplar))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*merged.values(), up]))
    return generate_latest(registry)


async def gather_and_merge(own: bytes, peers: dict[str, str]) -> bytes:
    """The first worker's text and its peers' (``{worker: socket path}``), merged."""
    names = list(peers)
    got = await asyncio.gather(*(fetch(peers[n]) for n in names))
    return merge({"0": own, **dict(zip(names, got))})
