"""The daemon as an operator sees it: flags, config errors, SIGTERM and
SIGHUP, /healthz through a Redis outage, /metrics, and the embedded
redis-server it starts and stops."""

import asyncio
import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import (Daemon, Learner, learner_token, pb, run,
                      run_binary, wait_until)


def one_line(stderr):
    text = stderr.decode(errors="replace")
    lines = text.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), \
        "stderr is not one line: %r" % text
    return lines[0]


# ---------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------

def test_help():
    p = run_binary("--help")
    assert p.returncode == 0
    out = p.stdout.decode()
    assert re.search(r"(^|\s)-c\b", out), out
    assert "--version" in out


def test_version():
    p = run_binary("--version")
    assert p.returncode == 0
    assert re.match(r"^proctord \d+\.\d+(\.\d+)?\S*\n?$", p.stdout.decode()), \
        p.stdout


@pytest.mark.parametrize("args", [["--bogus"], ["-x"], ["stray"],
                                  ["-c"]],
                         ids=["long_flag", "short_flag", "argument",
                              "c_without_file"])
def test_bad_flag_exits_2_with_one_line(args):
    p = run_binary(*args)
    assert p.returncode == 2
    one_line(p.stderr)


def test_missing_config_file_exits_2(workdir):
    path = os.path.join(workdir, "nope.conf")
    p = run_binary("-c", path)
    assert p.returncode == 2
    assert path in one_line(p.stderr)


# ---------------------------------------------------------------------
# Config errors
# ---------------------------------------------------------------------

@pytest.mark.parametrize("overrides,needle", [
    ({"server.hello_timeout": "ten"}, "server.hello_timeout"),
    ({"server.hello_timeout": "10"}, "server.hello_timeout"),
    ({"server.max_frame": "2 lots"}, "server.max_frame"),
    ({"server.bogus": "1"}, "server.bogus"),
    ({"policy.heartbeat_intervall": "10s"}, "policy.heartbeat_intervall"),
    ({"policy.heartbeat_interval": "-5s"}, "policy.heartbeat_interval"),
    ({"policy.liveness_share": "2"}, "policy.liveness_share"),
    ({"auth.jwt_secret": None}, "auth.jwt_secret"),
    ({"auth.jwt_secret": "short"}, "auth.jwt_secret"),
    ({"bogus.key": "1"}, "bogus"),
    ({"vision.nice": "20"}, "vision.nice"),
], ids=["duration_word", "duration_no_unit", "size", "unknown_key",
        "typo_key", "negative", "share_range", "no_secret", "short_secret",
        "unknown_section", "nice_range"])
def test_config_error_exits_2_naming_the_key(workdir, overrides, needle):
    d = Daemon(workdir, "127.0.0.1:1", overrides)
    p = run_binary("-c", d.config_path)
    assert p.returncode == 2, (p.returncode, p.stderr)
    line = one_line(p.stderr)
    assert needle in line, line


def thread_nice(pid):
    """{thread name: [nice values]} from /proc (field 19 of stat)."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
            stat = f.read()
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out.setdefault(name, []).append(int(fields[16]))
    return out


@pytest.mark.parametrize("nice", ["10", "0"])
def test_vision_workers_run_below_the_network_threads(daemon_factory, nice):
    """vision.nice lowers the analysis threads only: the core and the
    network threads keep the daemon's own priority."""
    d = daemon_factory({"vision.workers": "3", "vision.nice": nice})
    # Each thread names (and lowers) itself once it runs, which can be
    # just after the ports answer.
    names = ("proctord-net0", "proctord-net1")
    wait_until(lambda: all(n in thread_nice(d.proc.pid) for n in names), 10,
               what="network threads named")
    if nice != "0":
        wait_until(lambda: sum(v == int(nice) for values in
                               thread_nice(d.proc.pid).values()
                               for v in values) >= 3, 10,
                   what="vision workers lowered")
    threads = thread_nice(d.proc.pid)
    lowered = sum(1 for values in threads.values() for v in values
                  if v == int(nice))
    assert all(v == 0 for v in threads["proctord-net0"] +
               threads["proctord-net1"]), threads
    if nice == "0":
        assert all(v == 0 for values in threads.values()
                   for v in values), threads
    else:
        assert lowered == 3, threads


# ---------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------

def test_sigterm_closes_learners_with_1001_and_exits_0(daemon):
    async def scenario():
        learners = []
        for i in range(3):
            c = await Learner.connect(daemon)
            await c.hello(learner_token(sub="term-%d" % i))
            await c.heartbeat()
            await c.status()
            learners.append(c)
        t0 = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        for c in learners:
            code, _ = await c.close_info(timeout=6)
            assert code == 1001
        return t0

    t0 = run(scenario())
    rc = daemon.proc.wait(timeout=max(0.1, 5 - (time.monotonic() - t0)))
    took = time.monotonic() - t0
    assert rc == 0
    assert took < 5, "exit took %.2fs" % took
    assert "proctord stopped" in daemon.read_log()


