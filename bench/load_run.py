#!/usr/bin/env python3
"""The load campaign of bench/README.md ("Load: sessions, heartbeats,
baselines"): a private redis-server, the daemon on free ports with a config
in a temporary directory, the bare libwebsockets server (proctord_ws_baseline)
and redis-benchmark, each driven by proctord_load, several runs each; writes
every run's JSON and a summary table (medians) to the output directory.

Run as root from the repository root after building:
    python3 bench/load_run.py [--runs 3] [--out DIR] [--quick] [--perf]
    python3 bench/load_run.py --only evlib --evlib poll,uv,ev \
        --evlib-sessions 2000,19900 [--evlib-runs 2]
The evlib group holds sessions on the baseline and on the daemon for each
event library (server.event_lib, proctord_ws_baseline --evlib), the
libraries alternating within each run, and then idles 1,000 sessions on
each daemon; its table puts the libraries side by side.
It raises the descriptor limit itself (what `ulimit -n 200000` does in a
shell) and says so when the hard limit does not allow it."""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)
BUILD = os.environ.get("PROCTORD_BUILD") or os.path.join(SOURCE, "build")
SHARED = os.environ.get("PROCTORD_SHARED") or os.path.normpath(
    os.path.join(SOURCE, "..", "shared"))
SECRET = "load-run-secret-0123456789abcdef"
LOAD = os.path.join(BUILD, "bench", "proctord_load")
BASELINE = os.path.join(BUILD, "bench", "proctord_ws_baseline")
DAEMON = os.path.join(BUILD, "daemon", "proctord")


