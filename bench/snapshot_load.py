"""Snapshots at a fixed rate beside a heartbeat load, on the real daemon.

In one run, on the same machine, each repeat measures the bare vision
loop's images/s with the daemon's worker count (bench/vision_loop.c) and
right after it, taking turns, three windows through the daemon (the
machine's speed drifts by a fifth from minute to minute, so the rate is
set from the loop run just before):

  hb      proctord_load's learners heartbeating alone;
  snap    unsolicited snapshots at --share of the loop's rate, open loop
          (each on its own schedule, latency counted from when it was due,
          so a late reply also delays what follows it), and nothing else;
  hb+snap both at once.

It prints heartbeat→ack and snapshot→Verdict percentiles per window and
their medians over --repeats, for each vision.nice in --nice (a fresh
daemon each). Run with /usr/bin/python3; the harness is
tests/integration/conftest.py and bench/snapshots.py."""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

from conftest import SECRET, SOURCE, Daemon, Redis, pb  # noqa: E402
from snapshots import (CpuWindow, bare_phase, enrol,  # noqa: E402
                       open_session, people, quantile)

LOAD = os.environ.get("PROCTORD_LOAD") or os.path.join(
    SOURCE, "build", "bench", "proctord_load")


def start(workdir, redis, workers, nice):
    daemon = Daemon(workdir, redis.address, {
        "server.threads": "2",
        "server.msg_rate": "100000",
        "server.msg_burst": "100000",
        "server.max_connections": "5000",
        "vision.workers": str(workers),
        "vision.nice": str(nice),
        # Challenges only at Hello: the generator's learners miss theirs
        # during the settle, the snapshot learners answer theirs.
        "policy.check_interval": "1h",
        "policy.exam_check_interval": "1h",
        "policy.challenge_deadline": "1s",
        "log.level": "notice",
    })
    daemon.start()
    return daemon


