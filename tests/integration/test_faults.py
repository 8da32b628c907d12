"""Crash safety and Redis outages, end to end: the daemon killed with
SIGKILL mid-session, Redis killed mid-run and restarted on its own AOF.
Committed credit must survive, nothing may be credited twice, and what is
decided while Redis is away waits in the bounded commit buffer. Every
check reads Redis directly, not only the daemon's view of it."""

import asyncio
import os
import re
import signal
import time

from conftest import Learner, face, learner_token, pb, run, wait_until
from test_crediting import A, FAST, enrol, verified


def redis_hash(redis, key):
    words = redis.cli("HGETALL", key).split("\n")
    words = [w for w in words if w != ""]
    return dict(zip(words[0::2], words[1::2]))


STREAM_ID = re.compile(r"^[0-9]+-[0-9]+$")


def credit_entries(redis, learner):
    """The credit entries of the learner's stream, as dicts (no value of
    this stream looks like an entry id: days have two dashes)."""
    out = redis.cli("XRANGE", "pd:{%s}:stream" % learner, "-", "+")
    entries, words = [], out.split("\n")
    i = 0
    while i < len(words):
        if STREAM_ID.match(words[i]):
            entries.append({})
            i += 1
            continue
        entries[-1][words[i]] = words[i + 1]
        i += 2
    return [e for e in entries if e.get("type") == "credit"]


def assert_ledger_consistent(redis, learner, course="course-1"):
    """The stream, the course total, the days and the session hashes
    agree, and no check was credited twice. Returns the total in ms."""
    credits = credit_entries(redis, learner)
    checks = [(e["session"], e["check"]) for e in credits]
    assert len(checks) == len(set(checks)), "a check credited twice"
    total = int(redis_hash(redis, "pd:{%s}:course:%s" % (learner, course))
                .get("total_ms", "0"))
    assert sum(int(e["credited_ms"]) for e in credits) == total
    days = redis_hash(redis, "pd:{%s}:days" % learner)
    assert sum(int(v) for v in days.values()) == total
    for sid in {s for s, _ in checks}:
        h = redis_hash(redis, "pd:{%s}:session:%s" % (learner, sid))
        done = {k[2:] for k in h if k.startswith("c:")}
        assert done == {c for s, c in checks if s == sid}
    return total


async def heartbeats(c, seconds, states=None):
    """Heartbeats every 0.25 s for seconds, each answered with a Status
    acking it; returns the last Status. states, when given, collects the
    states seen."""
    t0 = time.time()
    st = None
    while time.time() - t0 < seconds:
        await c.heartbeat()
        st = await c.status()
        while c.last_ack < c.seq:       # a Status owed to a Verdict
            st = await c.status()
        assert c.last_ack == c.seq
        if states is not None:
            states.append((st.state, st.reason))
        await asyncio.sleep(0.25)
    return st


async def match(c, photo):
    await c.snapshot(face(photo), 0)
    v = await c.expect("verdict")
    assert v.outcome == pb.MATCH, v
    return await c.status()


# ---------------------------------------------------------------------
# SIGKILL of the daemon
# ---------------------------------------------------------------------

def test_sigkill_mid_commit_then_resume(daemon_factory, redis):
    """The daemon is killed while a check is on its way; on restart the
    client resumes its session. Every second acknowledged before the kill
    is in Redis, the one in flight is committed once or not at all, and
    the resumed session credits on without repeating anything."""
    d = daemon_factory(FAST)
    enrol(d, "crash-1", A[0])
    t_start = time.time()

    async def before():
        c = await verified(d, "crash-1")
        acked = 0
        for photo in (A[2], A[3]):
            await heartbeats(c, 1.5)
            acked = (await match(c, photo)).credited_s
        await heartbeats(c, 1.5)
        await c.snapshot(face(A[4]), 0)     # killed while it is analysed
        await asyncio.sleep(0.05)
        d.stop(signal.SIGKILL)
        return c.welcome.session_id, acked

    sid, acked = run(before())
    assert acked >= 2
    total = assert_ledger_consistent(redis, "crash-1")
    assert total >= acked * 1000, (total, acked)
    assert total <= (time.time() - t_start) * 1000

    d.start()

    async def after():
        c = await Learner.connect(d)
        w = await c.hello(learner_token(sub="crash-1"), resume=sid)
        assert w.session_id == sid
        assert w.credited_s == total // 1000
        ch = await c.expect("challenge")
        await c.snapshot(face(A[5]), ch.challenge_id)
        assert (await c.expect("verdict")).outcome == pb.MATCH
        await heartbeats(c, 1.5)
        st = await match(c, A[6])
        await c.close()
        return st

    st = run(after())
    final = assert_ledger_consistent(redis, "crash-1")
    assert st.credited_s == final // 1000
    assert final > total
    assert final <= (time.time() - t_start) * 1000