def test_sigterm_idle_exits_quickly(daemon):
    t0 = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 5


def _set_policy(d, **keys):
    d.sections.setdefault("policy", {}).update(keys)
    d.write_config()


async def _welcome_interval(d, sub):
    c = await Learner.connect(d)
    w = await c.hello(learner_token(sub=sub))
    await c.close()
    return w.heartbeat_interval_ms


def test_sighup_reloads_policy(daemon):
    assert run(_welcome_interval(daemon, "before")) == 10000
    _set_policy(daemon, heartbeat_interval="5s")
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_log("policy reloaded", "policy.heartbeat_interval")
    assert daemon.alive()
    assert run(_welcome_interval(daemon, "after")) == 5000


def test_sighup_with_unchanged_policy_logs_no_change(daemon):
    daemon.send_signal(signal.SIGHUP)
    line = daemon.wait_log("policy reloaded")
    assert "policy.heartbeat_interval" not in line
    assert daemon.alive()
    assert run(_welcome_interval(daemon, "same")) == 10000


def test_sighup_with_bad_policy_keeps_the_old_one(daemon):
    _set_policy(daemon, heartbeat_interval="5s")
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_log("policy reloaded", "policy.heartbeat_interval")

    _set_policy(daemon, heartbeat_interval="soon")
    daemon.send_signal(signal.SIGHUP)
    line = daemon.wait_log("refused")
    assert "policy.heartbeat_interval" in line, line
    time.sleep(0.2)
    assert daemon.alive()
    assert run(_welcome_interval(daemon, "kept")) == 5000

    # A later good file is taken again.
    _set_policy(daemon, heartbeat_interval="7s")
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_log("policy reloaded", "-> 7s")
    assert run(_welcome_interval(daemon, "again")) == 7000


# ---------------------------------------------------------------------
# /healthz through a Redis outage
# ---------------------------------------------------------------------

def test_healthz_follows_redis(daemon, redis):
    status, body = daemon.http_json("GET", "/healthz")
    assert status == 200
    assert body["status"] == "ok"

    async def scenario():
        c = await Learner.connect(daemon)
        await c.hello(learner_token(sub="outage"))
        await c.heartbeat()
        await c.status()

        redis.kill()
        t0 = time.monotonic()
        while daemon.health() != 503:
            assert time.monotonic() - t0 < 5, "no 503 within 5 s"
            await c.heartbeat()          # keeps the learner talking
            await c.status()
            await asyncio.sleep(0.1)
        status, _, data = daemon.http("GET", "/healthz")
        assert status == 503
        assert "error" in json.loads(data) or \
            json.loads(data).get("status") != "ok"

        # Down: the daemon stays up and still answers every heartbeat.
        for _ in range(5):
            await c.heartbeat()
            st = await c.status()
            assert c.last_ack == c.seq
            assert st.state in (pb.SUSPENDED, pb.UNVERIFIED)
        assert daemon.alive()

        # A learner arriving now still gets a session.
        late = await Learner.connect(daemon)
        await late.hello(learner_token(sub="during-outage"))
        await late.heartbeat()
        await late.status()

        redis.start()
        t0 = time.monotonic()
        while daemon.health() != 200:
            assert time.monotonic() - t0 < 15, "no 200 within 15 s"
            await c.heartbeat()
            await c.status()
            await asyncio.sleep(0.2)

        # Back up: no longer suspended.
        await c.heartbeat()
        st = await c.status()
        assert st.state != pb.SUSPENDED
        await c.close()
        await late.close()
    run(scenario())
    assert daemon.alive()


def test_hung_redis(daemon, redis):
    """A Redis that stops answering without closing (a stuck host, a
    partition): /healthz says 503 within its own deadline, and learners,
    old and new, are not left waiting on it."""
    async def scenario():
        c = await Learner.connect(daemon)
        await c.hello(learner_token(sub="before-hang"))
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            assert daemon.health(timeout=5) == 503
            assert time.monotonic() - t0 < 2.5

            await c.heartbeat()
            await c.status(timeout=5)
            assert c.last_ack == c.seq

            late = await Learner.connect(daemon)
            await late.send(hello=pb.Hello(
                token=learner_token(sub="during-hang"), client="pytest"))
            await late.expect("welcome", timeout=5)
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: daemon.health() == 200, 15, what="200 again")
        await c.close()
    run(scenario())
    assert daemon.alive()


