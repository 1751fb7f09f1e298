"""The benchmark's printed table."""

from __future__ import annotations


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} MB"


def _row(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [_row(header, widths), _row(["-" * w for w in widths], widths)] + [_row(r, widths) for r in rows]


def _tick(tick: dict | None) -> str:
    """The late-months sensor's tick: median seconds (its product-DB reads of the watched months)."""
    if not tick:
        return "-"
    return f"{_s(tick['seconds'])} ({tick['months']} months; {', '.join(_s(v) for v in tick['seconds_all'])})"


def table(results: dict) -> str:
    """Markdown-style tables of one run's figures (ratios against this run's bare aggregate)."""
    base = results["bare_aggregate"]
    naive = results["naive_pandas"]
    pipe = results["pipeline"]
    ratio = results["ratios"]
    seed = results["seed"]
    lines = [
        f"bench {results['scale']} on {results['dialect']} ({results['product_db']}), month {results['month']}: "
        f"{base['month_rows']:,} rows, {base['groups']:,} (partner, company, service) groups, "
        f"{base['billable_users']:,} billable users; seeded {seed['enrollments']:,} enrollments in {seed['seconds']} s",
        "",
    ]
    steps = pipe.get("steps", {})
    step_text = " / ".join(f"{k} {_s(v['seconds'])}" for k, v in sorted(steps.items()))
    lines += _grid(
        ["what", "seconds", "x bare", "peak RSS", "notes"],
        [
            ["bare aggregate (database)", _s(base["seconds"]), "1.00", "-",
             f"median of {base['repeats']} ({', '.join(_s(v) for v in base['seconds_all'])} s), "
             "each just before a pipeline run"],
            ["naive pandas", _s(naive["seconds"]), f"{ratio['naive_pandas']:.2f}", _mb(naive["rss_mb"]),
             f"{naive['rows']:,} rows read, {naive['groups']:,} groups"],
            ["pipeline: month-end run (Dagster)", _s(pipe["seconds"]), f"{ratio['pipeline']:.2f}",
             _mb(pipe["rss_mb"]["peak"]),
             f"median of {len(pipe['seconds_all'])} ({', '.join(_s(v) for v in pipe['seconds_all'])} s, "
             f"each over its bare run: {', '.join(f'{p / b:.2f}' for p, b in zip(pipe['seconds_all'], base['seconds_all']))}); "
             f"success={pipe['success']}; Dagster RUN_START..end {_s(pipe['dagster_run_seconds'])} s"],
            ["pipeline: whole child process", _s(pipe["process_seconds"]), f"{ratio['pipeline_process']:.2f}", "-",
             "includes Python/Dagster import"],
        ],
    )
    lines += ["", f"steps (event log, seconds): {step_text or '-'}"]
    if "load" in results:
        lines += ["", *load_lines(results)]
    lines += ["", "growth (pipeline month-end run as Dagster runs it):"]
    lines += _grid(
        ["multiple", "rows in month", "bare s", "pipeline s", "x bare", "peak RSS", "success", "bare runs s",
         "pipeline runs s", "late-months sensor tick s"],
        [
            [f"{g['multiple']}x", f"{g['month_rows']:,}", _s(g["bare_aggregate_seconds"]), _s(g["seconds"]),
             f"{g['seconds'] / g['bare_aggregate_seconds']:.2f}" if g["bare_aggregate_seconds"] else "-",
             _mb(g["rss_mb"]), str(g["success"]), ", ".join(_s(v) for v in g.get("bare_aggregate_seconds_all", [])),
             ", ".join(_s(v) for v in g.get("seconds_all", [])), _tick(g.get("late_months_tick"))]
            for g in results["growth"]
        ],
    )
    return "\n".join(lines)


def load_lines(results: dict) -> list[str]:
    load, raised = results["load"], results["load_raised"]
    rerun = load["rerun"]["sent"]

    def row(name: str, part: dict) -> list[str]:
        sent, run = part["sent"], part["run"]
        meta = run["metadata"].get("gradient_unit_counts", {})
        step = run["steps"].get("gradient_unit_counts", {}).get("seconds")
        return [
            name, f"{sent['count_calls']:,}", _s(sent["count_seconds"]), _s(step),
            f"{sent['count_rate_per_second']:,.1f}", f"{sent['window_rate_per_second']:,.1f}",
            f"{sent['rate_limit']}", f"{sent['share_of_limit']:.1%}", f"{sent['status_429']:,}",
            str(meta.get("retries", "-")), str(run["success"]),
        ]

    lines = [f"load against the emulator ({load['partners']} connected partners, 20 ms latency):"]
    lines += _grid(
        ["run", "count calls", "count s", "step s", "calls/s", "all req/s", "limit", "share", "429s", "retries", "success"],
        [row("limit 100/s", load), row("limit raised", raised), row("unchanged re-run", load["rerun"])],
    )
    lines.append(
        f"Gradient holds {load['gradient_counts']:,} counts ({load['gradient_units']:,.0f} units). "
        f"Unchanged re-run sent {rerun['requests']:,} requests: "
        + ", ".join(f"{k} {v:,}" for k, v in rerun["by_kind"].items())
    )
    return lines


def results_markdown(results: dict, measured_at: str, commit: str, machine: str) -> str:
    """The committed record of one run (bench/results/<scale>.md): when, where, on what code,
    and the same tables the run printed."""
    return "\n".join([
        f"# bench {results['scale']}: last measured",
        "",
        "Written by `gradient-billing-sync bench` at the end of a run; commit it with the change it",
        "measures. What each row means: [../README.md](../README.md).",
        "",
        f"- measured: {measured_at}",
        f"- code: {commit}",
        f"- machine: {machine}",
        f"- product database: {results['dialect']} ({results['product_db']})",
        "",
        table(results),
        "",
    ])
