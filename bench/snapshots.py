"""Snapshots per second through the daemon against the bare loop of the
same OpenCV calls (bench/vision_loop.c) on the same JPEGs with the same
thread count, alternating in one run. The harness (Redis, Daemon, Learner,
tokens, protocol) is tests/integration/conftest.py. Run with
/usr/bin/python3 from anywhere; results go to stdout (and --json)."""

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

from conftest import (SHARED, SOURCE, Daemon, Learner, Redis,  # noqa: E402
                      learner_token, pb, platform_token)

LOOP_BIN = os.environ.get("PROCTORD_VISION_LOOP") or os.path.join(
    SOURCE, "build", "bench", "proctord_vision_loop")
LFW = os.path.join(SHARED, "data", "faces", "lfw")
MODELS = os.path.join(SHARED, "models")
CLK_TCK = os.sysconf("SC_CLK_TCK")
ORG = "bench"


# ---------------------------------------------------------------------
# CPU accounting: this client, the daemon, Redis, and the whole machine
# ---------------------------------------------------------------------

def proc_cpu_s(pid):
    """utime + stime of a live process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_ctxsw(pid):
    """(voluntary, involuntary) context switches summed over the threads
    of a live process; involuntary ones are preemptions by others."""
    vol = invol = 0
    task = "/proc/%d/task" % pid
    for tid in os.listdir(task):
        try:
            with open(os.path.join(task, tid, "status")) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except OSError:
            pass
    return vol, invol


def machine_busy_s():
    """CPU seconds the whole machine spent not idle, over all cores."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / CLK_TCK


def self_cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CpuWindow:
    """CPU used by each named pid, this process and the machine between
    start() and stop()."""

    def __init__(self, pids):
        self.pids = pids

    def start(self):
        self.t0 = time.monotonic()
        self.p0 = {k: proc_cpu_s(p) for k, p in self.pids.items()}
        self.c0 = {k: proc_ctxsw(p) for k, p in self.pids.items()}
        self.self0 = self_cpu_s()
        self.m0 = machine_busy_s()

    def stop(self):
        wall = time.monotonic() - self.t0
        out = {"wall_s": wall,
               "client_cpu_s": self_cpu_s() - self.self0,
               "machine_busy_s": machine_busy_s() - self.m0}
        for k, p in self.pids.items():
            out[k + "_cpu_s"] = proc_cpu_s(p) - self.p0[k]
            c = proc_ctxsw(p)
            out[k + "_nvcsw"] = c[0] - self.c0[k][0]
            out[k + "_nivcsw"] = c[1] - self.c0[k][1]
        return out


def quantile(values, q):
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]


# ---------------------------------------------------------------------
# The daemon's side
# ---------------------------------------------------------------------

def people(k):
    names = sorted(d for d in os.listdir(LFW)
                   if os.path.isdir(os.path.join(LFW, d)))
    if k > len(names):
        sys.exit("only %d people in %s" % (len(names), LFW))
    return [(n, sorted(os.path.join(LFW, n, f)
                       for f in os.listdir(os.path.join(LFW, n))
                       if f.endswith(".jpg"))) for n in names[:k]]


def enrol(daemon, learner, paths):
    """Enrols the first of paths the daemon accepts (some photographs hold
    a second face); returns its path."""
    for path in paths:
        with open(path, "rb") as f:
            photo = f.read()
        status, body = daemon.http_json(
            "PUT", "/v1/learners/%s/enrollment?org=%s" % (learner, ORG),
            platform_token(), photo, {"Content-Type": "image/jpeg"})
        if status == 201:
            return path
        if status != 422:
            break
    raise RuntimeError("enrolment of %s: %s %s" % (learner, status, body))


async def open_session(daemon, learner, photo):
    """Connects, says Hello and answers the first challenge, which also
    warms the worker; returns the Learner."""
    c = await Learner.connect(daemon)
    await c.hello(learner_token(sub=learner, org=ORG, course=ORG))
    ch = await c.expect("challenge")
    await c.snapshot(photo, ch.challenge_id)
    await c.expect("verdict", timeout=60)
    return c


async def session_loop(c, photos, first, deadline, out):
    """Unsolicited snapshots, one in flight, until deadline. Appends
    (latency, outcome, received time) to out."""
    i = first
    while time.monotonic() < deadline:
        photo = photos[i % len(photos)]
        i += 1
        t0 = time.monotonic()
        await c.snapshot(photo, 0)
        v = await c.expect("verdict", timeout=30)
        t1 = time.monotonic()
        out.append((t1 - t0, pb.Outcome.Name(v.outcome), t1))