def heartbeat_load(daemon, a, seconds, path):
    """Starts proctord_load; its window opens after ramp + settle."""
    return subprocess.Popen(
        [LOAD, "--url", daemon.ws_url, "--secret", SECRET,
         "--prefix", "hb", "--org", "load", "--course", "load",
         "--sessions", str(a.hb_sessions), "--rate", "2000",
         "--interval", a.hb_interval, "--settle", "3",
         "--duration", str(seconds), "--no-reconnect", "--quiet",
         "--pid", str(daemon.proc.pid), "--json", path],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def heartbeat_result(proc, path):
    out = proc.communicate(timeout=300)[0].decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError("proctord_load failed:\n" + out[-2000:])
    with open(path) as f:
        r = json.load(f)
    return {"hb_per_s": r["hb_rate"], "hb_p50_ms": r["heartbeat"]["p50"],
            "hb_p99_ms": r["heartbeat"]["p99"],
            "hb_p999_ms": r["heartbeat"]["p999"], "hb_errors": r["errors"],
            }


async def open_sessions(daemon, learners):
    return await asyncio.gather(*[open_session(daemon, lid, photos[0])
                                  for lid, photos in learners])


async def snapshot_window(conns, learners, rate, seconds, lead):
    """Each of the n sessions sends every n / rate seconds, staggered, one
    in flight; returns [(latency from due time s, outcome)]."""
    n = len(conns)
    period = n / rate
    out = []

    async def one(j, c, photos):
        due = t0 + j * period / n
        k = 1 + j
        while due < t0 + seconds:
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await c.snapshot(photos[k % len(photos)], 0)
            k += 1
            v = await c.expect("verdict", timeout=60)
            out.append((time.monotonic() - due, pb.Outcome.Name(v.outcome)))
            due += period

    t0 = time.monotonic() + lead
    await asyncio.gather(*[one(j, c, photos) for j, (c, (_, photos))
                           in enumerate(zip(conns, learners))])
    return out


def run_window(daemon, conns, learners, kind, rate, a, workdir, tag):
    """One window of kind hb, snap or hb+snap."""
    fig = {"kind": kind}
    hb = None
    lead = 0.5
    if "hb" in kind:
        path = os.path.join(workdir, "hb-%s.json" % tag)
        hb = heartbeat_load(daemon, a, a.seconds, path)
        # The generator's ramp (a.hb_sessions at 2,000/s) and settle.
        lead = a.hb_sessions / 2000.0 + 3.5
    cpu = CpuWindow({"daemon": daemon.proc.pid})
    cpu.start()
    if "snap" in kind:
        lat = asyncio.get_event_loop().run_until_complete(snapshot_window(
            conns, learners, rate, a.seconds, lead))
        ms = [x[0] * 1000 for x in lat]
        outcomes = {}
        for _, o in lat:
            outcomes[o] = outcomes.get(o, 0) + 1
        fig.update({"snaps": len(lat), "snap_rate": rate,
                    "snap_p50_ms": quantile(ms, 0.5),
                    "snap_p99_ms": quantile(ms, 0.99),
                    "snap_max_ms": max(ms) if ms else 0,
                    "outcomes": outcomes})
    if hb is not None:
        fig.update(heartbeat_result(hb, path))
    use = cpu.stop()
    # With heartbeats the window also holds the generator's ramp.
    if kind == "snap":
        fig["daemon_cpu_share"] = use["daemon_cpu_s"] / use["wall_s"]
    return fig


def show(nice, i, f):
    parts = ["nice=%d #%d %-7s" % (nice, i, f["kind"])]
    if "hb_p99_ms" in f:
        parts.append("hb %.0f/s p50 %.2f p99 %.2f p99.9 %.2f ms errors %d"
                     % (f["hb_per_s"], f["hb_p50_ms"], f["hb_p99_ms"],
                        f["hb_p999_ms"], f["hb_errors"]))
    if "snap_p99_ms" in f:
        parts.append("snap %d at %.1f/s p50 %.0f p99 %.0f max %.0f ms %s"
                     % (f["snaps"], f["snap_rate"], f["snap_p50_ms"],
                        f["snap_p99_ms"], f["snap_max_ms"], f["outcomes"]))
    if "daemon_cpu_share" in f:
        parts.append("daemon cpu %.2f" % f["daemon_cpu_share"])
    print("  ".join(parts), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=40,
                    help="snapshot learners (one in flight each)")
    ap.add_argument("--share", type=float, default=0.8,
                    help="snapshot rate, as a share of the loop's")
    ap.add_argument("--hb-sessions", type=int, default=1000)
    ap.add_argument("--hb-interval", default="1s")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--loop-seconds", type=float, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nice", default="10,0")
    ap.add_argument("--json")
    a = ap.parse_args()

    sel = people(15)
    learners = []
    for j in range(a.sessions):
        name, paths = sel[j % len(sel)]
        data = []
        for p in paths:
            with open(p, "rb") as f:
                data.append(f.read())
        learners.append(("snap-%02d" % j, data, paths))
    files = [p for _, paths in sel for p in paths]
    workdir = tempfile.mkdtemp(prefix="proctord-snapload-")
    redis = Redis(workdir)
    results = {"loop": [], "windows": {}}
    try:
        asyncio.set_event_loop(asyncio.new_event_loop())
        for nice in [int(x) for x in a.nice.split(",")]:
            redis.cli("FLUSHALL")
            daemon = start(tempfile.mkdtemp(dir=workdir), redis, a.workers,
                           nice)
            try:
                pairs = [(lid, data) for lid, data, _ in learners]
                for lid, _, paths in learners:
                    enrol(daemon, lid, paths)
                conns = asyncio.get_event_loop().run_until_complete(
                    open_sessions(daemon, pairs))
                figs = results["windows"].setdefault(str(nice), [])
                kinds = ["hb", "snap", "hb+snap"]
                for i in range(a.repeats):
                    loop = bare_phase(a.workers, a.loop_seconds, files,
                                      CpuWindow({"daemon": daemon.proc.pid}))
                    results["loop"].append(loop)
                    rate = a.share * loop["images_per_s"]
                    print("nice=%d #%d loop: %.1f images/s with %d threads; "
                          "snapshots at %.1f/s" % (nice, i,
                                                   loop["images_per_s"],
                                                   a.workers, rate),
                          flush=True)
                    order = kinds[i % 3:] + kinds[:i % 3]
                    for kind in order:
                        f = run_window(daemon, conns, pairs, kind, rate, a,
                                       workdir, "%d-%d-%s" % (nice, i, kind))
                        f["repeat"] = i
                        show(nice, i, f)
                        figs.append(f)
                for c in conns:
                    asyncio.get_event_loop().run_until_complete(c.close())
            finally:
                daemon.stop(signal.SIGTERM)
        med = statistics.median
        print("medians over %d repeats:" % a.repeats)
        for nice, figs in results["windows"].items():
            for kind in ("hb", "snap", "hb+snap"):
                fs = [f for f in figs if f["kind"] == kind]
                line = ["nice=%s %-7s" % (nice, kind)]
                for k in ("hb_per_s", "hb_p50_ms", "hb_p99_ms", "hb_p999_ms",
                          "snap_rate", "snap_p50_ms", "snap_p99_ms",
                          "snap_max_ms",
                          "daemon_cpu_share"):
                    vals = [f[k] for f in fs if k in f]
                    if vals:
                        line.append("%s=%.2f" % (k, med(vals)))
                print(" ".join(line), flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        redis.kill()


if __name__ == "__main__":
    main()
