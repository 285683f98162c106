"""What a reader sees of a run: PNG charts (matplotlib) and the markdown tables the README shows.

Both are drawn from the JSON file alone, so an old run can be drawn again:
`python -m benchmarks.charts benchmarks/results/latest.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # after choosing the backend

ORDER = ("ours", "ours-chatclient", "raw", "thriftpy2-threaded", "apache-threaded", "aio-uvloop", "aio-asyncio",
         "apache-simple")


def _scenario(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((s for s in doc["scenarios"] if s["scenario"] == name), None)


def _split(name: str) -> tuple[str, int, str]:
    """"framed/binary/64/ours" -> ("framed/binary", 64, "ours")."""
    transport, protocol, connections, kind = name.split("/", 3)
    return f"{transport}/{protocol}", int(connections), kind


def draw(doc: dict[str, Any], where: Path) -> list[Path]:
    """Write every chart the run has data for into `where`; returns their paths."""
    where.mkdir(parents=True, exist_ok=True)
    drawn = []
    throughput = _scenario(doc, "throughput")
    if throughput:
        drawn += [_throughput_by_dialect(throughput, where), _throughput_by_connections(throughput, where)]
    latency = _scenario(doc, "latency")
    if latency:
        drawn.append(_latency(latency, where))
    fanout = _scenario(doc, "fanout")
    if fanout:
        drawn.append(_fanout(fanout, where))
    clients = _scenario(doc, "clientload")
    if clients:
        drawn.append(_clientload(clients, where))
    return drawn


def _clientload(s: dict[str, Any], where: Path) -> Path:
    """Calls/s per client kind and task count, one bar per round (no medians that mix rounds)."""
    rounds = [r for r in s["rounds"] if "stream" not in r]
    tasks = list(s["parameters"]["tasks"])
    kinds = list(s["parameters"]["kinds"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        for t, count in enumerate(tasks):
            values = [r[f"{count}/{kind}"]["calls_per_s"] / 1000 for r in rounds if f"{count}/{kind}" in r]
            ax.scatter([t + i * width] * len(values), values, color=f"C{i}", s=18,
                       label=kind if t == 0 else None)
    ax.set_xticks([t + width * (len(kinds) - 1) / 2 for t in range(len(tasks))], [f"{c} tasks" for c in tasks])
    ax.set_ylabel("thousand calls/s (each point one round)")
    ax.set_title("void sendMessage through each Python client, same server")
    ax.legend(fontsize=8)
    return _save(fig, where / "clientload.png")


def _throughput_by_dialect(s: dict[str, Any], where: Path) -> Path:
    summary = s["summary"]
    connections = 64 if 64 in s["parameters"]["connections"] else max(s["parameters"]["connections"])
    dialects = sorted({_split(n)[0] for n in summary})
    kinds = [k for k in ORDER if any(_split(n)[2] == k for n in summary)]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        values = [summary.get(f"{d}/{connections}/{kind}", {}).get("calls_per_s", 0) / 1000 for d in dialects]
        ax.bar([x + i * width for x in range(len(dialects))], values, width, label=kind)
    ax.set_xticks([x + width * (len(kinds) - 1) / 2 for x in range(len(dialects))], dialects)
    ax.set_ylabel("thousand calls/s (median of rounds)")
    ax.set_title(f"void sendMessage, {connections} connections, server pinned to one core")
    ax.legend(fontsize=8, ncols=2)
    return _save(fig, where / "throughput.png")


def _throughput_by_connections(s: dict[str, Any], where: Path) -> Path:
    summary = s["summary"]
    dialects = [_split(n)[0] for n in summary]
    dialect = "framed/binary" if "framed/binary" in dialects else dialects[0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind in ORDER:
        points = sorted((c, f["calls_per_s"] / 1000) for n, f in summary.items()
                        for d, c, k in [_split(n)] if d == dialect and k == kind)
        if points:
            ax.plot([c for c, _ in points], [v for _, v in points], marker="o", label=kind)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("connections")
    ax.set_ylabel("thousand calls/s")
    ax.set_title(f"void sendMessage by connections ({dialect})")
    ax.legend(fontsize=8)
    return _save(fig, where / "throughput-connections.png")


def _latency(s: dict[str, Any], where: Path) -> Path:
    summary = s["summary"]
    rows = sorted((f["rate"], f) for n, f in summary.items() if n != "peak")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        ax.plot([r / 1000 for r, _ in rows], [f[key] for _, f in rows], marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("thousand publishes/s (open loop)")
    ax.set_ylabel("publish -> deliver, ms")
    ax.set_title(f"latency at fixed rates (peak {summary['peak']['calls_per_s']:,.0f} calls/s)")
    ax.legend()
    return _save(fig, where / "latency.png")


def _fanout(s: dict[str, Any], where: Path) -> Path:
    rows = sorted((f["subscribers"], f) for f in s["summary"].values() if not f.get("rate"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([n for n, _ in rows], [f["deliveries_per_s"] / 1000 for _, f in rows], marker="o")
    ax.set_xscale("log")
    ax.set_xlabel("subscribers long-polling one room")
    ax.set_ylabel("thousand deliveries/s")
    ax.set_title("fan-out")
    return _save(fig, where / "fanout.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def tables(doc: dict[str, Any], connections: int | None = None) -> str:
    """The README's tables, in markdown; `connections`: only that connection count's throughput rows."""
    out: list[str] = []
    throughput = _scenario(doc, "throughput")
    if throughput:
        out += throughput_table(throughput, connections)
    latency = _scenario(doc, "latency")
    if latency:
        out += ["| round | publish rate | sent | delivered | missed | lost | errors | p50 ms | p99 ms | p99.9 ms |"
                " max ms | load CPU |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for index, figures in enumerate(latency["rounds"], 1):
            for name, f in figures.items():
                if name == "peak":
                    continue
                out.append(f"| {index} | {f['rate']:,.0f}/s ({name}) | {f['sent']:,.0f} | {f['delivered']:,.0f} |"
                           f" {f['missed']:,.0f} | {f['lost']:,.0f} | {f['errors']:.0f} | {f['p50_ms']:.2f} |"
                           f" {f['p99_ms']:.2f} | {f['p999_ms']:.2f} | {f['max_ms']:.2f} | {f['load_cpu_share']:.2f} |")
        out.append("")
    fanout = _scenario(doc, "fanout")
    if fanout:
        out += ["| round | subscribers | publisher | poll | deliveries/s | publishes/s | p50 ms | p99 ms | p99.9 ms |"
                " missed | lost | errors | server CPU | load CPU |",
                "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for index, figures in enumerate(fanout["rounds"], 1):
            for f in figures.values():
                rate, linger = f.get("rate", 0), f.get("linger_ms", 0)
                publisher = f"{rate:,.0f}/s, open loop (latency of each batch's oldest)" if rate else "closed loop"
                poll = f"linger {linger:.0f} ms" if linger else "classic"
                out.append(f"| {index} | {f['subscribers']:,.0f} | {publisher} | {poll} |"
                           f" {f['deliveries_per_s']:,.0f} | {f['publishes_per_s']:,.0f} | {f['p50_ms']:.2f} |"
                           f" {f['p99_ms']:.2f} |"
                           f" {f.get('p999_ms', float('nan')):.2f} | {f['missed']:.0f} | {f.get('lost', 0):.0f} |"
                           f" {f['errors']:.0f} | {f.get('server_cpu_share', float('nan')):.2f} |"
                           f" {f['load_cpu_share']:.2f} |")
        out.append("")
    durable = _scenario(doc, "durable")
    if durable:
        out += durable_table(durable)
    clients = _scenario(doc, "clientload")
    if clients:
        out += clientload_table(clients)
    memory = _scenario(doc, "memory")
    if memory:
        out += per_round(memory, [("idle connections held", "connections_held", ",.0f"),
                                  ("bytes each", "bytes_per_idle_connection", ",.0f"),
                                  ("idle subscriptions held", "subscriptions_held", ",.0f"),
                                  ("bytes each", "bytes_per_idle_subscription", ",.0f")])
    redis = _scenario(doc, "redis")
    if redis:
        out += per_round(redis, [("publishes/s", "publishes_per_s", ",.0f"),
                                 ("deliveries/s", "deliveries_per_s", ",.0f"),
                                 ("p50 ms", "latency_p50_ms", ".2f"), ("p99 ms", "latency_p99_ms", ".2f"),
                                 ("missed", "missed", ",.0f"), ("errors", "errors", ",.0f")],
                         reference="memory", ratio_of="publishes_per_s")
    metrics = _scenario(doc, "metrics")
    if metrics:
        out += per_round(metrics, [("publishes/s", "publishes_per_s", ",.0f"),
                                   ("server CPU µs per publish", "server_cpu_us_per_publish", ".1f"),
                                   ("errors", "errors", ",.0f")],
                         reference="metrics-off", ratio_of="server_cpu_us_per_publish")
    return "\n".join(out)


def per_round(report: dict[str, Any], columns: list[tuple[str, str, str]], *, reference: str | None = None,
              ratio_of: str | None = None) -> list[str]:
    """One row per configuration per round; with `reference`, the ratio of `ratio_of` to it in that round."""
    headers = ["round", "configuration", *(c[0] for c in columns)]
    if reference and ratio_of:
        headers.append(f"{ratio_of} x {reference}")
    out = ["| " + " | ".join(headers) + " |", "|" + "---:|" * len(headers)]
    for index, figures in enumerate(report["rounds"], 1):
        base = figures.get(reference or "", {}).get(ratio_of or "")
        for name, f in figures.items():
            cells = [str(index), name, *(format(f.get(key, float("nan")), fmt) for _h, key, fmt in columns)]
            if reference and ratio_of:
                cells.append(f"{f[ratio_of] / base:.2f}" if base else "-")
            out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return out



def durable_table(report: dict[str, Any]) -> list[str]:
    """One row per broker per round (never medians that mix rounds), with its ratio to memory in that round."""
    out = ["| round | broker | publishes/s | ratio to memory | p99 ms | at half rate /s | answered /s |"
           " p50 ms | p99 ms | p99.9 ms | server CPU | errors |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for index, figures in enumerate(report["rounds"], 1):
        reference = figures.get("memory", {}).get("publishes_per_s")
        for name, f in figures.items():
            ratio = f"{f['publishes_per_s'] / reference:.2f}" if reference else "-"
            out.append(
                f"| {index} | {name} | {f['publishes_per_s']:,.0f} | {ratio} | {f['p99_ms']:.2f} |"
                f" {f['half_rate_per_s']:,.0f} | {f['half_rate_answered_per_s']:,.0f} | {f['half_rate_p50_ms']:.2f} |"
                f" {f['half_rate_p99_ms']:.2f} | {f['half_rate_p999_ms']:.2f} | {f['server_cpu_share']:.2f} |"
                f" {f['errors']:.0f} |"
            )
    out.append("")
    return out


def clientload_table(report: dict[str, Any]) -> list[str]:
    """One row per client kind per round, with its ratio to thriftpy2's stock client in that round; then
    the subscriber's stream check."""
    out = ["| tasks | round | client | calls/s | x thriftpy2 stock | p50 µs | p99 µs | client CPU µs/call | errors |",
           "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    stream = None
    seen: dict[str, int] = {}
    for figures in report["rounds"]:
        if "stream" in figures:
            stream = figures["stream"]
            continue
        count = next(iter(figures)).split("/", 1)[0]  # a round is one task count's
        number = seen[count] = seen.get(count, 0) + 1
        for name, f in figures.items():
            kind = name.split("/", 1)[1]
            reference = figures.get(f"{count}/thriftpy2-aio", {}).get("calls_per_s")
            ratio = f"{f['calls_per_s'] / reference:.2f}" if reference else "-"
            out.append(f"| {count} | {number} | {kind} | {f['calls_per_s']:,.0f} | {ratio} | {f['p50_us']:,.0f} |"
                       f" {f['p99_us']:,.0f} | {f['client_cpu_us_per_call']:.1f} | {f['errors']:.0f} |")
    out.append("")
    if stream:
        out += ["| publisher rate | sent | received | missed | lost | p50 ms | p99 ms | subscriber CPU |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
                f"| {stream['rate']:,.0f}/s | {stream['sent']:,.0f} | {stream['received']:,.0f} |"
                f" {stream['missed']:,.0f} | {stream['lost']:,.0f} | {stream['p50_ms']:.2f} | {stream['p99_ms']:.2f} |"
                f" {stream['subscriber_cpu_share']:.2f} |", ""]
    return out


def throughput_table(report: dict[str, Any], connections: int | None = None) -> list[str]:
    """One row per server per round, its ratios to the stock aio server and to the raw limit taken in that
    round; `connections`: only that count's rows. A server that answers one connection at a time has the
    others waiting the whole round: the row says so, since its latency is the served connection's."""
    out = ["| dialect | conns | round | server | calls/s | p50 µs | p99 µs | p99.9 µs | x stock aio-uvloop |"
           " x raw limit | server CPU | load CPU | errors | note |",
           "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    seen: dict[str, int] = {}
    for figures in report["rounds"]:
        group = next(iter(figures)).rpartition("/")[0]  # a round is one dialect's and count's
        dialect, count, _kind = _split(next(iter(figures)))
        if connections is not None and count != connections:
            continue
        number = seen[group] = seen.get(group, 0) + 1
        stock = figures.get(f"{group}/aio-uvloop", {}).get("calls_per_s")
        raw = figures.get(f"{group}/raw", {}).get("calls_per_s")
        for name, f in sorted(figures.items(), key=lambda item: ORDER.index(_split(item[0])[2])
                              if _split(item[0])[2] in ORDER else len(ORDER)):
            kind = _split(name)[2]
            waiting = int(f.get("waiting", 0))
            note = f"{waiting} of {count} connections never answered: latency is the served ones'" if waiting else ""
            out.append(
                f"| {dialect} | {count} | {number} | {kind} | {f['calls_per_s']:,.0f} | {f['p50_us']:,.0f} |"
                f" {f['p99_us']:,.0f} | {f['p999_us']:,.0f} | {f['calls_per_s'] / stock if stock else 0:.2f} |"
                f" {f['calls_per_s'] / raw if raw else 0:.2f} | {f['server_cpu_share']:.2f} |"
                f" {f['load_cpu_share']:.2f} | {f['errors']:.0f} | {note} |"
            )
    out.append("")
    return out


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/latest.json")
    document = json.loads(source.read_text())
    for path in draw(document, source.parent):
        print(f"drew {path}", file=sys.stderr)
    print(tables(document))