async def daemon_phase(daemon, sessions, seconds, cpu):
    """One timed window through the daemon; returns its figures."""
    conns = await asyncio.gather(*[
        open_session(daemon, lid, photos[0]) for lid, photos in sessions])
    results = [[] for _ in sessions]
    analysed0 = daemon.metric("proctord_snapshots_analyzed_total")

    cpu.start()
    t0 = time.monotonic()
    await asyncio.gather(*[
        session_loop(c, photos, 1 + j, t0 + seconds, results[j])
        for j, (c, (_, photos)) in enumerate(zip(conns, sessions))])
    end = max(r[-1][2] for r in results if r) if any(results) else t0
    usage = cpu.stop()
    analysed = daemon.metric("proctord_snapshots_analyzed_total") - analysed0

    for c in conns:
        await c.close()
    flat = [x for r in results for x in r]
    outcomes = {}
    for _, o, _ in flat:
        outcomes[o] = outcomes.get(o, 0) + 1
    elapsed = end - t0
    lat = [x[0] * 1000 for x in flat]
    fig = {"verdicts": len(flat), "elapsed_s": elapsed,
           "verdicts_per_s": len(flat) / elapsed if elapsed > 0 else 0,
           "analysed": analysed,
           "analysed_per_s": analysed / elapsed if elapsed > 0 else 0,
           "latency_med_ms": quantile(lat, 0.5),
           "latency_p99_ms": quantile(lat, 0.99),
           "outcomes": outcomes}
    fig.update(usage)
    return fig


# ---------------------------------------------------------------------
# The bare loop's side
# ---------------------------------------------------------------------

def bare_phase(threads, seconds, files, cpu):
    cpu.start()
    out = subprocess.run([LOOP_BIN, "--models", MODELS, "--threads",
                          str(threads), "--seconds", str(seconds)] + files,
                         capture_output=True, text=True, timeout=seconds + 120)
    usage = cpu.stop()
    if out.returncode != 0:
        raise RuntimeError("vision loop failed: %s" % out.stderr)
    line = [x for x in out.stdout.splitlines()
            if x.startswith("vision_loop ")][-1]
    fig = {}
    for k, v in re.findall(r"(\w+)=(\S+)", line):
        try:
            fig[k] = float(v)
        except ValueError:
            fig[k] = v
    # The loop's window excludes loading the models; its own cpu_s is the
    # loop's share of the machine over that window.
    fig.update({"outside_" + k: v for k, v in usage.items()})
    return fig


# ---------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=2,
                    help="vision.workers and the loop's --threads")
    ap.add_argument("--sessions", type=int, default=0,
                    help="learners and WebSocket sessions (default 3N)")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write every figure here")
    a = ap.parse_args()
    if a.sessions == 0:
        a.sessions = 3 * a.workers
    return a


def start(workdir, workers):
    redis = Redis(workdir)
    daemon = Daemon(workdir, redis.address, {
        "server.threads": "1",
        "server.msg_rate": "100000",
        "server.msg_burst": "100000",
        "vision.workers": str(workers),
        "policy.check_interval": "1h",
        "policy.exam_check_interval": "1h",
        "log.level": "notice",
        # Under the descriptor limit, so start-up has nothing to warn of.
        "server.max_connections": "1000",
    })
    daemon.start()
    return redis, daemon


def print_phase(kind, i, f):
    if kind == "daemon":
        print("daemon #%d: %.2f verdicts/s (%d in %.2fs, analysed %.2f/s) "
              "latency med %.1f ms p99 %.1f ms; cpu s: daemon %.2f redis "
              "%.2f client %.2f machine %.2f of %.2f; %s" % (
                  i, f["verdicts_per_s"], f["verdicts"], f["elapsed_s"],
                  f["analysed_per_s"], f["latency_med_ms"],
                  f["latency_p99_ms"], f["daemon_cpu_s"], f["redis_cpu_s"],
                  f["client_cpu_s"], f["machine_busy_s"],
                  f["wall_s"] * os.cpu_count(), f["outcomes"]), flush=True)
        print("           daemon context switches per verdict: voluntary "
              "%.1f, preempted %.2f" % (f["daemon_nvcsw"] / f["verdicts"],
                                        f["daemon_nivcsw"] / f["verdicts"]))
    else:
        print("bare   #%d: %.2f images/s (%d in %.2fs), cpu s: loop %.2f "
              "(window), idle daemon %.2f, machine %.2f of %.2f (with model "
              "load); stages med us: header %.0f decode %.0f detect %.0f "
              "embed %.0f compare %.1f" % (
                        i, f["images_per_s"], f["images"], f["seconds"],
                        f["cpu_s"], f["outside_daemon_cpu_s"],
                        f["outside_machine_busy_s"],
                        f["outside_wall_s"] * os.cpu_count(),
                        f["header_med_us"], f["decode_med_us"],
                        f["detect_med_us"], f["embed_med_us"],
                        f["compare_med_us"]), flush=True)
        print("           loop context switches per image: voluntary %.1f, "
              "preempted %.2f" % (f["nvcsw"] / f["images"],
                                  f["nivcsw"] / f["images"]))


