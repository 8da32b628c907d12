"""The load generator (bench/load.c), built with the rest, run briefly
against the real daemon: every learner is welcomed, heartbeats come back
acked, nothing fails. No timing is asserted; the numbers belong to
bench/README.md."""

import json
import os
import subprocess

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