def test_sigkill_with_embedded_redis_keeps_committed_credit(daemon_factory):
    """The embedded redis-server follows a SIGKILLed daemon down (it gets
    SIGTERM and writes its AOF) and the next start reads it back."""
    d = daemon_factory(dict(FAST, **{"redis.address": "embedded"}))
    enrol(d, "crash-2", A[0])

    async def before():
        c = await verified(d, "crash-2")
        await heartbeats(c, 2.0)
        st = await match(c, A[2])
        d.stop(signal.SIGKILL)
        return c.welcome.session_id, st.credited_s

    sid, acked = run(before())
    assert acked >= 1
    sock = os.path.join(d.sections["redis"]["data_dir"], "redis.sock")
    # The child is gone before the daemon can be started again.
    wait_until(lambda: not os.path.exists(sock) or _dead(sock), 10,
               what="embedded redis gone")
    d.start()

    async def after():
        c = await Learner.connect(d)
        w = await c.hello(learner_token(sub="crash-2"), resume=sid)
        await c.close()
        return w

    w = run(after())
    assert w.session_id == sid
    assert w.credited_s == acked


def _dead(sock):
    import socket
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sock)
        return False
    except OSError:
        return True
    finally:
        s.close()


# ---------------------------------------------------------------------
# Redis outages
# ---------------------------------------------------------------------

def test_redis_outage_buffers_commits_and_applies_them_once(daemon_factory,
                                                            redis):
    """Redis is killed mid-run and restarted on its own AOF. The daemon
    stays up, /healthz says 503, the learner stays connected and ACTIVE,
    the checks' commits wait in the buffer (Status pending_s) and reach
    Redis once, in full, when it is back."""
    d = daemon_factory(FAST)
    enrol(d, "outage-1", A[0])

    async def scenario():
        c = await verified(d, "outage-1")
        await heartbeats(c, 1.5)
        before = (await match(c, A[2])).credited_s
        t_down = time.time()
        redis.kill()
        await asyncio.to_thread(wait_until, lambda: d.health() == 503, 5,
                                what="503")

        states = []
        pending = 0
        for photo in (A[3], A[4]):
            await heartbeats(c, 1.5, states)
            st = await match(c, photo)
            assert st.credited_s == before
            assert st.pending_s > pending
            pending = st.pending_s
        spent_down = time.time() - t_down
        assert all(s == pb.ACTIVE for s, _ in states), states
        assert d.metric("proctord_commit_buffer_depth") >= 2
        assert d.metric("proctord_redis_up") == 0

        redis.start()
        await asyncio.to_thread(wait_until, lambda: d.health() == 200, 15,
                                what="200 again")
        await asyncio.to_thread(
            wait_until, lambda: d.metric("proctord_commit_buffer_depth") == 0,
            10, what="buffer drained")
        st = await heartbeats(c, 1.0)
        assert st.pending_s == 0
        assert st.state == pb.ACTIVE
        await c.close()
        return before, pending, st.credited_s, spent_down

    before, pending, after, spent_down = run(scenario())
    total = assert_ledger_consistent(redis, "outage-1")
    assert after == total // 1000
    # What was studied while Redis was away is credited, and only once.
    assert total // 1000 >= before + pending
    assert total / 1000 <= before + spent_down + 1.5
    assert d.metric("proctord_commit_buffer_dropped_total") == 0
    assert d.metric("proctord_commit_buffer_applied_total") >= \
        d.metric("proctord_commit_buffer_buffered_total") > 0
    assert d.alive()
    # A clean stop (under the sanitizers: no leak, no error on the way).
    assert d.stop() == 0


def test_buffered_commits_keep_the_daily_cap(daemon_factory, redis):
    """Commits replayed after an outage still meet the daily cap, and the
    learner is paused at the cap while Redis is away."""
    d = daemon_factory(dict(FAST, **{"policy.daily_cap": "3s"}))
    enrol(d, "outage-2", A[0])

    async def scenario():
        c = await verified(d, "outage-2")
        redis.kill()
        await asyncio.to_thread(wait_until, lambda: d.health() == 503, 5,
                                what="503")
        states = []
        for photo in (A[2], A[3], A[4], A[5]):
            await heartbeats(c, 1.5, states)
            await match(c, photo)
        await heartbeats(c, 1.0, states)
        assert (pb.SUSPENDED, "daily_cap") in states, states
        redis.start()
        await asyncio.to_thread(
            wait_until, lambda: d.metric("proctord_commit_buffer_depth") == 0
            and d.health() == 200, 15, what="buffer drained")
        st = await heartbeats(c, 0.5)
        await c.close()
        return st

    st = run(scenario())
    assert assert_ledger_consistent(redis, "outage-2") == 3000
    assert st.credited_s == 3
    assert st.state == pb.SUSPENDED