def log(*args):
    print("[%s]" % time.strftime("%H:%M:%S"), *args, file=sys.stderr,
          flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("process exited (status %s)" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d did not open" % port)


def raise_fd_limit(want=200000):
    """The shell's `ulimit -n 200000`; falls back to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def stop(proc, sig=signal.SIGTERM, timeout=15):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Redis:
    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", self.dir, "--appendonly", "yes", "--appendfsync",
             "everysec", "--save", "", "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port


class Daemon:
    def __init__(self, workdir, redis, overrides):
        self.dir = tempfile.mkdtemp(dir=workdir, prefix="daemon-")
        self.ws_port, self.http_port = free_port(), free_port()
        sections = {
            "server": {"ws_listen": "127.0.0.1:%d" % self.ws_port,
                       "http_listen": "127.0.0.1:%d" % self.http_port,
                       "threads": str(os.cpu_count() or 2),
                       "max_connections": "25000"},
            "redis": {"address": redis.address},
            "auth": {"jwt_secret": SECRET},
            "log": {"level": "warning"},
            "vision": {"models_dir": os.path.join(SHARED, "models")},
        }
        for key, value in overrides.items():
            section, name = key.split(".", 1)
            sections.setdefault(section, {})[name] = value
        self.config = os.path.join(self.dir, "proctord.conf")
        with open(self.config, "w") as f:
            for section, keys in sections.items():
                f.write("[%s]\n" % section)
                for k, v in keys.items():
                    f.write("%s = %s\n" % (k, v))
        self.log = open(os.path.join(self.dir, "proctord.log"), "wb")
        self.proc = subprocess.Popen([DAEMON, "-c", self.config],
                                     stdout=self.log, stderr=self.log)
        wait_port(self.ws_port, self.proc)
        wait_port(self.http_port, self.proc)
        time.sleep(0.5)

    @property
    def url(self):
        return "ws://127.0.0.1:%d/v1/learn" % self.ws_port

    def stop(self):
        stop(self.proc)
        self.log.close()


class Baseline:
    def __init__(self, workdir, evlib="poll"):
        self.port = free_port()
        self.out = open(os.path.join(workdir, "baseline.log"), "ab")
        self.proc = subprocess.Popen([BASELINE, "--port", str(self.port),
                                      "--evlib", evlib],
                                     stdout=self.out, stderr=self.out)
        wait_port(self.port, self.proc)

    @property
    def url(self):
        return "ws://127.0.0.1:%d/v1/learn" % self.port

    def stop(self):
        stop(self.proc, signal.SIGINT)
        self.out.close()


# The generator answers no challenge: the one after Welcome is missed
# (and flagged) before the window, and no other comes in it.
QUIET_CHALLENGES = {"policy.check_interval": "1h",
                    "policy.challenge_deadline": "2s"}


class Campaign:
    def __init__(self, args):
        self.args = args
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="proctord-load-")
        self.redis = Redis(self.work)
        self.results = {}
        self.perf = {}

    def load(self, name, url, pid, extra, daemon=None, perf_at=None):
        """One proctord_load run; returns its JSON, text kept in out."""
        path = os.path.join(self.out, "%s.json" % name)
        cmd = [LOAD, "--url", url, "--secret", SECRET, "--pid", str(pid),
               "--json", path, "--quiet", "--prefix", name]
        if daemon is not None:
            cmd += ["--http", "127.0.0.1:%d" % daemon.http_port,
                    "--redis", self.redis.address,
                    "--redis-pid", str(self.redis.proc.pid)]
        cmd += [str(a) for a in extra]
        load_before = open("/proc/loadavg").read().split()[:3]
        log("run", name, " ".join(str(a) for a in extra))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        if perf_at is not None and self.args.perf:
            self.record_perf(name, pid, perf_at)
        text = proc.communicate()[0].decode(errors="replace")
        with open(os.path.join(self.out, "%s.txt" % name), "w") as f:
            f.write(" ".join(cmd) + "\n" + text)
        if proc.returncode != 0 or not os.path.exists(path):
            log("FAILED", name, text[-2000:])
            return None
        with open(path) as f:
            result = json.load(f)
        result["loadavg_before"] = load_before
        result["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
        log("  hb/s %.0f p50 %.2f p99 %.2f ms errors %d rss/session %.0f B"
            % (result["hb_rate"], result["heartbeat"]["p50"],
               result["heartbeat"]["p99"], result["errors"],
               result["rss_per_session_bytes"]))
        self.results.setdefault(name.rsplit("-", 1)[0], []).append(result)
        return result

    def record_perf(self, name, pid, after_s):
        """10 s of perf samples of pid (software clock: no PMU here)."""
        time.sleep(after_s)
        data = os.path.join(self.work, "%s.perf" % name)
        subprocess.run(["perf", "record", "-F", "499", "-g", "-p", str(pid),
                        "-o", data, "--", "sleep", "10"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report = subprocess.run(
            ["perf", "report", "-i", data, "--stdio", "--no-children",
             "--sort", "pid,sym", "-g", "none", "--percent-limit", "0.5"],
            capture_output=True, text=True).stdout
        with open(os.path.join(self.out, "%s.perf.txt" % name), "w") as f:
            f.write(report)
        self.perf[name] = [l for l in report.splitlines()
                           if l.strip() and not l.startswith("#")][:25]

    # ---------------------------------------------------------------
    # The experiments
    # ---------------------------------------------------------------

    def redis_benchmark(self):
        rows = []
        for _ in range(self.args.runs):
            out = subprocess.run(
                ["redis-benchmark", "-p", str(self.redis.port), "-P", "16",
                 "-q", "-t", "set,get", "-n", "200000"],
                capture_output=True, text=True).stdout
            rates = dict((m.group(1), float(m.group(2))) for m in re.finditer(
                r"(SET|GET): ([0-9.]+) requests per second", out))
            log("redis-benchmark", rates)
            rows.append(rates)
        self.results["redis_benchmark"] = rows

    def throughput(self, label, runs, make_server, extra, perf=False):
        for i in range(runs):
            self.throughput_run(label, i, make_server, extra, perf)

    def throughput_run(self, label, i, make_server, extra, perf=False):
        server = make_server()
        try:
            pid = server.proc.pid
            daemon = server if isinstance(server, Daemon) else None
            self.load("%s-%d" % (label, i), server.url, pid, extra,
                      daemon, perf_at=8 if perf and i == 0 else None)
        finally:
            server.stop()

    def side_by_side(self, name, runs, new_baseline, new_daemon, extra,
                     daemon_extra=None, perf=False):
        """The baseline and the daemon take turns, run by run, so that
        the machine's other load falls on both alike."""
        for i in range(runs):
            self.throughput_run("baseline_" + name, i, new_baseline, extra)
            self.throughput_run("daemon_" + name, i, new_daemon,
                                daemon_extra or extra, perf)

    def evlib_campaign(self):
        """Hold on the baseline and the daemon per event library, then
        idle sessions on the daemon; the libraries take turns within each
        run (their order rotates from run to run), so that the machine's
        other load falls on all of them alike."""
        a = self.args
        libs = a.evlib.split(",")
        counts = [int(n) for n in a.evlib_sessions.split(",")]
        for n in counts:
            if n > self.fd_limit - 100:
                log("holding %d, not %d: descriptor limit %d" % (
                    self.fd_limit - 100, n, self.fd_limit))
        counts = [min(n, self.fd_limit - 100) for n in counts]
        hold = lambda n: ["--sessions", n, "--rate", a.hold_rate, "--hold",
                          "--duration", a.evlib_duration, "--src-ips", 4,
                          "--ramp-timeout", 180]
        idle = ["--sessions", 1000, "--rate", a.hold_rate, "--hold",
                "--interval", "10s", "--duration", a.idle_duration]
        for i in range(a.evlib_runs):
            order = libs[i % len(libs):] + libs[:i % len(libs)]
            for n in counts:
                for lib in order:
                    self.throughput_one("baseline_hold_%s_%d-%d" % (lib, n, i),
                                        lambda: Baseline(self.work, lib),
                                        hold(n))
                    self.throughput_one(
                        "daemon_hold_%s_%d-%d" % (lib, n, i),
                        lambda: Daemon(self.work, self.redis,
                                       {"server.event_lib": lib}), hold(n))
            for lib in order:
                self.throughput_one(
                    "daemon_idle_%s_1000-%d" % (lib, i),
                    lambda: Daemon(self.work, self.redis,
                                   {"server.event_lib": lib}), idle)

    def throughput_one(self, name, make_server, extra):
        server = make_server()
        try:
            daemon = server if isinstance(server, Daemon) else None
            self.load(name, server.url, server.proc.pid, extra, daemon)
        finally:
            server.stop()

    def wanted(self, group):
        return self.args.only is None or group in self.args.only.split(",")

    def run(self):
        a = self.args
        tp = {"server.msg_rate": "1000000", "server.msg_burst": "1000000"}
        new_daemon = lambda over=tp: Daemon(self.work, self.redis, over)
        new_baseline = lambda: Baseline(self.work, a.baseline_evlib)
        d = a.tp_duration
        closed = ["--sessions", a.tp_sessions, "--rate", 2000, "--interval",
                  0, "--window", a.window, "--duration", d]
        opened = ["--sessions", a.tp_sessions, "--rate", 2000, "--interval",
                  "%dms" % a.open_interval_ms, "--duration", d]
        sparse = ["--sessions", 1000, "--rate", 2000, "--interval", "500ms",
                  "--duration", d]

        # Not part of "all": it is its own campaign (about 25 minutes).
        if a.only is not None and "evlib" in a.only.split(","):
            self.evlib_campaign()
        if self.wanted("redis"):
            self.redis_benchmark()
        if self.wanted("closed"):
            self.side_by_side("closed", a.runs, new_baseline, new_daemon,
                              closed, perf=True)
        if self.wanted("open"):
            self.side_by_side("open", a.runs, new_baseline, new_daemon,
                              opened)
        if self.wanted("sparse"):
            self.side_by_side("sparse", 1, new_baseline, new_daemon, sparse)
        if self.wanted("idle"):
            # Challenges are missed (and flagged) in the settle, so the
            # window holds heartbeats and what keeps sessions alive.
            idle = ["--sessions", 1000, "--rate", 1000, "--hold",
                    "--interval", "10s", "--settle", 5,
                    "--duration", a.idle_duration]
            self.side_by_side(
                "idle", a.runs, new_baseline,
                lambda: Daemon(self.work, self.redis, QUIET_CHALLENGES), idle)
        if self.wanted("checks"):
            # Learners who answer their challenges with real photos: what
            # face checks add to Redis, per heartbeat and per check. Still
            # photos cannot answer a turn, so no challenge asks for one.
            checks = ["--sessions", a.checks_sessions, "--rate", 200,
                      "--interval", "10s", "--settle", 5,
                      "--duration", a.checks_duration,
                      "--snapshots", os.path.join(SHARED, "data", "faces",
                                                  "lfw"), "--enrol"]
            self.throughput(
                "daemon_checks", 1,
                lambda: Daemon(self.work, self.redis,
                               {"policy.check_interval": "1m",
                                "policy.liveness_share": "0"}), checks)
        if not self.wanted("hold"):
            return

        hold = ["--sessions", a.hold_sessions, "--rate", a.hold_rate,
                "--hold", "--duration", a.hold_duration, "--src-ips", 4,
                "--ramp-timeout", 180, "--settle", 5]
        bare_hold = ["--sessions", a.hold_sessions, "--rate", a.hold_rate,
                     "--hold", "--duration", min(a.hold_duration, 60),
                     "--src-ips", 4, "--ramp-timeout", 180]
        self.throughput("baseline_hold", 1, new_baseline, bare_hold)
        for i in range(a.hold_runs):
            daemon = new_daemon(QUIET_CHALLENGES)
            try:
                self.load("daemon_hold-%d" % i, daemon.url, daemon.proc.pid,
                          hold, daemon,
                          perf_at=a.hold_sessions / a.hold_rate + 2 +
                          min(60, a.hold_duration / 3) if i == 0 else None)
            finally:
                daemon.stop()

    def close(self):
        stop(self.redis.proc)
        shutil.rmtree(self.work, ignore_errors=True)


# -------------------------------------------------------------------
# The summary
# -------------------------------------------------------------------

def med(rows, *path):
    vals = []
    for r in rows or []:
        v = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            vals.append(v)
    return statistics.median(vals) if vals else float("nan")


def role_cpu(row, role):
    return sum(t["cpu_pct"] for t in row.get("threads_cpu", [])
               if t["role"] == role)


def med_role(rows, *roles):
    """The median over runs of the CPU of the threads in any of roles
    ("net": a named network thread; "poll": one found in poll())."""
    vals = [sum(role_cpu(r, role) for role in roles) for r in rows or []]
    return statistics.median(vals) if vals else float("nan")


def evlib_summary(results, args):
    """One row per server, library and count; then each library's ratio
    to poll on the same server and count."""
    lines = []
    w = lines.append
    if not any(k.startswith(("baseline_hold_", "daemon_hold_",
                             "daemon_idle_")) for k in results):
        return lines
    w("")
    w("Event libraries (medians; CPU in % of one core over the window):")
    w("")
    w("| server | lib | sessions | n | CPU total | core | net | "
      "RSS / session B | hb p50 ms | hb p99 ms | errors | ramp s |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
      "| --- |")
    libs = args["evlib"].split(",")
    keys = sorted(set(k for k in results if k.startswith(
        ("baseline_hold_", "daemon_hold_", "daemon_idle_"))),
        key=lambda k: (k.split("_")[0], k.split("_")[1],
                       int(k.rsplit("_", 1)[1]),
                       libs.index(k.split("_")[2])
                       if k.split("_")[2] in libs else 9))
    for k in keys:
        rows = results[k]
        server, kind, lib, n = k.split("_")
        daemon = server == "daemon"
        w("| %s %s | %s | %s | %d | %.1f | %s | %s | %.0f | %.2f | %.2f | "
          "%.0f | %.1f |" % (
              server, kind, lib, n, len(rows), med(rows, "daemon_cpu_pct"),
              "%.1f" % med_role(rows, "epoll") if daemon else "-",
              "%.1f" % med_role(rows, "net", "poll") if daemon else "-",
              med(rows, "rss_per_session_bytes"),
              med(rows, "heartbeat", "p50"), med(rows, "heartbeat", "p99"),
              med(rows, "errors"), med(rows, "ramp_s")))
    w("")
    for k in keys:
        server, kind, lib, n = k.split("_")
        base = results.get("%s_%s_poll_%s" % (server, kind, n))
        if lib == "poll" or not base:
            continue
        rows = results[k]
        w("%s %s %s, %s vs poll: CPU %.2f, p50 %.2f, p99 %.2f" % (
            server, kind, n, lib,
            med(rows, "daemon_cpu_pct") / med(base, "daemon_cpu_pct"),
            med(rows, "heartbeat", "p50") / med(base, "heartbeat", "p50"),
            med(rows, "heartbeat", "p99") / med(base, "heartbeat", "p99")))
    return lines


def summary(results, perf, info):
    lines = []
    w = lines.append
    w("Machine: %s, nproc %s; %s; commit %s%s, daemon built %s; "
      "fd limit %s." % (
          info["cpu"], info["nproc"], info["date"], info["commit"],
          " (with uncommitted changes)" if info["dirty"] else "",
          info.get("daemon_built"), info["fd_limit"]))
    w("Load average before / after the campaign: %s / %s." % (
        info["load_before"], info["load_after"]))
    w("")
    groups = ("baseline_closed", "daemon_closed", "baseline_open",
              "daemon_open", "baseline_sparse", "daemon_sparse",
              "baseline_idle", "daemon_idle", "daemon_checks",
              "baseline_hold", "daemon_hold")
    if any(results.get(g) for g in groups):
        w("| run | n | heartbeats/s (median) | p50 ms | p99 ms | p99.9 ms | "
          "errors | server CPU % (threads) | load gen CPU % |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in groups:
        rows = results.get(name)
        if not rows:
            continue
        if name.startswith("daemon"):
            threads = "core %.1f, net %.1f" % (med_role(rows, "epoll"),
                                               med_role(rows, "net", "poll"))
        else:
            threads = "1 thread"
        w("| %s | %d | %.0f | %.2f | %.2f | %.2f | %.0f | %.1f (%s) | %.1f |"
          % (name, len(rows), med(rows, "hb_rate"),
             med(rows, "heartbeat", "p50"), med(rows, "heartbeat", "p99"),
             med(rows, "heartbeat", "p999"), med(rows, "errors"),
             med(rows, "daemon_cpu_pct"), threads, med(rows, "load_cpu_pct")))
    bc, dc = results.get("baseline_closed"), results.get("daemon_closed")
    if bc and dc:
        w("")
        w("Daemon / transport baseline, closed loop: %.2f" % (
            med(dc, "hb_rate") / med(bc, "hb_rate")))
    for name in ("daemon_idle", "daemon_checks"):
        rows = results.get(name)
        if rows:
            w("%s: redis commands per heartbeat %.4f (%s), snapshots %s, "
              "verdicts %s" % (
                  name, med(rows, "redis_per_heartbeat"),
                  ", ".join("%.4f" % r.get("redis_per_heartbeat", 0)
                            for r in rows),
                  [r.get("snapshots") for r in rows],
                  [r.get("verdicts") for r in rows]))
            for r in rows:
                w("  redis commandstats: %s" % r.get("redis_cmdstats"))
    for name in ("baseline_hold", "daemon_hold"):
        rows = results.get(name)
        if rows:
            w("%s: sessions %d, ramp %.1f s, hello->welcome p50 %.1f p99 "
              "%.1f ms, RSS %d -> %d KiB = %.0f bytes per session, "
              "redis commands per heartbeat %.4f, errors %s" % (
                  name, rows[0]["sessions"], med(rows, "ramp_s"),
                  med(rows, "welcome", "p50"), med(rows, "welcome", "p99"),
                  med(rows, "rss0_kib"), med(rows, "rss_n_kib"),
                  med(rows, "rss_per_session_bytes"),
                  med(rows, "redis_per_heartbeat"),
                  [r["error_kinds"] for r in rows]))
            for r in rows:
                w("  redis commandstats: %s" % r.get("redis_cmdstats"))
    lines.extend(evlib_summary(results, info["args"]))
    rb = results.get("redis_benchmark")
    if rb:
        w("redis-benchmark -P 16: SET %.0f/s, GET %.0f/s (median of %d)" % (
            statistics.median(r.get("SET", 0) for r in rb),
            statistics.median(r.get("GET", 0) for r in rb), len(rb)))
    for name, top in perf.items():
        w("")
        w("perf, %s:" % name)
        lines.extend("    " + l for l in top)
    return "\n".join(lines) + "\n"


def snapshot_binaries():
    """Copies the binaries aside: a rebuild of the shared build tree in the
    middle of the campaign must not change what the later runs exec."""
    global LOAD, BASELINE, DAEMON
    bindir = tempfile.mkdtemp(prefix="proctord-load-bin-")
    copies = []
    for path in (LOAD, BASELINE, DAEMON):
        copy = os.path.join(bindir, os.path.basename(path))
        shutil.copy2(path, copy)
        copies.append(copy)
    LOAD, BASELINE, DAEMON = copies
    return bindir


def c_wants_hold(args):
    return args.only is None or "hold" in args.only.split(",")


def machine_info(fd_limit):
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    git = lambda *a: subprocess.run(["git", "-C", SOURCE] + list(a),
                                    capture_output=True, text=True).stdout
    built = time.strftime("%Y-%m-%d %H:%M:%S",
                          time.localtime(os.path.getmtime(DAEMON)))
    return {"cpu": cpu, "nproc": os.cpu_count(), "daemon_built": built,
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "commit": git("rev-parse", "--short", "HEAD").strip(),
            "dirty": bool(git("status", "--short", "--untracked-files=no")),
            "kernel": platform.release(), "fd_limit": fd_limit,
            "load_before": open("/proc/loadavg").read().split()[:3]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--hold-runs", type=int, default=3)
    p.add_argument("--hold-sessions", type=int, default=20000)
    p.add_argument("--hold-rate", type=int, default=1000)
    p.add_argument("--hold-duration", type=int, default=300)
    p.add_argument("--tp-sessions", type=int, default=1000)
    p.add_argument("--tp-duration", type=int, default=15)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--open-interval-ms", type=int, default=20)
    p.add_argument("--evlib", default="poll,uv,ev",
                   help="evlib group: the event libraries compared")
    p.add_argument("--evlib-sessions", default="2000,19900",
                   help="evlib group: the counts held (capped by the "
                        "descriptor limit)")
    p.add_argument("--evlib-runs", type=int, default=2)
    p.add_argument("--evlib-duration", type=int, default=30,
                   help="evlib group: seconds of each window")
    p.add_argument("--idle-duration", type=int, default=60,
                   help="evlib group: seconds of each idle window (1%% of "
                        "a core is 0.6 s of CPU in 60 s)")
    p.add_argument("--baseline-evlib", default="ev",
                   help="the transport baseline's event library")
    p.add_argument("--checks-sessions", type=int, default=200)
    p.add_argument("--checks-duration", type=int, default=120)
    p.add_argument("--out", default=None)
    p.add_argument("--perf", action="store_true")
    p.add_argument("--only", default=None,
                   help="comma-separated groups: redis,closed,open,sparse,"
                        "idle,checks,hold,evlib (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="a few seconds of each, to try the script")
    args = p.parse_args()
    if args.quick:
        args.runs, args.hold_runs = 1, 1
        args.hold_sessions, args.hold_duration, args.tp_duration = 2000, 10, 5
    args.out = args.out or os.path.join(
        tempfile.gettempdir(), "proctord-load-" + time.strftime("%H%M%S"))
    for binary in (LOAD, BASELINE, DAEMON):
        if not os.access(binary, os.X_OK):
            sys.exit("load_run: %s is not built" % binary)

    bindir = snapshot_binaries()
    fd_limit = raise_fd_limit()
    if fd_limit < args.hold_sessions + 100 and c_wants_hold(args):
        log("descriptor limit %d (the hard limit cannot be raised here): "
            "holding %d sessions, not %d" % (fd_limit, fd_limit - 100,
                                             args.hold_sessions))
        args.hold_sessions = fd_limit - 100
    info = machine_info(fd_limit)
    info["top"] = subprocess.run(
        ["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True,
        text=True).stdout.splitlines()[:8]
    c = Campaign(args)
    c.fd_limit = fd_limit
    info["args"] = vars(args)
    started = time.time()
    try:
        c.run()
    finally:
        c.close()
        shutil.rmtree(bindir, ignore_errors=True)
    info["load_after"] = open("/proc/loadavg").read().split()[:3]
    info["wall_s"] = round(time.time() - started)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"info": info, "args": vars(args), "results": c.results},
                  f, indent=1)
    text = summary(c.results, c.perf, info)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    log("campaign took %d s; everything is in %s" % (info["wall_s"],
                                                     args.out))


if __name__ == "__main__":
    main()