def summarise(a, daemon_figs, bare_figs):
    med = statistics.median
    ratios = [d["verdicts_per_s"] / b["images_per_s"]
              for d, b in zip(daemon_figs, bare_figs)]
    # Work per CPU second, which other people's jobs on the machine change
    # far less than work per second. The daemon's side pays for Redis and
    # this client too.
    cpu_ratios = [(d["verdicts"] / (d["daemon_cpu_s"] + d["redis_cpu_s"] +
                                    d["client_cpu_s"])) /
                  (b["images"] / b["cpu_s"])
                  for d, b in zip(daemon_figs, bare_figs)]
    s = {
        "workers": a.workers, "sessions": a.sessions, "seconds": a.seconds,
        "repeats": a.repeats,
        "daemon_verdicts_per_s": med(d["verdicts_per_s"]
                                     for d in daemon_figs),
        "daemon_analysed_per_s": med(d["analysed_per_s"]
                                     for d in daemon_figs),
        "bare_images_per_s": med(b["images_per_s"] for b in bare_figs),
        "ratio_median_of_pairs": med(ratios),
        "ratios": ratios,
        "cpu_ratio_median_of_pairs": med(cpu_ratios),
        "cpu_ratios": cpu_ratios,
        "daemon_preempted_per_verdict": med(
            d["daemon_nivcsw"] / d["verdicts"] for d in daemon_figs),
        "bare_preempted_per_image": med(
            b["nivcsw"] / b["images"] for b in bare_figs),
        "latency_med_ms": med(d["latency_med_ms"] for d in daemon_figs),
        "latency_p99_ms": med(d["latency_p99_ms"] for d in daemon_figs),
        "daemon_cpu_per_verdict_ms": med(
            1000 * d["daemon_cpu_s"] / d["verdicts"] for d in daemon_figs),
        "bare_cpu_per_image_ms": med(
            1000 * b["cpu_s"] / b["images"] for b in bare_figs),
        "client_cpu_share": med(d["client_cpu_s"] / d["wall_s"]
                                for d in daemon_figs),
        "redis_cpu_share": med(d["redis_cpu_s"] / d["wall_s"]
                               for d in daemon_figs),
        "daemon_cpu_share": med(d["daemon_cpu_s"] / d["wall_s"]
                                for d in daemon_figs),
        "bare_cpu_share": med(b["cpu_s"] / b["seconds"] for b in bare_figs),
    }
    s["ratio_of_medians"] = (s["daemon_verdicts_per_s"] /
                             s["bare_images_per_s"])
    for st in ("header", "decode", "detect", "embed", "compare"):
        for q in ("med", "p90"):
            k = "%s_%s_us" % (st, q)
            s["bare_" + k] = med(b[k] for b in bare_figs)
    return s


def main():
    a = parse_args()
    sel = people(a.sessions)
    files = [p for _, photos in sel for p in photos]
    workdir = tempfile.mkdtemp(prefix="proctord-bench-")
    redis = daemon = None
    daemon_figs, bare_figs = [], []
    try:
        redis, daemon = start(workdir, a.workers)
        sessions = []
        for j, (name, photos) in enumerate(sel):
            lid = "bench-%02d" % j
            enrol(daemon, lid, photos)
            data = []
            for p in photos:
                with open(p, "rb") as f:
                    data.append(f.read())
            sessions.append((lid, data))
        cpu = CpuWindow({"daemon": daemon.proc.pid, "redis": redis.proc.pid})
        ready = daemon.wait_log("vision ready")
        print("daemon: " + ready[ready.index("detector="):], flush=True)

        print("workers=%d sessions=%d seconds=%g repeats=%d files=%d "
              "loadavg=%s" % (a.workers, a.sessions, a.seconds, a.repeats,
                              len(files), os.getloadavg()[0]), flush=True)
        for i in range(a.repeats):
            d = asyncio.run(daemon_phase(daemon, sessions, a.seconds, cpu))
            print_phase("daemon", i, d)
            daemon_figs.append(d)
            if not daemon.alive():
                raise RuntimeError("daemon died: %s" % daemon.read_log())
            b = bare_phase(a.workers, a.seconds, files, cpu)
            if "model=" + b["model"] not in ready:
                raise RuntimeError("the loop runs %s, the daemon %s" %
                                   (b["model"], ready))
            print_phase("bare", i, b)
            bare_figs.append(b)
        s = summarise(a, daemon_figs, bare_figs)
        print("summary " + " ".join(
            "%s=%s" % (k, ("%.3f" % v) if isinstance(v, float) else
                       json.dumps(v, separators=(",", ":")))
            for k, v in s.items()), flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"summary": s, "daemon": daemon_figs,
                           "bare": bare_figs}, f, indent=1)
        warnings = [x for x in daemon.read_log().splitlines()
                    if "level=warning" in x or "level=error" in x]
        if warnings:
            print("daemon warnings:\n" + "\n".join(warnings[:20]))
    finally:
        if daemon is not None:
            rc = daemon.stop(signal.SIGTERM)
            if rc not in (0, None):
                print("daemon exited %s" % rc)
        if redis is not None:
            redis.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
