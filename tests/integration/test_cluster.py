"""Several daemons on one Redis Cluster: three masters on loopback (made
with redis-cli --cluster create), two daemons with redis.cluster = yes,
learners on both. Credit is right, any daemon answers for any learner,
a login on the second daemon takes the session over on the first, and
moving slots between masters mid-run loses and doubles nothing."""

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import websockets

from conftest import (Daemon, Learner, face, learner_token, pb,
                      platform_token, run, supervisor_token, wait_until)
from test_crediting import A, B, FAST, check, enrol, hours, study, verified

CLUSTER = dict(FAST)


def _port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def cluster_port():
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = random.randrange(20000, 40000)
        if _port_free(port) and _port_free(port + 10000):
            return port


class Cluster:
    """Three redis-server masters with cluster-enabled, no replicas."""

    def __init__(self, workdir, masters=3):
        self.dir = os.path.join(workdir, "cluster")
        self.ports = [cluster_port() for _ in range(masters)]
        self.procs = []
        for port in self.ports:
            d = os.path.join(self.dir, str(port))
            os.makedirs(d)
            self.procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--dir", d, "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "5000", "--appendonly", "yes",
                 "--save", "", "--logfile", "redis.log"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            wait_until(lambda: self._ping(port), 10, what="redis up")
        subprocess.run(["redis-cli", "--cluster", "create"] +
                       ["127.0.0.1:%d" % p for p in self.ports] +
                       ["--cluster-yes"], check=True, capture_output=True,
                       timeout=60)
        for port in self.ports:
            wait_until(lambda: "cluster_state:ok" in
                       self.cli(port, "CLUSTER", "INFO"), 20,
                       what="cluster ok")

    def _ping(self, port):
        try:
            return self.cli(port, "PING") == "PONG"
        except subprocess.CalledProcessError:
            return False

    def cli(self, port, *args):
        out = subprocess.run(["redis-cli", "-p", str(port), "--raw"] +
                             [str(a) for a in args], check=True,
                             capture_output=True, timeout=30)
        return out.stdout.decode().rstrip("\n")

    def ccli(self, *args):
        """A command followed to the master of its key (redis-cli -c)."""
        out = subprocess.run(["redis-cli", "-c", "-p", str(self.ports[0]),
                              "--raw"] + [str(a) for a in args], check=True,
                             capture_output=True, timeout=30)
        return out.stdout.decode().rstrip("\n")

    def node_id(self, port):
        return self.cli(port, "CLUSTER", "MYID")

    def owner(self, key):
        """The port of the master serving key's slot."""
        slot = int(self.cli(self.ports[0], "CLUSTER", "KEYSLOT", key))
        for line in self.cli(self.ports[0], "CLUSTER", "NODES").splitlines():
            f = line.split()
            if "master" not in f[2]:
                continue
            port = int(f[1].split("@")[0].rsplit(":", 1)[1])
            for r in f[8:]:
                if r.startswith("["):
                    continue
                lo, _, hi = r.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return port
        raise AssertionError("no master for slot %d" % slot)

    @property
    def seed(self):
        return "127.0.0.1:%d" % self.ports[0]

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait(timeout=10)


@pytest.fixture
def cluster():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required")
    workdir = tempfile.mkdtemp(prefix="proctord-cluster-")
    c = Cluster(workdir)
    c.workdir = workdir
    yield c
    c.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def daemons(cluster):
    """Starts n daemons on the cluster (each its own ports and log)."""
    started = []

    def make(n=2, overrides=None):
        for _ in range(n):
            o = dict(CLUSTER)
            o.update({"redis.cluster": "yes"})
            o.update(overrides or {})
            d = Daemon(tempfile.mkdtemp(dir=cluster.workdir), cluster.seed,
                       o)
            d.start()
            started.append(d)
        for d in started[-n:]:
            wait_until(lambda: d.health() == 200, 20, what="daemon healthy")
        return started[-n:]

    yield make
    for d in started:
        d.stop(signal.SIGKILL)


def learners_on_every_master(cluster, n, prefix="learner"):
    """n learner ids whose keys sit on the masters in turn."""
    out, i = [], 0
    for k in range(n):
        want = cluster.ports[k % len(cluster.ports)]
        while cluster.owner("pd:{%s-%d}:stream" % (prefix, i)) != want:
            i += 1
        out.append("%s-%d" % (prefix, i))
        i += 1
    return out


