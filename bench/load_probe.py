"""A quick probe of the push's throughput against the Gradient emulator, without Dagster.

The emulator runs in this process (bench/load.py's ``start_emulator``: 20 ms latency and the
sliding-window rate limit); the push runs in a child process exactly as the reliability tests
drive it (tests/push_harness.py: the services sync, each partner's account sync and count push
through pipeline/gradient/load.py, against a fresh SQLite state DB), so the two sides do not
share a GIL, as in the benchmark. Prints the figures the emulator logged (bench/load.py
``summarize``) and the CPU each side spent per count call.

    python -m bench.load_probe --limit 100 --calls 50000
    python -m bench.load_probe --limit 1000 --calls 20000 --profile /tmp/push.txt   # py-spy, raw stacks
    python -m bench.load_probe --ceiling 10 --connections 96   # the emulator alone: a raw HTTP/1.1 load

``--rerun`` pushes again with nothing changed (must send 0 count calls). ``--no-corrections``
runs the client with the pacer's answer corrections off (release stamps only), for an A/B.
The emulator's garbage collector runs as it would (unlike ``gradient-billing-sync bench``): its
full collections stall the emulator, which is the case the corrections are for.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import gc
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.load import LATENCY_MS, start_emulator, summarize

ROOT = Path(__file__).resolve().parents[1]
VENDOR_KEY = "vk-probe-5d1c"
SKUS_PER_COMPANY = 2  # tests/push_harness.SKUS


def _harness():
    sys.path.insert(0, str(ROOT))
    from tests import push_harness

    return push_harness


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_PROBED_CHILD = r"""
import json, sys, time, atexit
sys.path.insert(0, sys.argv[1])
from pipeline.gradient import pacing
releases_path, pacer_path, corrections = sys.argv[2], sys.argv[3], sys.argv[4] == "1"
stamps, pacers = [], []
original_init, original_acquire = pacing.Pacer.__init__, pacing.Pacer.acquire
def init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    pacers.append(self)
pacing.Pacer.__init__ = init
if releases_path:
    async def acquire(self):
        released = await original_acquire(self)
        stamps.append(time.time())
        return released
    pacing.Pacer.acquire = acquire
if not corrections:
    pacing.Pacer.answered = lambda self, released, at, *, sample=True: None
def dump():
    if releases_path:
        open(releases_path, "w").write("\n".join(map(repr, stamps)))
    figures = [{"limit": p.limit, "answers": p.answers, "corrections": p.corrections,
                "mean_shift_ms": round(1000 * p.corrected_seconds / max(1, p.answers), 3), "cap_waits": p.cap_waits,
                "min_round_trip_ms": round(1000 * p.min_round_trip, 3) if p.min_round_trip < 1e9 else None}
               for p in pacers]
    open(pacer_path, "w").write(json.dumps(figures))
