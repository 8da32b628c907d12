"""Hostile clients against one daemon while a well-behaved learner
studies on it: thousands of connections that never say Hello, slow HTTP
clients, oversized frames and bodies, floods, a JPEG that claims to be
65,535 pixels square, and a learner's token aimed at another learner's
data. Each attack must be refused the way SPEC.md says, early and in
bounded memory, and the good learner's acks and credit must not notice."""

import asyncio
import os
import resource
import socket
import struct
import time

import websockets

from conftest import (SANITIZED, Learner, face, learner_token, pb,
                      platform_token, run, supervisor_token, wait_until)
from test_api import gray_jpeg
from test_crediting import A, B, FAST, enrol, hours

# Long enough that all NO_HELLO connections are open before the first
# is closed, even on a loaded machine.
HELLO_TIMEOUT_S = 8
HTTP_TIMEOUT_S = 2
NO_HELLO = 2000
# Per idle connection: libwebsockets' state, the kernel-side socket is
# not counted in RSS. Generous; what matters is that it is bounded.
KIB_PER_CONNECTION = 64

CONFIG = dict(FAST, **{
    "server.hello_timeout": "%ds" % HELLO_TIMEOUT_S,
    "server.http_timeout": "%ds" % HTTP_TIMEOUT_S,
    "server.http_max_body": "256KiB",
    "server.max_frame": "512KiB",
})


def raise_fd_limit(need):
    """The test process holds one socket per connection, and the daemon
    inherits the limit: raise the soft limit towards the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < need and os.geteuid() == 0:
        hard = need                 # root (as in CI) may raise it
    want = min(hard, max(soft, need))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    assert want >= need, "ulimit -n: hard limit %d below %d" % (hard, need)


def huge_jpeg():
    """A small, valid JPEG whose frame header claims 65,535 x 65,535: a
    decoder that believed it would ask for 4 GiB."""
    data = bytearray(gray_jpeg(16, 16))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 65535, 65535)
    return bytes(data)


# ---------------------------------------------------------------------
# The good learner
# ---------------------------------------------------------------------

class Good:
    """Heartbeats every 0.25 s until stopped; every Status must ack its
    heartbeat promptly, and the state stay ACTIVE."""

    def __init__(self, client):
        self.c = client
        self.worst = 0.0
        self.count = 0
        self.states = set()
        self.t0 = None
        self.last = None

    async def run(self, stop):
        self.t0 = time.time()
        while not stop.is_set():
            t = time.monotonic()
            self.last = time.time()
            await self.c.heartbeat()
            st = await self.c.status(timeout=5)
            while self.c.last_ack < self.c.seq:
                st = await self.c.status(timeout=5)
            self.worst = max(self.worst, time.monotonic() - t)
            self.count += 1
            self.states.add(st.state)
            await asyncio.sleep(0.25)


async def good_learner(d):
    c = await Learner.connect(d)
    await c.hello(learner_token(sub="good"))
    ch = await c.expect("challenge")
    await c.snapshot(face(A[1]), ch.challenge_id)
    assert (await c.expect("verdict")).outcome == pb.MATCH
    return c


# ---------------------------------------------------------------------
# The attacks
# ---------------------------------------------------------------------

async def ws_upgrade(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("GET /v1/learn HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Protocol: proctor.v1\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def close_code(reader, timeout):
    """The code of the server's close frame, or None on a bare EOF."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = await asyncio.wait_for(
                reader.read(4096), deadline - time.monotonic())
        except asyncio.TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        while len(data) >= 2:
            opcode, n = data[0] & 0x0F, data[1] & 0x7F
            if len(data) < 2 + n:
                break
            if opcode == 0x8:
                return struct.unpack(">H", data[2:4])[0] if n >= 2 else None
            data = data[2 + n:]
    return None


async def no_hello_swarm(d):
    """NO_HELLO upgraded connections that never send anything. Returns
    (connections open at the peak, RSS growth in KiB, seconds from the
    last open to the last close, close codes)."""
    base = d.rss_kib()
    conns = []
    for i in range(0, NO_HELLO, 100):
        conns += await asyncio.gather(*[ws_upgrade(d.ws_port)
                                        for _ in range(100)])
    t_opened = time.monotonic()
    opened = d.metric("proctord_connections_open")
    grown = d.rss_kib() - base
    codes = await asyncio.gather(*[close_code(r, HELLO_TIMEOUT_S + 10)
                                   for r, _ in conns])
    took = time.monotonic() - t_opened
    for _, w in conns:
        w.close()
    return opened, grown, took, codes