def stream_credit_ms(cluster, learner):
    """The credited ms summed over the learner's stream, with the number
    of credit entries and of distinct check ids among them."""
    raw = cluster.ccli("XRANGE", "pd:{%s}:stream" % learner, "-", "+")
    lines = raw.splitlines()
    total, checks, entries = 0, set(), 0
    i = 0
    fields = {}
    while i < len(lines):
        line = lines[i]
        if line in ("type", "credited_ms", "check"):
            fields[line] = lines[i + 1]
            i += 2
            if "type" in fields and "credited_ms" in fields and \
                    "check" in fields:
                if fields["type"] == "credit":
                    total += int(fields["credited_ms"])
                    checks.add(fields["check"])
                    entries += 1
                fields = {}
            continue
        i += 1
    return total, entries, len(checks)


def test_two_daemons_credit_and_answer_for_every_learner(cluster, daemons):
    d1, d2 = daemons(2)
    l1, l2, l3 = learners_on_every_master(cluster, 3)
    # Enrolled through either daemon; the embedding is read from Redis.
    enrol(d1, l1, A[0])
    enrol(d2, l2, A[0])
    enrol(d1, l3, A[0])

    async def scenario():
        c1 = await verified(d1, l1)
        c2 = await verified(d2, l2)
        c3 = await verified(d2, l3)
        spent = await asyncio.gather(study(c1, 3.0), study(c2, 3.0),
                                     study(c3, 3.0))
        for c in (c1, c2, c3):
            await check(c, A[2], pb.MATCH)
        for lid, s in zip((l1, l2, l3), spent):
            h1, h2 = hours(d1, lid), hours(d2, lid)
            assert h1 == h2
            assert abs(h1["credited_seconds"] - s) <= 1.0, (lid, h1, s)
            total, entries, distinct = stream_credit_ms(cluster, lid)
            assert entries == distinct
            assert total // 1000 == h1["credited_seconds"]
        # A session lived on one daemon is served by the other.
        sid = c1.welcome.session_id
        status, body = d2.http_json("GET", "/v1/sessions/%s" % sid,
                                    platform_token())
        assert status == 200, body
        assert body["session_id"] == sid and body["learner_id"] == l1
        # A mismatch on d2 opens a flag that d1 lists and serves.
        await check(c3, B[0], pb.MISMATCH)
        for c in (c1, c2, c3):
            await c.close()
    run(scenario())

    def flags_of(d):
        status, body = d.http_json("GET", "/v1/flags?status=open",
                                   supervisor_token())
        assert status == 200, body
        return [f for f in body["flags"] if f["learner_id"] == l3]

    wait_until(lambda: len(flags_of(d1)) == 1, 5, what="flag listed on d1")
    # The organisation's report, from either daemon, counts the flag.
    for d in (d1, d2):
        status, body = d.http_json(
            "GET", "/v1/reports/hours?org=org-1&course=course-1",
            platform_token())
        assert status == 200, body
        rows = {r["learner_id"]: r for r in body["rows"]}
        for lid in (l1, l2, l3):
            assert rows[lid]["credited_seconds"] == \
                hours(d1, lid)["credited_seconds"]
        assert rows[l3]["flags_open"] == 1
    flag = flags_of(d1)[0]
    assert flag["kind"] == "face_mismatch"
    status, body = d2.http_json("GET", "/v1/flags/%s" % flag["id"],
                                supervisor_token())
    assert status == 200 and body["id"] == flag["id"], body
    # The data really is spread over the masters.
    owners = {cluster.owner("pd:{%s}:stream" % lid) for lid in (l1, l2, l3)}
    assert len(owners) == 3
    assert d1.metric("proctord_redis_up") == 1
    # A clean drain (and, in the sanitizer build, no leak) on SIGTERM.
    for d in (d1, d2):
        assert d.stop() == 0


def test_login_on_second_daemon_takes_over_the_first(cluster, daemons):
    d1, d2 = daemons(2)
    (lid,) = learners_on_every_master(cluster, 1, prefix="mover")
    enrol(d1, lid, A[0])

    async def scenario():
        first = await verified(d1, lid)
        spent1 = await study(first, 2.0)
        await check(first, A[2], pb.MATCH)
        old_sid = first.welcome.session_id
        assert cluster.ccli("GET", "pd:{%s}:lease" % lid).endswith(old_sid)

        # The same learner logs in through the other daemon while the
        # first session is still studying.
        second = await verified(d2, lid, photo=A[4])
        assert second.welcome.session_id != old_sid
        assert await first.closed_code() == 4409
        wait_until(lambda: d1.metric("proctord_takeovers_remote_total") == 1,
                   5, what="take-over counted on d1")
        holder = cluster.ccli("GET", "pd:{%s}:lease" % lid)
        assert holder.endswith(second.welcome.session_id), holder

        spent2 = await study(second, 2.0)
        await check(second, A[5], pb.MATCH)
        h = hours(d1, lid)
        assert h == hours(d2, lid)
        assert abs(h["credited_seconds"] - (spent1 + spent2)) <= 1.5, (
            h, spent1, spent2)
        await second.close()
    run(scenario())

    # d1 opened the concurrent_session flag; any daemon lists it.
    status, body = d2.http_json(
        "GET", "/v1/flags?status=open&kind=concurrent_session",
        supervisor_token())
    assert status == 200, body
    assert [f["learner_id"] for f in body["flags"]] == [lid]
    assert d2.metric("proctord_takeovers_remote_total") == 0


