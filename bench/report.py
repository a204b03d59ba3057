"""Medians, ratios, and the three ways a run is reported: text table, markdown, JSON.

A *cell* is one workload × query mode × client count. Each target has a list of runs in a
cell (one per round); the cell's figure for a target is the median tps and the median
average latency of its successful runs.

Ratios, for each pgveil target P:

- ``P/direct``, ``P/pgbouncer`` — tps ratios (1.00 = as fast; higher is better).
- ``+lat`` — added latency: a target's average latency minus the direct one, in µs.
- ``P/pgb +lat`` — P's added latency over pgbouncer's (1.00 = same overhead; lower is
  better), at 1 client only: there latency is the round trip through the proxy, while with
  more clients than cores it mostly measures queueing for the CPU (and just restates the
  tps ratio). Left out when pgbouncer's added latency is under ``MIN_ADDED_US``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path


# Below this, pgbouncer's added latency is within the noise and a ratio to it means nothing.
MIN_ADDED_US = 3.0
# Cells whose tps varies more than this across rounds are flagged in the notes.
NOISY = 0.25


def median_of(runs: list[dict]) -> dict | None:
    good = [r for r in runs if r.get("ok")]
    if not good:
        return None
    tps = [r["tps"] for r in good]
    med = statistics.median(tps)
    return {
        "tps": med,
        "latency_ms": statistics.median(r["latency_ms"] for r in good),
        "runs": len(good),
        # (max - min) / median of tps across rounds: how much to trust the median
        "spread": (max(tps) - min(tps)) / med if med else 0.0,
    }


def summarize(results: dict) -> None:
    """Fill each cell's ``median`` and ``ratios`` from its runs (in place)."""
    roles = {t["name"]: t["role"] for t in results["targets"]}
    direct = next((n for n, r in roles.items() if r == "direct"), None)
    bouncer = next((n for n, r in roles.items() if r == "pgbouncer"), None)
    for cell in results["cells"]:
        med = {name: median_of(runs) for name, runs in cell["runs"].items()}
        cell["median"] = med
        ratios: dict[str, dict] = {}
        d = med.get(direct) if direct else None
        b = med.get(bouncer) if bouncer else None
        added = {}
        if d:
            for name, m in med.items():
                if m and name != direct:
                    added[name] = (m["latency_ms"] - d["latency_ms"]) * 1000.0
        cell["added_latency_us"] = added
        for name, role in roles.items():
            m = med.get(name)
            if role != "pgveil" or not m:
                continue
            r: dict[str, float | None] = {}
            if d:
                r["vs_direct"] = m["tps"] / d["tps"]
            if b:
                r["vs_pgbouncer"] = m["tps"] / b["tps"]
                if (
                    cell["clients"] == 1
                    and name in added
                    and added.get(bouncer, 0.0) >= MIN_ADDED_US
                ):
                    r["added_latency_vs_pgbouncer"] = added[name] / added[bouncer]
            ratios[name] = r
        cell["ratios"] = ratios


def _columns(results: dict) -> tuple[list[str], list[list[str]]]:
    targets = [t["name"] for t in results["targets"]]
    roles = {t["name"]: t["role"] for t in results["targets"]}
    veils = [n for n in targets if roles[n] == "pgveil"]
    proxies = [n for n in targets if roles[n] != "direct"]
    bouncer = next((n for n in targets if roles[n] == "pgbouncer"), None)
    has_direct = any(roles[n] == "direct" for n in targets)

    header = ["workload", "mode", "clients"]
    for n in targets:
        header += [f"{n} tps", f"{n} ms"]
    for p in veils:
        if has_direct:
            header.append(f"{p}/direct")
        if bouncer:
            header.append(f"{p}/{bouncer}")
    if has_direct:
        header += [f"{n} +lat µs" for n in proxies]
        if bouncer:
            header += [f"{p}/{bouncer} +lat" for p in veils]

    def fmt(v: float | None, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    rows = []
    for cell in results["cells"]:
        row = [cell["workload"], cell["mode"], str(cell["clients"])]
        for n in targets:
            m = cell["median"].get(n)
            if n in cell.get("skipped", {}):
                row += ["n/a", "n/a"]
            else:
                row += [fmt(m and m["tps"], ".0f"), fmt(m and m["latency_ms"], ".3f")]
        for p in veils:
            r = cell["ratios"].get(p, {})
            if has_direct:
                row.append(fmt(r.get("vs_direct"), ".2f"))
            if bouncer:
                row.append(fmt(r.get("vs_pgbouncer"), ".2f"))
        if has_direct:
            row += [fmt(cell["added_latency_us"].get(n), ".0f") for n in proxies]
            if bouncer:
                row += [
                    fmt(cell["ratios"].get(p, {}).get("added_latency_vs_pgbouncer"), ".2f")
                    for p in veils
                ]
        rows.append(row)
    return header, rows


def text_table(results: dict) -> str:
    header, rows = _columns(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = 2  # workload and mode are left-aligned, numbers right-aligned

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def machine_line(results: dict) -> str:
    m = results["machine"]
    p = results["params"]
    return (
        f"{m['nproc']} CPUs ({m['cpu']}), PostgreSQL {m['postgresql']}, "
        f"pgbench {m['pgbench']}, pgbouncer {m['pgbouncer']}, Python {m['python']}, "
        f"uvloop {'yes' if m['uvloop'] else 'no'}; "
        f"pgbench -T {p['duration']} s × {p['rounds']} rounds (median), scale {p['scale']}, "
        f"pgveil workers {p['workers'] or 'default'}"
    )


def notes(results: dict) -> list[str]:
    out = [f"{name}: skipped — {why}" for name, why in results.get("skipped", {}).items()]
    if results.get("interrupted"):
        out.append("the run was interrupted: some cells are missing or have fewer rounds")
    busy = results.get("machine", {}).get("busy_before_percent")
    if busy is not None and busy > 10:
        out.append(f"the machine was {busy:.0f}% busy before the bench started: expect noise")
    for cell in results["cells"]:
        for name, m in cell.get("median", {}).items():
            if m and m["runs"] > 1 and m["spread"] > NOISY:
                out.append(
                    f"{cell['workload']} {cell['mode']} c={cell['clients']} {name}: "
                    f"tps varied {m['spread']:.0%} across rounds"
                )
        for name, runs in cell["runs"].items():
            bad = [r for r in runs if not r.get("ok")]
            if bad:
                out.append(
                    f"{cell['workload']} {cell['mode']} c={cell['clients']} {name}: "
                    f"{len(bad)} of {len(runs)} runs failed: {bad[0].get('error')}"
                )
    return out


def markdown(results: dict) -> str:
    header, rows = _columns(results)
    out = [
        f"Measured {results['started']} on: {machine_line(results)}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    extra = notes(results)
    if extra:
        out += [""] + [f"- {n}" for n in extra]
    return "\n".join(out)


def write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