async def slow_http(d, n=40):
    """n clients that send part of a request and stall: each is cut off
    near server.http_timeout, and /healthz answers meanwhile."""
    async def one(partial):
        reader, writer = await asyncio.open_connection("127.0.0.1",
                                                       d.http_port)
        writer.write(partial)
        t = time.monotonic()
        try:
            await asyncio.wait_for(reader.read(), HTTP_TIMEOUT_S + 10)
        finally:
            writer.close()
        return time.monotonic() - t

    partials = [b"GET /heal", b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
                b"PUT /v1/learners/x/enrollment HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 1000\r\n\r\n0123456789"]
    tasks = [asyncio.ensure_future(one(partials[i % 3])) for i in range(n)]
    await asyncio.sleep(0.3)
    t = time.monotonic()
    status = await asyncio.to_thread(d.health)
    health_s = time.monotonic() - t
    return status, health_s, await asyncio.gather(*tasks)


async def oversized_body(d):
    """A PUT announcing 50 MiB and sending none of it is answered 413
    before the body comes. Returns (status line, seconds)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", d.http_port)
    writer.write(("PUT /v1/learners/big/enrollment HTTP/1.1\r\nHost: x\r\n"
                  "Authorization: Bearer %s\r\nContent-Type: image/jpeg\r\n"
                  "Content-Length: %d\r\n\r\n" %
                  (platform_token(), 50 << 20)).encode())
    t = time.monotonic()
    line = await asyncio.wait_for(reader.readline(), 5)
    took = time.monotonic() - t
    writer.close()
    return line, took


async def oversized_frame(d):
    """A frame header announcing 64 MiB after a Hello, with 1 KiB of it
    sent: 4413 comes without the rest."""
    c = await Learner.connect(d)
    await c.hello(learner_token(sub="big-frame"))
    transport = c.ws.transport
    mask = b"\x01\x02\x03\x04"
    transport.write(bytes([0x82, 0x80 | 127]) + struct.pack(">Q", 64 << 20) +
                    mask + bytes(1024))
    return await c.close_info(timeout=5)


async def flood(d):
    c = await Learner.connect(d)
    await c.hello(learner_token(sub="flooder"))
    try:
        for _ in range(2000):
            await c.heartbeat()
    except websockets.ConnectionClosed:
        pass
    return await c.close_info()


async def huge_snapshot(d):
    """The header-only giant, as an unsolicited snapshot of an enrolled
    learner: BAD_IMAGE, quickly, and no jump in memory."""
    c = await Learner.connect(d)
    await c.hello(learner_token(sub="giant"))
    await c.expect("challenge")
    base = d.rss_kib()
    t = time.monotonic()
    await c.snapshot(huge_jpeg(), 0)
    v = await c.expect("verdict")
    took = time.monotonic() - t
    grown = d.rss_kib() - base
    await c.close()
    return v, took, grown


async def wrong_learner(d, good_sid):
    """A learner's token aimed at another learner's data: refused on
    HTTP, and a resume of the good learner's session starts a new one
    without disturbing it."""
    tok = learner_token(sub="intruder")
    answers = [(await asyncio.to_thread(d.http_json, "GET", path, tok))[0]
               for path in ("/v1/learners/good/hours?course=course-1",
                            "/v1/sessions/" + good_sid,
                            "/v1/flags",
                            "/v1/evidence/" + "0" * 32)]
    answers.append((await asyncio.to_thread(
        d.http, "PUT", "/v1/learners/good/enrollment", tok, face(B[0]),
        {"Content-Type": "image/jpeg"}))[0])
    c = await Learner.connect(d)
    w = await c.hello(tok, resume=good_sid)
    await c.close()
    return answers, w.session_id


# ---------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------

def test_hostile_clients_leave_a_good_learner_alone(daemon_factory, redis):
    raise_fd_limit(2 * NO_HELLO + 512)
    d = daemon_factory(CONFIG)
    enrol(d, "good", A[0])
    enrol(d, "giant", B[0])

    async def scenario():
        c = await good_learner(d)
        good = Good(c)
        stop = asyncio.Event()
        runner = asyncio.ensure_future(good.run(stop))

        opened, grown, took, codes = await no_hello_swarm(d)
        http_status, health_s, slow = await slow_http(d)
        body_line, body_s = await oversized_body(d)
        frame_code, frame_errors = await oversized_frame(d)
        flood_code, flood_errors = await flood(d)
        verdict, giant_s, giant_grown = await huge_snapshot(d)
        refusals, intruder_sid = await wrong_learner(d, c.welcome.session_id)

        stop.set()
        await runner
        await c.snapshot(face(A[2]), 0)
        assert (await c.expect("verdict")).outcome == pb.MATCH
        st = await c.status()
        studied = good.last - good.t0
        await c.close()
        return locals()

    r = run(scenario(), timeout=300 if SANITIZED else 150)
    print("hostile: open=%d rss_growth_kib=%d closed_after_s=%.2f "
          "health_s=%.3f slow_max_s=%.2f body413_s=%.3f giant_s=%.3f "
          "giant_rss_kib=%d good_worst_s=%.3f good_acks=%d" % (
              r["opened"], r["grown"], r["took"], r["health_s"],
              max(r["slow"]), r["body_s"], r["giant_s"], r["giant_grown"],
              r["good"].worst, r["good"].count))

    # 2,000 silent connections: all were open at once, each cost little,
    # and each was closed with 4401 at the Hello deadline.
    assert r["opened"] >= NO_HELLO, r["opened"]
    if not SANITIZED:
        assert r["grown"] <= KIB_PER_CONNECTION * NO_HELLO, r["grown"]
    assert set(r["codes"]) == {4401}, set(r["codes"])
    assert r["took"] <= HELLO_TIMEOUT_S + 5, r["took"]
    wait_until(lambda: d.metric("proctord_connections_open") == 0, 10,
               what="every connection closed")

    # Slow HTTP clients are cut off by the timeout; others are served.
    assert r["http_status"] == 200 and r["health_s"] < 1.5, r["health_s"]
    assert max(r["slow"]) <= HTTP_TIMEOUT_S + 4, r["slow"]

    # Too large: refused before the payload arrives.
    assert b" 413 " in r["body_line"], r["body_line"]
    assert r["body_s"] < 2, r["body_s"]
    assert r["frame_code"] == 4413
    assert [e.code for e in r["frame_errors"]] == [4413]
    assert r["flood_code"] == 4429
    assert [e.code for e in r["flood_errors"]] == [4429]

    # The giant JPEG: refused from its header, without the 4 GiB.
    assert r["verdict"].outcome == pb.BAD_IMAGE, r["verdict"]
    assert r["giant_s"] < 3, r["giant_s"]
    if not SANITIZED:
        assert r["giant_grown"] < 64 * 1024, r["giant_grown"]

    # Another learner's data: 403 everywhere, and no hijacked session.
    assert r["refusals"] == [403] * 5, r["refusals"]
    assert r["intruder_sid"] != r["c"].welcome.session_id

    # The good learner: every heartbeat acked promptly, always ACTIVE,
    # never closed, and credited for the time it studied.
    good = r["good"]
    assert good.count >= 20
    assert good.worst < 1.5, good.worst
    assert good.states == {pb.ACTIVE}, good.states
    h = hours(d, "good")
    assert abs(h["credited_seconds"] - r["studied"]) <= 1.5, (
        h, r["studied"])
    assert r["st"].credited_s == h["credited_seconds"]
    assert d.alive()

    # Neither a token (a JWT's parts start "eyJ") nor an image went to
    # the log.
    with open(d.log_path, "rb") as f:
        log = f.read()
    assert b"eyJ" not in log
    assert b"\xff\xd8\xff" not in log and b"JFIF" not in log
    # A clean stop (under the sanitizers: no leak, no error on the way).
    assert d.stop() == 0


def test_oversized_http_body_is_413_before_it_is_sent(daemon_factory):
    """On its own: the 413 carries the refusal's status whatever the
    route, and the connection does not wait for the body."""
    d = daemon_factory(CONFIG)
    for path in ("/v1/learners/x/enrollment", "/v1/flags/" + "a" * 32 +
                 "/review"):
        with socket.create_connection(("127.0.0.1", d.http_port),
                                      timeout=5) as s:
            s.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: "
                       "Bearer %s\r\nContent-Length: %d\r\n\r\n" %
                       (path, supervisor_token(), 1 << 30)).encode())
            t = time.monotonic()
            line = s.recv(200).split(b"\r\n", 1)[0]
            assert b" 413 " in line, (path, line)
            assert time.monotonic() - t < 2
    status, body = d.http_json("GET", "/healthz")
    assert status == 200 and body["status"] == "ok"
