#!/usr/bin/env python3
"""One daemon against two on the same Redis Cluster (bench/README.md,
"Cluster: one daemon against two"). Starts a 3-master Redis Cluster on
loopback (redis-server --cluster-enabled yes, redis-cli --cluster create)
and, for each run, fresh daemons with redis.cluster = yes; one
proctord_load per daemon plays its share of the learners: a burst of
Hellos (each a HELLO script, the session and organisation indexes and the
learner's lease: 4 round trips, on the master of the learner's slot),
then closed-loop heartbeats. Also one daemon on a single redis-server,
for reference. Prints a table of medians and writes every run's JSON.

Run from the repository root after building proctord and proctord_load:
    python3 bench/cluster_run.py [--runs 3] [--sessions 3000] [--out DIR]
"""

import argparse
import json
import os
import random
import resource
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
SECRET = "cluster-run-secret-0123456789abcdef"
LOAD = os.path.join(BUILD, "bench", "proctord_load")
DAEMON = os.path.join(BUILD, "daemon", "proctord")


def log(*args):
    print("[%s]" % time.strftime("%H:%M:%S"), *args, file=sys.stderr,
          flush=True)


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def pick_port(bus=False):
    """A free port; with bus, its cluster bus port (+10000) is free too."""
    while True:
        port = random.randrange(20000, 40000)
        if port_free(port) and (not bus or port_free(port + 10000)):
            return port


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
    raise RuntimeError("nothing listens on %d" % port)


def cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port)] +
                          [str(a) for a in args], check=True,
                          capture_output=True, timeout=60).stdout.decode()