# ---------------------------------------------------------------------
# /metrics and 404
# ---------------------------------------------------------------------

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*'
                    r'(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"'
                    r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? '
                    r'(-?[0-9.]+([eE][-+]?[0-9]+)?|NaN|[+-]Inf)$')


def test_metrics(daemon):
    status, headers, data = daemon.http("GET", "/metrics")
    assert status == 200
    assert headers.get("Content-Type", "").startswith("text/plain")
    text = data.decode()
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) \S+ ", line), line
        else:
            assert SAMPLE.match(line), "not a Prometheus sample: %r" % line
    for name in ("proctord_connections_open",
                 'proctord_messages_in_total{kind="heartbeat"}',
                 'proctord_closes_total{code="4401"}'):
        assert re.search("^" + re.escape(name) + " ", text, re.M), name

    hb = 'proctord_messages_in_total{kind="heartbeat"}'
    c4401 = 'proctord_closes_total{code="4401"}'
    hb0, cl0 = daemon.metric(hb), daemon.metric(c4401)
    assert daemon.metric("proctord_connections_open") == 0

    async def scenario():
        c = await Learner.connect(daemon)
        await c.hello()
        for _ in range(4):
            await c.heartbeat()
            await c.status()
        assert daemon.metric("proctord_connections_open") == 1
        assert daemon.metric(hb) == hb0 + 4
        await c.close()

        bad = await Learner.connect(daemon)
        await bad.heartbeat()            # before Hello: 4401
        await bad.expect_close(4401)
    run(scenario())

    wait_until(lambda: daemon.metric(c4401) == cl0 + 1, 5,
               what="closes_total{code=4401} + 1")
    wait_until(lambda: daemon.metric("proctord_connections_open") == 0, 5,
               what="connections_open back to 0")
    assert daemon.metric(hb) == hb0 + 4   # the refused one is not counted


@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/healthz/x",
                                  "/metricsx"])
def test_unknown_path_is_404_json(daemon, path):
    status, headers, data = daemon.http("GET", path)
    assert status == 404
    assert headers.get("Content-Type", "").startswith("application/json")
    body = json.loads(data)
    assert isinstance(body.get("error"), str) and body["error"]


# ---------------------------------------------------------------------
# Embedded Redis
# ---------------------------------------------------------------------

def _alive(pid):
    """True while pid runs (a zombie counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _children(pid):
    p = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                       timeout=5)
    return [int(x) for x in p.stdout.split()]


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def test_embedded_redis(daemon_factory):
    d = daemon_factory(redis_address="embedded")
    data_dir = d.sections["redis"]["data_dir"]
    assert os.path.exists(os.path.join(data_dir, "redis.sock"))
    wait_until(lambda: d.health() == 200, 10, what="/healthz 200")

    kids = [p for p in _children(d.proc.pid)
            if _comm(p).startswith("redis-server")]
    assert len(kids) == 1, "redis-server children: %r" % kids
    child = kids[0]

    async def scenario():
        c = await Learner.connect(d)
        w = await c.hello(learner_token(sub="embedded"))
        await c.heartbeat()
        st = await c.status()
        assert st.state != pb.SUSPENDED
        await c.close()
        return w.session_id
    sid = run(scenario())
    # The session went into the embedded Redis, in its data_dir.
    time.sleep(0.2)
    assert os.path.exists(os.path.join(data_dir, "redis.log"))

    pid = d.proc.pid
    t0 = time.monotonic()
    assert d.stop(timeout=6) == 0
    assert time.monotonic() - t0 < 5
    wait_until(lambda: not _alive(child), 3,
               what="embedded redis-server %d gone" % child)
    assert not _alive(pid)

    # Started again on the same data_dir, it comes up and resumes.
    d.start()
    wait_until(lambda: d.health() == 200, 10, what="/healthz 200 again")

    async def again():
        c = await Learner.connect(d)
        got = await c.hello(learner_token(sub="embedded"), resume=sid)
        assert got.session_id == sid
        await c.close()
    run(again())


def test_embedded_redis_restarted_when_it_dies(daemon_factory):
    d = daemon_factory(redis_address="embedded")
    wait_until(lambda: d.health() == 200, 10, what="/healthz 200")
    kids = [p for p in _children(d.proc.pid)
            if _comm(p).startswith("redis-server")]
    assert len(kids) == 1
    os.kill(kids[0], signal.SIGKILL)
    wait_until(lambda: d.health() == 503, 5, what="/healthz 503")
    wait_until(lambda: d.health() == 200, 15, what="/healthz 200 after")
    new = [p for p in _children(d.proc.pid)
           if _comm(p).startswith("redis-server")]
    assert len(new) == 1 and new[0] != kids[0]
    assert d.stop() == 0
    wait_until(lambda: not _alive(new[0]), 3, what="respawned redis gone")