def slot_of(cluster, key):
    return int(cluster.cli(cluster.ports[0], "CLUSTER", "KEYSLOT", key))


def low_slot_learners(cluster, n, below, prefix):
    """n learner ids whose slot is under below (the slots a reshard of
    below slots from the first master moves first)."""
    out, i = [], 0
    while len(out) < n:
        lid = "%s-%d" % (prefix, i)
        if slot_of(cluster, "pd:{%s}:stream" % lid) < below:
            out.append(lid)
        i += 1
    return out


def test_resharding_mid_run_loses_and_doubles_nothing(cluster, daemons):
    d1, d2 = daemons(2)
    moved = 1500
    assert cluster.owner("pd:{x}:a") in cluster.ports
    first_master = cluster.ports[0]
    # Two learners in the slots that move, one on each daemon, and two
    # elsewhere.
    movers = low_slot_learners(cluster, 2, moved, "resharded")
    for lid in movers:
        assert cluster.owner("pd:{%s}:stream" % lid) == first_master
    stay = learners_on_every_master(cluster, 3, prefix="steady")[1:]
    plan = [(d1, movers[0]), (d2, movers[1]), (d1, stay[0]), (d2, stay[1])]
    for d, lid in plan:
        enrol(d, lid, A[0])

    async def learner(d, lid):
        c = await verified(d, lid)
        spent, t0 = 0.0, time.time()
        for photo in A[2:9]:
            spent += await study(c, 0.6)
            wall = time.time() - t0
            await check(c, photo, pb.MATCH)
        await c.close()
        # Time while a check is analysed accrues too (within the grace),
        # so the credit lies between the heartbeating time and the wall
        # time up to the last check.
        return spent, wall

    def reshard():
        time.sleep(1.5)
        subprocess.run(
            ["redis-cli", "--cluster", "reshard", cluster.seed,
             "--cluster-from", cluster.node_id(first_master),
             "--cluster-to", cluster.node_id(cluster.ports[1]),
             "--cluster-slots", str(moved), "--cluster-yes"],
            check=True, capture_output=True, timeout=120)

    async def scenario():
        tasks = [learner(d, lid) for d, lid in plan]
        return await asyncio.gather(asyncio.to_thread(reshard), *tasks)

    spent = run(scenario())[1:]
    for lid in movers:
        assert cluster.owner("pd:{%s}:stream" % lid) == cluster.ports[1]
    for (_, lid), s in zip(plan, spent):
        h1, h2 = hours(d1, lid), hours(d2, lid)
        assert h1 == h2
        # Every check's credit is there once: the stream has one credit
        # entry per check id, and they add up to the course total.
        total, entries, distinct = stream_credit_ms(cluster, lid)
        assert entries == distinct, (lid, entries, distinct)
        assert total // 1000 == h1["credited_seconds"], (lid, total, h1)
        assert s[0] - 1.0 <= h1["credited_seconds"] <= s[1] + 1.0, (
            lid, h1, s)
        course_ms = int(cluster.ccli("HGET", "pd:{%s}:course:course-1" % lid,
                                     "total_ms"))
        assert course_ms == total
    for d in (d1, d2):
        assert d.metric("proctord_redis_up") == 1


def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def same_slot_learner(slot, prefix):
    """A learner id whose keys hash to slot."""
    i = 0
    while crc16(("%s-%d" % (prefix, i)).encode()) % 16384 != slot:
        i += 1
    return "%s-%d" % (prefix, i)


