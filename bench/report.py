"""How a run shows its figures: the live status line while it runs, then its results:
``result.json`` (every figure), ``summary.md`` and PNG plots."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import psutil


def progress(line: str, final: bool = False) -> None:
    """A live status line on stderr (rewritten in place on a terminal)."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + line + ("\n" if final else ""))
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def machine() -> dict[str, Any]:
    """The machine a run measured on: cores, memory, CPU model, Python."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def summary_markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        f"# fleetpulse bench fleet — {result['started_at']}",
        "",
        f"`{result['command']}`",
        "",
        f"Machine: {result['machine']['cores']} cores, {result['machine']['memory_gb']} GiB, "
        f"{result['machine']['cpu_model']}. Platform: {result['platform']}.",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for key in (
        "mode",
        "agents",
        "series_per_agent",
        "warmup_s",
        "duration_s",
        "sent_batches",
        "stored_batches",
        "sent_points",
        "accepted_points",
        "committed_points",
        "sent_points_per_s",
        "committed_points_per_s",
        "committed_points_per_s_overall",
        "freshness_p50_s",
        "freshness_p95_s",
        "freshness_p99_s",
        "freshness_max_s",
        "missing_batches",
        "duplicate_batches",
        "unacked_batches",
        "refusals",
        "stream_failures",
        "copy_ceiling_points_per_s",
        "ratio_to_copy_ceiling",
        "victoriametrics_points_per_s",
        "ratio_to_victoriametrics",
    ):
        lines.append(f"| {key} | {_fmt(s.get(key))} |")
    lines += [
        "",
        "Rates and freshness are over the measured window (after warm-up, until the senders stop);"
        " `committed_points_per_s_overall` spans first send to last commit.",
        "",
        "## Resources (during the measured window)",
        "",
        "| component | CPU s | % of one core | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for name, usage in result["resources"].items():
        lines.append(
            f"| {name} | {usage['cpu_s']} | {usage['cpu_percent_of_one_core']} | {usage['peak_rss_mb']} |"
        )
    if result["rejects"]:
        lines += ["", "## Rejects", "", "| reason | batches | points |", "|---|---|---|"]
        lines += [f"| {r['reason']} | {r['batches']} | {r['points']} |" for r in result["rejects"]]
    verdict = (
        "PASS: every sent batch stored exactly once"
        if result["verified"]
        else "FAIL: see missing/duplicate figures"
    )
    lines += ["", f"**{verdict}.**", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], freshness_s: np.ndarray, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    timeline = result["timeline"]
    if timeline:
        t = [row["t_s"] for row in timeline]
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for key, label in (
            ("sent_per_s", "sent"),
            ("accepted_per_s", "accepted"),
            ("committed_per_s", "committed"),
        ):
            ax.plot(t, [row[key] for row in timeline], label=label)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("points / s")
        ax.set_title(
            f"throughput — {result['summary']['mode']}, {result['summary']['agents']} agents"
        )
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "throughput.png", dpi=110)
        plt.close(fig)
        written.append("throughput.png")
    if len(freshness_s):
        fig, ax = plt.subplots(figsize=(9, 4.5))
        ax.hist(freshness_s, bins=60)
        for q, style in ((50, "-"), (95, "--"), (99, ":")):
            ax.axvline(
                float(np.percentile(freshness_s, q)), color="black", linestyle=style, label=f"p{q}"
            )
        ax.set_xlabel("freshness: send → committed in PostgreSQL (s)")
        ax.set_ylabel("batches")
        ax.set_title("freshness")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "freshness.png", dpi=110)
        plt.close(fig)
        written.append("freshness.png")
    return written


def write(result: dict[str, Any], freshness_s: np.ndarray, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    result["plots"] = plot(result, freshness_s, out_dir)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))
    (out_dir / "summary.md").write_text(summary_markdown(result))


def targets_markdown(results: dict[str, dict[str, Any]]) -> str:
    """The README's performance table: one row per target run, then where the CPU went."""
    any_result = next(iter(results.values()))
    m = any_result["machine"]
    lines = [
        f"Measured {any_result['started_at'][:10]} on {m['cores']} cores / {m['memory_gb']} GiB "
        f"({m['cpu_model']}), simulator on the same machine, `fleetpulse bench targets`.",
        "",
        "| run | sent pts/s | committed pts/s | freshness p50 / p99 | missing / duplicate batches "
        "| COPY ceiling pts/s (ratio) | VictoriaMetrics pts/s (ratio) "
        "| bytes per point (VictoriaMetrics) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        s = result["summary"]
        vm = (
            f"{s['victoriametrics_points_per_s']:,} ({s['ratio_to_victoriametrics']})"
            if s["victoriametrics_points_per_s"]
            else "not installed"
        )
        ceiling = (
            f"{s['copy_ceiling_points_per_s']:,} ({s['ratio_to_copy_ceiling']})"
            if s["copy_ceiling_points_per_s"]
            else "—"
        )
        lines.append(
            f"| {name}: {s['agents']:,} agents x {s['series_per_agent']} series "
            f"| {s['sent_points_per_s']:,} | {s['committed_points_per_s']:,} "
            f"| {_fmt(s['freshness_p50_s'])} s / {_fmt(s['freshness_p99_s'])} s "
            f"| {s['missing_batches']} / {s['duplicate_batches']} | {ceiling} | {vm} "
            f"| {_fmt(s.get('bytes_per_point'))} ({_fmt(s.get('victoriametrics_bytes_per_point'))}) |"
        )
    names = sorted({c for r in results.values() for c in r["resources"]})
    lines += ["", "CPU in % of one core during the measured window:", ""]
    lines += ["| run | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, result in results.items():
        usage = result["resources"]
        cells = [str(usage.get(c, {}).get("cpu_percent_of_one_core", "—")) for c in names]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
