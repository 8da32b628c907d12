"""The load generator (bench/load.c), built with the rest, run briefly
against the real daemon: every learner is welcomed, heartbeats come back
acked, nothing fails. No timing is asserted; the numbers belong to
bench/README.md."""

import json
import os
import subprocess
import time

import pytest

from conftest import SECRET, SOURCE

BUILD = os.environ.get("PROCTORD_BUILD") or os.path.join(SOURCE, "build")
LOAD = os.path.join(BUILD, "bench", "proctord_load")
SESSIONS = 50


@pytest.mark.skipif(not os.access(LOAD, os.X_OK),
                    reason="proctord_load is not built in " + BUILD)
def test_fifty_learners_for_five_seconds(daemon, workdir):
    out = os.path.join(workdir, "load.json")
    proc = subprocess.run(
        [LOAD, "--url", daemon.ws_url, "--secret", SECRET,
         "--sessions", str(SESSIONS), "--rate", "200", "--interval", "200ms",
         "--duration", "5", "--settle", "0.5", "--no-reconnect",
         "--http", "127.0.0.1:%d" % daemon.http_port,
         "--pid", str(daemon.proc.pid), "--json", out, "--quiet"],
        capture_output=True, timeout=60)
    text = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, text
    with open(out) as f:
        r = json.load(f)

    assert r["errors"] == 0, (r["error_kinds"], text)
    assert r["welcomed_at_ramp"] == SESSIONS, text
    assert r["welcome"]["n"] == SESSIONS, text
    assert r["hb_acked"] > 0, text
    # At most the one beat in flight per learner when the run stopped.
    assert r["hb_sent"] - r["hb_acked"] <= SESSIONS, text
    assert r["heartbeat"]["n"] > 0, text
    # The daemon counted what the generator says it sent.
    assert daemon.metric('proctord_messages_in_total{kind="heartbeat"}') \
        >= r["hb_acked"]
    assert daemon.alive()


@pytest.mark.skipif(not os.access(LOAD, os.X_OK),
                    reason="proctord_load is not built in " + BUILD)
def test_leases_and_resume_keys_are_kept_in_batches(daemon_factory, redis,
                                                    workdir):
    """A hundred live learners stay leased and resumable past the resume
    window, and keeping them so takes a few batched script calls, not one
    or two round trips per learner each time."""
    sessions = 100
    d = daemon_factory({"policy.heartbeat_interval": "200ms",
                        "policy.resume_window": "2s"})
    # Into a file: a pipe nobody reads would stall the monitor. Line
    # buffered, as it is stopped with a signal.
    seen_path = os.path.join(workdir, "monitor.txt")
    seen_file = open(seen_path, "wb")
    monitor = subprocess.Popen(["stdbuf", "-oL", "redis-cli", "-p",
                                str(redis.port), "MONITOR"],
                               stdout=seen_file)
    load = subprocess.Popen(
        [LOAD, "--url", d.ws_url, "--secret", SECRET, "--prefix", "keep",
         "--sessions", str(sessions), "--rate", "500", "--interval", "200ms",
         "--duration", "7", "--settle", "0.2", "--no-reconnect", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Past the ramp, two resume windows after every Hello wrote them.
        time.sleep(5.0)
        resume = [k for k in redis.cli("--scan", "--pattern",
                                       "pd:{keep-*}:resume:*").split()]
        alive = [k for k in resume if int(redis.cli("PTTL", k)) > 0]
        leases = [redis.cli("GET", "pd:{keep-%d}:lease" % i)
                  for i in range(sessions)]
    finally:
        out = load.communicate(timeout=60)[0].decode(errors="replace")
        monitor.terminate()
        monitor.wait(timeout=10)
        seen_file.close()
    with open(seen_path, errors="replace") as f:
        seen = f.read()

    assert load.returncode == 0, out
    assert len(alive) == sessions, (len(resume), len(alive))
    assert all(len(h.split()) == 2 for h in leases), leases
    refreshes = [l for l in seen.splitlines()
                 if '"evalsha"' in l.lower() and ':lease"' in l]
    keys_per_call = [l.count(':lease"') for l in refreshes]
    # Every 0.5 s each learner is due; at most a tick's due learners wait
    # for the next call, so a few calls carry them all.
    assert sum(keys_per_call) >= 5 * sessions, keys_per_call
    assert len(refreshes) <= 3 * 7 + 6, keys_per_call