def test_slot_migrating_by_hand_follows_ask_tryagain_and_moved(cluster,
                                                               daemons):
    """One slot moved step by step, as a reshard does it. While it is
    migrating, a key the old master lacks is read on the importing one
    (ASK); scripts over keys not all on one side wait (TRYAGAIN) and go
    through once the keys have moved; then the old master answers
    MOVED. Nothing is lost or counted twice."""
    d1, d2 = daemons(2)
    (old,) = learners_on_every_master(cluster, 1, prefix="ask")
    slot = slot_of(cluster, "pd:{%s}:stream" % old)
    new = same_slot_learner(slot, "ask-new")
    src, dst = cluster.owner("pd:{%s}:stream" % old), cluster.ports[1]
    assert src == cluster.ports[0]
    src_id, dst_id = cluster.node_id(src), cluster.node_id(dst)
    enrol(d1, old, A[0])

    def migrate_keys():
        keys = cluster.cli(src, "CLUSTER", "GETKEYSINSLOT", slot, 1000)
        for key in keys.splitlines():
            cluster.cli(src, "MIGRATE", "127.0.0.1", dst, key, 0, 5000)
        for port in cluster.ports:
            cluster.cli(port, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    async def scenario():
        c_old = await verified(d1, old)
        spent_old = await study(c_old, 1.0)
        await check(c_old, A[2], pb.MATCH)

        cluster.cli(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        cluster.cli(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        # A single key the old master lacks: asked on the importing one.
        assert hours(d2, new)["credited_seconds"] == 0
        # The enrolment script's keys are new: TRYAGAIN on the importing
        # master until the slot is handed over; the old learner's
        # evidence (a new key beside an old one) waits the same way.
        enrolled = asyncio.ensure_future(asyncio.to_thread(
            enrol, d2, new, A[0]))
        spent_old += await study(c_old, 1.0)
        committed = asyncio.ensure_future(check(c_old, A[3], pb.MATCH))
        await asyncio.sleep(1.5)
        assert not enrolled.done()
        await asyncio.to_thread(migrate_keys)
        # The old master answers MOVED to a read through d1.
        assert hours(d1, old)["credited_seconds"] >= spent_old - 1.0
        assert d1.metric("proctord_redis_redirects_total") >= 1
        await enrolled
        await committed

        spent_old += await study(c_old, 1.0)
        await check(c_old, A[4], pb.MATCH)
        c_new = await verified(d2, new)
        spent_new = await study(c_new, 1.0)
        await check(c_new, A[2], pb.MATCH)
        await c_old.close()
        await c_new.close()
        return spent_old, spent_new

    spent_old, spent_new = run(scenario())
    assert cluster.owner("pd:{%s}:stream" % old) == dst
    assert cluster.cli(dst, "EXISTS", "pd:{%s}:enrol" % new) == "1"
    for lid, spent in ((old, spent_old), (new, spent_new)):
        h = hours(d1, lid)
        assert h == hours(d2, lid)
        total, entries, distinct = stream_credit_ms(cluster, lid)
        assert entries == distinct and total // 1000 == h["credited_seconds"]
        assert h["credited_seconds"] >= spent - 1.0, (lid, h, spent)
    assert d2.metric("proctord_redis_redirects_total") >= 2
    assert d2.metric("proctord_redis_retries_total") >= 1
    for d in (d1, d2):
        assert d.stop() == 0


def test_lease_held_elsewhere_ends_the_session_without_a_message(cluster,
                                                                 daemons):
    """The take-over message can be missed (a subscriber reconnecting):
    the lease, re-checked every heartbeat_grace, says it all the same."""
    (d1,) = daemons(1)
    (lid,) = learners_on_every_master(cluster, 1, prefix="lease")
    enrol(d1, lid, A[0])

    async def scenario():
        c = await verified(d1, lid)
        await study(c, 1.0)
        await check(c, A[2], pb.MATCH)
        credited = hours(d1, lid)["credited_seconds"]
        # Another daemon's login, whose message never arrived.
        cluster.ccli("SET", "pd:{%s}:lease" % lid, "%s %s" % ("d" * 32,
                                                               "e" * 32))
        t0 = time.time()
        while time.time() - t0 < 8:
            try:
                await c.heartbeat()
                await c.expect("status", timeout=1)
            except (websockets.ConnectionClosed, AssertionError):
                # Closed, or the Error that comes before the close.
                break
            await asyncio.sleep(0.25)
        assert await c.closed_code() == 4409
        assert time.time() - t0 < 2 * 2.0 + 1.5
        return credited
    credited = run(scenario())
    assert d1.metric("proctord_takeovers_remote_total") == 1
    # The lease stays with its holder; nothing more is credited here.
    assert cluster.ccli("GET", "pd:{%s}:lease" % lid) == \
        "%s %s" % ("d" * 32, "e" * 32)
    assert hours(d1, lid)["credited_seconds"] == credited