def test_past_the_buffer_crediting_pauses_and_says_so(daemon_factory, redis):
    """With a small buffer, an outage fills it: crediting pauses (Status
    SUSPENDED, reason commit_buffer_full), nothing is dropped, and when
    Redis is back what was kept is applied and crediting resumes."""
    d = daemon_factory(dict(FAST, **{"redis.commit_buffer": "20"}))
    enrol(d, "outage-3", A[0])

    async def scenario():
        c = await verified(d, "outage-3")
        redis.kill()
        await asyncio.to_thread(wait_until, lambda: d.health() == 503, 5,
                                what="503")
        states = []
        for photo in (A[2], A[3], A[4], A[5], A[6], A[7]):
            await heartbeats(c, 0.75, states)
            await c.snapshot(face(photo), 0)
            assert (await c.expect("verdict")).outcome == pb.MATCH
        st = await heartbeats(c, 1.5, states)
        assert st.state == pb.SUSPENDED
        assert st.reason == "commit_buffer_full"
        held = st.pending_s
        assert d.metric("proctord_commit_buffer_depth") <= 20
        assert d.metric("proctord_commit_buffer_dropped_total") == 0

        # Paused: the time now accrues nothing.
        await heartbeats(c, 1.5)
        redis.start()
        await asyncio.to_thread(
            wait_until, lambda: d.metric("proctord_commit_buffer_depth") == 0
            and d.health() == 200, 15, what="buffer drained")
        st = await heartbeats(c, 1.0)
        assert st.state != pb.SUSPENDED
        assert st.pending_s == 0
        assert st.credited_s >= held
        await c.close()
        return held

    held = run(scenario())
    total = assert_ledger_consistent(redis, "outage-3")
    assert total // 1000 >= held
    # Six checks of 0.75 s would be 4.5 s; the pause cut that short.
    assert total < 4500 + 1000
    assert d.metric("proctord_commit_buffer_dropped_total") == 0
    assert d.stop() == 0


def test_sigterm_with_redis_down_says_what_was_not_written(daemon_factory,
                                                           redis):
    """A stop while commits wait for Redis cannot write them; it says
    so, with how much, rather than losing them silently."""
    d = daemon_factory(FAST)
    enrol(d, "outage-4", A[0])

    async def scenario():
        c = await verified(d, "outage-4")
        redis.kill()
        await asyncio.to_thread(wait_until, lambda: d.health() == 503, 5,
                                what="503")
        await heartbeats(c, 1.5)
        st = await match(c, A[2])
        assert st.pending_s >= 1
        return st.pending_s

    pending = run(scenario())
    assert d.stop() == 0
    line = [ln for ln in d.read_log().splitlines()
            if "ledger writes unsent" in ln]
    assert line, d.read_log()[-2000:]
    ms = int(re.search(r"commit_ms=([0-9]+)", line[0]).group(1))
    assert ms >= pending * 1000


def test_stalled_redis_buffers_too(daemon_factory, redis):
    """A Redis that stops answering without closing (SIGSTOP) counts as
    down after two seconds: checks made then are buffered, and when it
    answers again what was in flight (the heartbeats' resume refreshes,
    the health probes) and the buffered writes land, each once."""
    d = daemon_factory(FAST)
    enrol(d, "stall-1", A[0])

    async def scenario():
        c = await verified(d, "stall-1")
        await heartbeats(c, 1.0)
        before = (await match(c, A[2])).credited_s
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            await heartbeats(c, 1.0)
            await asyncio.to_thread(wait_until, lambda: d.health() == 503,
                                    5, what="503")
            st = None
            for photo in (A[4], A[5]):
                await heartbeats(c, 1.5)
                st = await match(c, photo)
            assert st.pending_s >= 1, st
            assert d.metric("proctord_commit_buffer_depth") >= 1
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        await asyncio.to_thread(
            wait_until, lambda: d.metric("proctord_commit_buffer_depth") == 0
            and d.health() == 200, 15, what="buffer drained")
        st = await heartbeats(c, 1.0)
        await c.close()
        return before, st

    before, st = run(scenario())
    total = assert_ledger_consistent(redis, "stall-1")
    assert st.credited_s == total // 1000 and st.pending_s == 0
    assert total // 1000 >= before + 3
    assert d.metric("proctord_commit_buffer_dropped_total") == 0
    assert d.stop() == 0
