"""Turn the benchmarks' JSON into a Markdown report and PNG plots.

Reads ``<results>/*.json`` (default ``benchmarks/results/``) and writes, into ``--out`` (the same directory
by default):

- ``REPORT.md``: the machine, the workloads table (soloist against the normalised-SQL baseline, with
  ratios), throughput against clients, latency against offered load, the writer's commands/s against
  submitters and the metrics overhead, from whichever JSON files are present;
- ``throughput_vs_clients.png``, ``latency_vs_load.png``, ``replica_lag.png`` (matplotlib, Agg backend;
  skipped with a note when matplotlib is not installed: ``pip install -e '.[bench]'``).

    python benchmarks/report.py [--results DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def load(directory: Path) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` in ``directory`` that parses, by its ``benchmark`` name (else its file stem)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"report: skipping {path.name}: {exc}", file=sys.stderr)
            continue
        if isinstance(document, dict):
            out[str(document.get("benchmark") or path.stem)] = document
    return out


def fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: list[str], rows: list[list[object]]) -> list[str]:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return lines


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def when(document: dict[str, Any]) -> str:
    """When a result was taken (results from older runs may sit beside new ones)."""
    m = document.get("machine") or {}
    return f"{m.get('date', '?')} (load average {m.get('load_average_1m', '?')})"


def machine_line(documents: dict[str, dict[str, Any]]) -> str:
    preferred = [documents[k] for k in ("workloads", "metrics_overhead") if k in documents]
    for doc in preferred + [d for d in documents.values() if d.get("environment")] + list(documents.values()):
        env, m = doc.get("environment") or {}, doc.get("machine") or {}
        if env or m:
            packages = env.get("packages") or {}
            versions = ", ".join(f"{k} {v}" for k, v in sorted(packages.items()) if v)
            cpu = env.get("cpu_model", m.get("processor", "?"))
            cores = env.get("cores", m.get("cpu_count", "?"))
            python, sqlite = env.get("python", m.get("python", "?")), env.get("sqlite", "?")
            where = str(m.get("platform", "?"))
            tail = f". Packages: {versions}." if versions else "."
            return f"Machine: {cpu}, {cores} cores, Python {python}, SQLite {sqlite}, {where}{tail}"
    return "Machine: unknown (no results)."


def markdown(documents: dict[str, dict[str, Any]], plots: list[str]) -> str:
    out = ["# Benchmark report", "", machine_line(documents), ""]
    w = documents.get("workloads")
    if w is not None:
        quick = " (quick run)" if w.get("quick") else ""
        s = w.get("settings", {})
        out += [
            f"## soloist against the normalised-SQL baseline{quick}",
            "",
            f"Closed loop, {s.get('clients', '?')} clients, {s.get('seconds', '?')} s per run, medians of "
            f"{s.get('runs', '?')}; seed {s.get('seed', '?')}; run at {when(w)}. Ratio: soloist / baseline ops/s.",
            "",
        ]
        rows = []
        for name, by in w.get("workloads", {}).items():
            so, ba = by["soloist"], by["baseline"]
            rows.append(
                [
                    name,
                    so["ops_per_s"],
                    ba["ops_per_s"],
                    f"{ratio(so['ops_per_s'], ba['ops_per_s']):.2f}x",
                    so["p50_ms"],
                    ba["p50_ms"],
                    so["p99_ms"],
                    ba["p99_ms"],
                ]
            )
        headers = ["workload", "soloist ops/s", "baseline ops/s", "ratio", "soloist p50 ms", "baseline p50 ms"]
        out += [*table([*headers, "soloist p99 ms", "baseline p99 ms"], rows), ""]
        sweep = w.get("throughput_vs_clients", {})
        if sweep:
            out += ["### Throughput against clients (mixed workload), operations/s", ""]
            rows = [
                [
                    int(c),
                    v["soloist"]["ops_per_s"],
                    v["baseline"]["ops_per_s"],
                    f"{ratio(v['soloist']['ops_per_s'], v['baseline']['ops_per_s']):.2f}x",
                ]
                for c, v in sorted(sweep.items(), key=lambda kv: int(kv[0]))
            ]
            out += [*table(["clients", "soloist", "baseline", "ratio"], rows), ""]
        load_ = w.get("latency_vs_load", {})
        if load_.get("soloist"):
            out += ["### Latency against offered load (mixed, open loop), ms", ""]
            rows = [
                [so["offered_per_s"], so["p50_ms"], so["p99_ms"], ba["p50_ms"], ba["p99_ms"]]
                for so, ba in zip(load_["soloist"], load_.get("baseline", []), strict=False)
            ]
            out += [*table(["offered ops/s", "soloist p50", "soloist p99", "baseline p50", "baseline p99"], rows), ""]
    c = documents.get("command_throughput")
    if c is not None and isinstance(c.get("soloist"), dict):
        out += ["## Writer commands/s against concurrent submitters (in process)", "", f"Run at {when(c)}.", ""]
        rows = []
        for key, v in c["soloist"].items():
            if isinstance(v, dict) and "commands_per_s" in v:
                rows.append([key.removeprefix("soloist_"), v["commands_per_s"], v.get("p50_ms"), v.get("p99_ms")])
        out += [*table(["submitters", "commands/s", "p50 ms", "p99 ms"], rows), ""]
    f = documents.get("bench_failover")
    if f is not None and f.get("results"):
        out += ["## The log on PostgreSQL (durable commands/s, takeover)", "", f"Run at {when(f)}.", ""]
        rows = [
            [r["what"], r["submitters"], r["commands_per_s"], r["p99_ms"], f"{r['x_one_tx_per_command_pg']:.2f}x"]
            for r in f["results"]
        ]
        out += [*table(["what", "submitters", "commands/s", "p99 ms", "x pg 1 tx/command"], rows), ""]
        t = f.get("takeover") or {}
        if t.get("seconds"):
            out += [
                f"Takeover after `kill -9` of the writer (lease {t['lease_ttl']:g} s): median "
                f"{t['median_s']:.2f} s of {len(t['seconds'])} (target: lease + 2 s).",
                "",
            ]
    m = documents.get("metrics_overhead")
    if m is not None:
        out += [
            "## Cost of recording metrics",
            "",
            f"Run at {when(m)}.",
            "",
            f"Writer commands/s with metrics off {fmt(m.get('median_off'))}, on {fmt(m.get('median_on'))}: "
            f"on/off = {m.get('ratio_on_off', float('nan')):.3f} (target >= 0.95). The writer's hook itself: "
            f"{m.get('hook_us_per_command', float('nan')):.3f} us of CPU per command.",
            "",
        ]
    if plots:
        out += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(out)


def plot(documents: dict[str, dict[str, Any]], out: Path) -> list[str]:
    """Write the PNG plots that the data allows; their file names."""
    w = documents.get("workloads")
    if w is None:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib is not installed (pip install -e '.[bench]'): no plots", file=sys.stderr)
        return []
    written: list[str] = []
    sweep = w.get("throughput_vs_clients", {})
    if sweep:
        clients = sorted(sweep, key=int)
        fig, ax = plt.subplots(figsize=(6, 4))
        for system in ("soloist", "baseline"):
            ax.plot([int(c) for c in clients], [sweep[c][system]["ops_per_s"] for c in clients], "o-", label=system)
        ax.set(xscale="log", xlabel="concurrent clients", ylabel="operations/s", title="Throughput against clients")
        ax.legend()
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "throughput_vs_clients.png", dpi=100)
        plt.close(fig)
        written.append("throughput_vs_clients.png")
    load_ = w.get("latency_vs_load", {})
    if load_.get("soloist"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for system, style in (("soloist", "-"), ("baseline", "--")):
            rows = load_.get(system, [])
            x = [r["offered_per_s"] for r in rows]
            for q in ("p50", "p99"):
                ax.plot(x, [r[f"{q}_ms"] for r in rows], "o" + style, label=f"{system} {q}")
        ax.set(xlabel="offered load, operations/s", ylabel="latency, ms", yscale="log", title="Latency against load")
        ax.legend()
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "latency_vs_load.png", dpi=100)
        plt.close(fig)
        written.append("latency_vs_load.png")
    lag = w.get("replica_lag", [])
    if lag:
        fig, ax = plt.subplots(figsize=(6, 4.4))
        seconds = [p["t_s"] for p in lag]
        (events,) = ax.plot(
            seconds,
            [p["lag_events"] for p in lag],
            color="tab:blue",
            linestyle="-",
            label="lag (events behind the head)",
        )
        ax.set(xlabel="seconds", title="Replica lag during the write-heavy run (max of 4)")
        ax.set_ylabel("lag (events)", color="tab:blue")
        ax.tick_params(axis="y", colors="tab:blue")
        ax2 = ax.twinx()
        (ms,) = ax2.plot(
            seconds, [p["lag_ms"] for p in lag], color="tab:red", linestyle="--", label="lag (commit-to-apply ms)"
        )
        ax2.set_ylabel("lag (commit-to-apply ms)", color="tab:red")
        ax2.tick_params(axis="y", colors="tab:red")
        ax.legend(handles=[events, ms], loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize="small")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "replica_lag.png", dpi=100)
        plt.close(fig)
        written.append("replica_lag.png")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of the benchmarks' JSON")
    parser.add_argument("--out", type=Path, default=None, help="where REPORT.md and the PNGs go (default: --results)")
    args = parser.parse_args(argv)
    out = args.out or args.results
    out.mkdir(parents=True, exist_ok=True)
    documents = load(args.results)
    if not documents:
        print(f"report: no benchmark JSON in {args.results}; run `make bench` first", file=sys.stderr)
        return 1
    plots = plot(documents, out)
    (out / "REPORT.md").write_text(markdown(documents, plots))
    print(f"report: wrote {out / 'REPORT.md'} and {len(plots)} plot(s) from {len(documents)} result file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