atexit.register(dump)
from tests import push_harness
raise SystemExit(push_harness.main(sys.argv[5]))
"""


def run_push(
    job_path: Path, profile: str | None, releases: Path | None = None, *, corrections: bool = True,
    pacer_figures: Path | None = None,
) -> tuple[dict, float, float]:
    """Run the harness on ``job_path`` in a child process; (its output, wall s, its CPU s).
    With ``releases``, the child writes the wall-clock time of every pacer release there; with
    ``pacer_figures``, each pacer's corrections and minimum round trip (JSON) there. Without
    ``corrections``, the pacer is not told of answers (its window keeps the release stamps)."""
    command = _harness().worker_command(job_path)
    if releases is not None or pacer_figures is not None or not corrections:
        command = [sys.executable, "-c", _PROBED_CHILD, str(ROOT), str(releases or ""),
                   str(pacer_figures or "/dev/null"), "1" if corrections else "0", str(job_path)]
    if profile:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        command = [spy, "record", "--idle", "--format", "raw", "--rate", "200", "-o", profile, "--", *command]
    cpu_before, started = _children_cpu(), time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    wall, cpu = time.monotonic() - started, _children_cpu() - cpu_before
    if done.returncode != 0:
        raise SystemExit(f"push failed ({done.returncode}):\n{done.stderr[-4000:]}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    stats = next(line["stats"] for line in lines if "stats" in line)
    failed = {line["partner"]: line["error"] or line["outcomes"] for line in lines if "partner" in line
              and (line["error"] or line["outcomes"].get("failed"))}
    return {"stats": stats, "failed_partners": failed}, wall, cpu


class _GcPauses:
    """Garbage-collection pauses of this process (the emulator's): a full collection stops its
    thread too, and requests arriving meanwhile reach its rate limiter together."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self.long: list[tuple[float, float]] = []  # (wall-clock start, seconds) of pauses > 20 ms
        self._started = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._wall = time.time()
        else:
            took = time.perf_counter() - self._started
            self.pauses.append((info["generation"], took))
            if took > 0.02:
                self.long.append((self._wall, took))

    def close(self) -> dict:
        gc.callbacks.remove(self)
        full = [ms for gen, ms in self.pauses if gen == 2]
        return {"collections": len(self.pauses), "full": len(full),
                "longest_ms": round(1000 * max((ms for _, ms in self.pauses), default=0.0), 1),
                "full_over_20ms": sum(1 for ms in full if ms > 0.02), "long": self.long}


def probe(args: argparse.Namespace) -> dict:
    harness = _harness()
    partners = [f"p-{n:03d}" for n in range(args.partners)]
    companies = max(1, round(args.calls / (args.partners * SKUS_PER_COMPANY)))
    workdir = Path(tempfile.mkdtemp(prefix="load-probe-"))
    server, admin = start_emulator(VENDOR_KEY, args.limit)
    try:
        for pid in partners:
            admin.register_partner(harness.partner_key(pid), name=pid, organization_id=harness.org(pid),
                                   auto_map_all=True)
        job = harness.Job(
            state_url=f"sqlite:///{workdir / 'state.db'}", base_url=server.base_url, vendor_key=VENDOR_KEY,
            partners=partners, month="2026-10-01", companies=companies, run_id="probe-1",
            max_requests_per_second=args.limit, max_concurrency=args.concurrency, timeout_seconds=30.0,
            max_attempts=6, backoff_initial_seconds=0.5, backoff_max_seconds=30.0,
        )
        cpu_server_before = time.process_time()
        pauses = _GcPauses()
        releases = workdir / "releases.txt" if args.releases else None
        pacer_figures = workdir / "pacer.json"
        out, wall, cpu = run_push(job.write(workdir / "job.json"), args.profile, releases,
                                  corrections=not args.no_corrections, pacer_figures=pacer_figures)
        gc_pauses = pauses.close()
        entries = admin.requests()
        origin = min((_seconds(e["time"]) for e in entries), default=0.0)
        gc_pauses["over_20ms_at_seconds"] = [
            [round(wall - origin, 3), round(1000 * took, 1)] for wall, took in gc_pauses.pop("long")
        ]
        cpu_server = time.process_time() - cpu_server_before
        figures = summarize(entries, args.limit).as_dict()
        result = {
            "limit": args.limit,
            "latency_ms": LATENCY_MS,
            "partners": args.partners,
            "concurrency": args.concurrency,
            "wall_seconds": round(wall, 2),
            "push_cpu_seconds": round(cpu, 2),
            "push_cpu_ms_per_count_call": round(1000 * cpu / max(1, figures["count_calls"]), 3),
            "emulator_cpu_ms_per_request": round(1000 * cpu_server / max(1, figures["requests"]), 3),
            "sent": figures,
            "limit_check": _limit_check(entries),
            "emulator_gc": gc_pauses,
            **({"arrival_delay": _arrival_delay(releases, entries)} if releases else {}),
            "pacer": {"corrections_reported": not args.no_corrections,
                      "pacers": json.loads(pacer_figures.read_text()) if pacer_figures.exists() else None},
            "client_stats": out["stats"],
            "failed_partners": out["failed_partners"],
        }
        if args.rerun:
            before = len(admin.requests())
            job.run_id = "probe-2"
            run_push(job.write(workdir / "job2.json"), None)
            again = admin.requests()[before:]
            result["rerun_count_calls"] = sum(1 for e in again if e["path"].endswith("/count"))
        return result
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _limit_check(entries: list[dict]) -> dict:
    """The most accepted requests the emulator logged in any 1 s window, and when the 429s came
    (seconds after the first request)."""
    stamps = sorted(_seconds(e["time"]) for e in entries if e["status"] != 429)
    start = stamps[0] if stamps else 0.0
    most = max((bisect.bisect_left(stamps, t + 1.0) - i for i, t in enumerate(stamps)), default=0)
    rejected = [round(_seconds(e["time"]) - start, 3) for e in entries if e["status"] == 429]
    return {"most_accepted_in_any_second": most, "429_at_seconds": rejected[:20]}


def _arrival_delay(releases: Path, entries: list[dict]) -> dict:
    """The i-th arrival at the emulator minus the i-th release by the pacer (both in time order,
    wall clock, the log's millisecond resolution), from 5 s after the first release (past the
    onboarding): its spread is the jitter the guard absorbs."""
    sent = sorted(float(x) for x in releases.read_text().split())
    arrived = sorted(_seconds(e["time"]) for e in entries)
    steady = [(a, r) for a, r in zip(arrived, sent) if r - sent[0] > 5.0]  # past the onboarding
    delays = sorted(1000 * (a - r) for a, r in steady)
    if not delays:
        return {}
    spikes = sorted({round(r - sent[0]) for a, r in steady if a - r > 0.025})
    pick = lambda q: round(delays[min(len(delays) - 1, int(q * len(delays)))], 1)  # noqa: E731
    worst = max(range(len(sent)), key=lambda i: arrived[i] - sent[i]) if len(sent) == len(arrived) else None
    return {"releases": len(sent), "arrivals": len(arrived), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "p999_ms": pick(0.999), "max_ms": round(delays[-1], 1), "min_ms": round(delays[0], 1),
            "worst_at_seconds": round(sent[worst] - sent[0], 3) if worst is not None else None,
            "seconds_with_delays_over_25ms": spikes[:30], "delays_over_25ms": sum(1 for a, r in steady if a - r > 0.025)}


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- the emulator alone

_CEILING_CHILD = r"""
import asyncio, json, sys, time
host, port, path, token, body, seconds, connections = sys.argv[1:8]
seconds, connections = float(seconds), int(connections)
request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nGRADIENT-TOKEN: {token}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()

async def one(stop, counts):
    reader, writer = await asyncio.open_connection(host, int(port))
    while time.monotonic() < stop:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        counts[status] = counts.get(status, 0) + 1
    writer.close()

async def main():
    counts = {}
    start = time.monotonic()
    await asyncio.gather(*(one(start + seconds, counts) for _ in range(connections)))
    print(json.dumps({"seconds": time.monotonic() - start, "by_status": counts}))

asyncio.run(main())
"""


def ceiling(args: argparse.Namespace) -> dict:
    """What the emulator alone answers per second (20 ms latency, no rate limit in the way):
    a raw keep-alive HTTP/1.1 load of real count calls from a child process whose own CPU per
    request is minimal."""
    harness = _harness()
    pid = "p-ceiling"
    workdir = Path(tempfile.mkdtemp(prefix="load-ceiling-"))
    server, admin = start_emulator(VENDOR_KEY, 1_000_000)
    try:
        admin.register_partner(harness.partner_key(pid), name=pid, organization_id=harness.org(pid), auto_map_all=True)
        job = harness.Job(state_url=f"sqlite:///{workdir / 'state.db'}", base_url=server.base_url,
                          vendor_key=VENDOR_KEY, partners=[pid], month="2026-10-01", companies=2, run_id="c")
        run_push(job.write(workdir / "job.json"), None)
        sample = next(e for e in admin.requests() if e["path"].endswith("/count"))
        token = base64.b64encode(f"{VENDOR_KEY}:{harness.partner_key(pid)}".encode()).decode()
        before = len(admin.requests())
        cpu_before = time.process_time()
        done = subprocess.run(
            [sys.executable, "-c", _CEILING_CHILD, server.host, str(server.port), sample["path"], token,
             json.dumps(sample["body"]), str(args.ceiling), str(args.connections)],
            capture_output=True, text=True, check=True,
        )
        cpu = time.process_time() - cpu_before
        out = json.loads(done.stdout)
        answered = sum(out["by_status"].values())
        return {
            "emulator_alone": True,
            "latency_ms": LATENCY_MS,
            "connections": args.connections,
            "requests": answered,
            "logged": len(admin.requests()) - before,
            "seconds": round(out["seconds"], 2),
            "requests_per_second": round(answered / out["seconds"], 1),
            "by_status": out["by_status"],
            "emulator_cpu_ms_per_request": round(1000 * cpu / max(1, answered), 3),
        }
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=100, help="the emulator's and the client's requests/s")
    parser.add_argument("--calls", type=int, default=5000, help="count calls to aim for")
    parser.add_argument("--partners", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32, help="the client's max_concurrency")
    parser.add_argument("--rerun", action="store_true", help="push again unchanged: must send 0 count calls")
    parser.add_argument("--releases", action="store_true", help="compare the pacer's releases with the arrivals")
    parser.add_argument("--no-corrections", action="store_true",
                        help="do not tell the pacer of answers (its window keeps the release stamps): A/B")
    parser.add_argument("--profile", help="py-spy raw (collapsed) stacks of the push to this file")
    parser.add_argument("--ceiling", type=float, help="seconds of a raw load against the emulator alone")
    parser.add_argument("--connections", type=int, default=96, help="connections of the --ceiling load")
    args = parser.parse_args(argv)
    result = ceiling(args) if args.ceiling else probe(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