class Redis:
    """n redis-servers; with cluster, made one Redis Cluster."""

    def __init__(self, workdir, n, cluster):
        self.ports = [pick_port(bus=cluster) for _ in range(n)]
        self.procs = []
        for port in self.ports:
            d = os.path.join(workdir, "redis-%d" % port)
            os.makedirs(d)
            args = ["redis-server", "--port", str(port), "--bind",
                    "127.0.0.1", "--dir", d, "--appendonly", "yes",
                    "--appendfsync", "everysec", "--save", "",
                    "--logfile", "redis.log"]
            if cluster:
                args += ["--cluster-enabled", "yes", "--cluster-config-file",
                         "nodes.conf"]
            self.procs.append(subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port, proc in zip(self.ports, self.procs):
            wait_port(port, proc)
        if cluster:
            subprocess.run(["redis-cli", "--cluster", "create"] +
                           ["127.0.0.1:%d" % p for p in self.ports] +
                           ["--cluster-yes"], check=True,
                           capture_output=True, timeout=60)
            deadline = time.time() + 30
            while not all("cluster_state:ok" in cli(p, "CLUSTER", "INFO")
                          for p in self.ports):
                if time.time() > deadline:
                    raise RuntimeError("cluster not ok")
                time.sleep(0.1)
        self.cluster = cluster

    def commands(self):
        """Commands processed, summed over the servers."""
        total = 0
        for port in self.ports:
            for line in cli(port, "INFO", "stats").splitlines():
                if line.startswith("total_commands_processed:"):
                    total += int(line.split(":")[1])
        return total

    def cpu_s(self):
        """CPU seconds used so far, summed over the servers."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for proc in self.procs:
            with open("/proc/%d/stat" % proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def flush(self):
        for port in self.ports:
            cli(port, "FLUSHALL")

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait(timeout=10)


class Daemon:
    def __init__(self, workdir, redis):
        self.dir = tempfile.mkdtemp(dir=workdir, prefix="daemon-")
        self.ws_port, self.http_port = pick_port(), pick_port()
        sections = {
            "server": {"ws_listen": "127.0.0.1:%d" % self.ws_port,
                       "http_listen": "127.0.0.1:%d" % self.http_port,
                       "threads": "1", "max_connections": "25000",
                       "msg_rate": "1000000", "msg_burst": "1000000"},
            "redis": {"address": "127.0.0.1:%d" % redis.ports[0],
                      "cluster": "yes" if redis.cluster else "no"},
            "auth": {"jwt_secret": SECRET},
            "log": {"level": "warning"},
            "vision": {"models_dir": os.path.join(SHARED, "models"),
                       "workers": "1"},
        }
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

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def machine_load():
    """The load average and the CPU pressure ("some", last 60 s)."""
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    try:
        with open("/proc/pressure/cpu") as f:
            psi = f.readline().split()[2].split("=")[1]
    except OSError:
        psi = "?"
    return "load average %s, CPU pressure %s%%" % (load, psi)


def one_run(args, workdir, redis, ndaemons, label, run):
    redis.flush()
    daemons = [Daemon(workdir, redis) for _ in range(ndaemons)]
    loads, outs = [], []
    c0, cpu0, t0 = redis.commands(), redis.cpu_s(), time.time()
    for i, d in enumerate(daemons):
        out = os.path.join(args.out, "%s-run%d-d%d.json" % (label, run, i))
        outs.append(out)
        loads.append(subprocess.Popen(
            [LOAD, "--url", "ws://127.0.0.1:%d/v1/learn" % d.ws_port,
             "--secret", SECRET, "--http", "127.0.0.1:%d" % d.http_port,
             "--pid", str(d.proc.pid), "--prefix", "%s-%d-%d" % (label, run, i),
             "--sessions", str(args.sessions // ndaemons),
             "--rate", str(args.rate // ndaemons), "--interval", "0",
             "--window", "4", "--settle", "1s",
             "--duration", "%ds" % args.duration, "--json", out, "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in loads:
        _, err = p.communicate(timeout=args.duration + 180)
        if p.returncode != 0:
            raise RuntimeError("proctord_load: %s" % err.decode()[-2000:])
    elapsed = time.time() - t0
    commands, cpu = redis.commands() - c0, redis.cpu_s() - cpu0
    for d in daemons:
        d.stop()
    rows = [json.load(open(o)) for o in outs]
    ramp = max(r["ramp_s"] for r in rows)
    return {
        "label": label,
        "daemons": ndaemons,
        "welcomes_per_s": sum(r["welcome"]["n"] for r in rows) / ramp,
        "welcome_p50_ms": max(r["welcome"]["p50"] for r in rows),
        "welcome_p99_ms": max(r["welcome"]["p99"] for r in rows),
        "hb_per_s": sum(r["hb_rate"] for r in rows),
        "hb_p99_ms": max(r["heartbeat"]["p99"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "daemon_cpu_pct": sum(r["daemon_cpu_pct"] for r in rows),
        "redis_commands_per_session": commands / args.sessions,
        "redis_cpu_pct": 100.0 * cpu / elapsed,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--sessions", type=int, default=3000)
    p.add_argument("--rate", type=int, default=3000)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    args.out = args.out or tempfile.mkdtemp(prefix="cluster-run-")
    os.makedirs(args.out, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    workdir = tempfile.mkdtemp(prefix="cluster-run-work-")
    results = []
    single = Redis(workdir, 1, cluster=False)
    cluster = Redis(workdir, 3, cluster=True)
    try:
        for run in range(args.runs):
            for label, redis, n in (("single-1", single, 1),
                                    ("cluster-1", cluster, 1),
                                    ("cluster-2", cluster, 2)):
                log("run", run, label, machine_load())
                results.append(one_run(args, workdir, redis, n, label, run))
    finally:
        single.stop()
        cluster.stop()
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)

    keys = ["welcomes_per_s", "welcome_p50_ms", "welcome_p99_ms", "hb_per_s",
            "hb_p99_ms", "daemon_cpu_pct", "redis_commands_per_session",
            "redis_cpu_pct", "errors"]
    print("| run | " + " | ".join(keys) + " |")
    print("| --- " * (len(keys) + 1) + "|")
    for label in ("single-1", "cluster-1", "cluster-2"):
        rows = [r for r in results if r["label"] == label]
        med = [statistics.median(r[k] for r in rows) for k in keys]
        print("| %s | " % label + " | ".join(
            "%.1f" % v if isinstance(v, float) else str(v) for v in med) +
            " |")
    log("runs written to", args.out)


if __name__ == "__main__":
    main()
