"""The learner protocol through the real daemon: Welcome, acks, Status,
resume, take-over and every close code the network layer gives."""

import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import time

import pytest
import websockets

from conftest import (SECRET, Learner, b64url, learner_token, make_token, pb,
                      run)

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def frame_of_size(size, seq=2):
    """A valid Heartbeat ClientMessage of exactly size bytes."""
    n = max(0, size - 16)
    while True:
        data = pb.ClientMessage(seq=seq, heartbeat=pb.Heartbeat(
            page_visible=True, lesson_id="x" * n)).SerializeToString()
        if len(data) == size:
            return data
        n += size - len(data)
        assert n >= 0


def signed(header, claims, secret=SECRET, digest=hashlib.sha256):
    """A JWT with any header, signed with HMAC over digest."""
    signing = (b64url(json.dumps(header).encode()) + "." +
               b64url(json.dumps(claims).encode()))
    sig = hmac.new(secret.encode(), signing.encode(), digest).digest()
    return signing + "." + b64url(sig)


def learner_claims(**extra):
    now = int(time.time())
    claims = {"sub": "learner-1", "course": "course-1", "org": "org-1",
              "role": "manager", "iat": now, "exp": now + 3600}
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not None}


# ---------------------------------------------------------------------
# Welcome, acks and seq
# ---------------------------------------------------------------------

def test_welcome_and_acks(daemon):
    async def scenario():
        c = await Learner.connect(daemon)
        w = await c.hello()
        assert HEX32.match(w.session_id), w.session_id
        assert w.heartbeat_interval_ms == 10000
        assert c.last_ack == 1
        for _ in range(3):
            await c.heartbeat()
            st = await c.status()
            assert c.last_ack == c.seq
            assert st.state in (pb.UNVERIFIED, pb.ACTIVE)
        await c.close()
    run(scenario())


def test_session_ids_differ(daemon):
    async def scenario():
        ids = set()
        for i in range(5):
            c = await Learner.connect(daemon)
            w = await c.hello(learner_token(sub="distinct-%d" % i))
            assert HEX32.match(w.session_id), w.session_id
            ids.add(w.session_id)
            await c.close()
        assert len(ids) == 5
    run(scenario())


def test_every_heartbeat_gets_status_with_its_seq(daemon):
    async def scenario():
        c = await Learner.connect(daemon)
        await c.hello()
        # One at a time ...
        for _ in range(10):
            await c.heartbeat()
            await c.status()
            assert c.last_ack == c.seq
        # ... and pipelined: the replies come in order, one per message.
        sent = []
        for _ in range(30):
            await c.heartbeat(input_events=0, media_playing=True,
                              playback_rate=1.0)
            sent.append(c.seq)
        acks = []
        for _ in sent:
            await c.status()
            acks.append(c.last_ack)
        assert acks == sent
        assert await c.silent(0.5)
        await c.close()
    run(scenario())


def test_pipelined_hello_and_heartbeats(daemon, redis):
    """Heartbeats sent right behind the Hello, before the Welcome came
    (Redis is held for half a second, as a slow link would, so they are
    surely in before the Welcome): the Welcome still comes first, and
    each heartbeat gets a Status. ack_seq may already name the later
    one, since both were processed."""
    async def scenario():
        c = await Learner.connect(daemon)
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            await c.send(hello=pb.Hello(token=learner_token(),
                                        client="pytest"))
            await c.heartbeat()
            await c.heartbeat()
            await asyncio.sleep(0.5)
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        first = await c.recv()
        assert first.WhichOneof("body") == "welcome", first
        assert HEX32.match(first.welcome.session_id)
        acks = []
        while True:
            try:
                await c.status(timeout=1.5)
            except AssertionError:
                break
            acks.append(c.last_ack)
        assert len(acks) == 2, "Statuses for 2 heartbeats: acks %r" % acks
        assert acks == sorted(acks) and acks[-1] == 3, acks
        await c.close()
    run(scenario())


def test_repeated_or_older_seq_is_dropped(daemon):
    async def scenario():
        c = await Learner.connect(daemon)
        await c.hello()                       # seq 1
        hb = pb.Heartbeat(page_visible=True, window_focused=True)
        await c.send_seq(2, heartbeat=hb)
        await c.status()
        assert c.last_ack == 2
        before = daemon.metric("proctord_messages_duplicate_total")

        await c.send_seq(2, heartbeat=hb)     # repeated
        assert await c.silent(1.0), "a repeated seq got a reply"
        await c.send_seq(1, heartbeat=hb)     # older
        assert await c.silent(1.0), "an older seq got a reply"
        assert c.ws.open

        await c.send_seq(3, heartbeat=hb)
        await c.status()
        assert c.last_ack == 3
        assert daemon.metric("proctord_messages_duplicate_total") == \
            before + 2
        await c.close()
    run(scenario())


# ---------------------------------------------------------------------
# 4401: no Hello first, or a bad token
# ---------------------------------------------------------------------

def test_anything_before_hello_is_4401(daemon):
    async def scenario():
        c = await Learner.connect(daemon)
        await c.heartbeat()
        await c.expect_close(4401)
    run(scenario())


def test_bye_before_hello_is_4401(daemon):
    async def scenario():
        c = await Learner.connect(daemon)
        await c.send(bye=pb.Bye(reason="early"))
        await c.expect_close(4401)
    run(scenario())


def _hs384_token():
    return signed({"alg": "HS384", "typ": "JWT"}, learner_claims(),
                  digest=hashlib.sha384)


def _none_token_unsigned():
    head = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64url(json.dumps(learner_claims()).encode())
    return head + "." + body + "."


BAD_TOKENS = {
    "missing": lambda: "",
    "garbage": lambda: "not-a-jwt",
    "two_segments": lambda: ".".join(learner_token().split(".")[:2]),
    "wrong_secret": lambda: make_token(
        secret="some-other-secret-0123456789", sub="learner-1",
        course="course-1", org="org-1", role="manager"),
    "bad_signature": lambda: learner_token()[:-4] + "AAAA",
    "expired": lambda: learner_token(exp=int(time.time()) - 120),
    "alg_none_unsigned": _none_token_unsigned,
    "alg_none_signed": lambda: signed({"alg": "none", "typ": "JWT"},
                                      learner_claims()),
    "alg_hs384": _hs384_token,
    "hs384_header_hs256_sig": lambda: signed(
        {"alg": "HS384", "typ": "JWT"}, learner_claims()),
    "no_course": lambda: learner_token(course=None),
    "no_sub": lambda: learner_token(sub=None),
    "no_exp": lambda: signed({"alg": "HS256", "typ": "JWT"},
                             learner_claims(exp=None)),
    "unknown_role": lambda: learner_token(role="ceo"),
    "no_role": lambda: learner_token(role=None),
    "platform_token": lambda: make_token(sub="platform-1",
                                         scope="platform"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_bad_token_is_4401(daemon, kind):
    token = BAD_TOKENS[kind]()

    async def scenario():
        c = await Learner.connect(daemon)
        await c.send(hello=pb.Hello(token=token, client="pytest"))
        await c.expect_close(4401)
    run(scenario())


def test_token_within_leeway_is_accepted(daemon):
    """exp 10 s ago is inside the 30 s leeway: the boundary that the
    expired case above must not be confused with."""
    async def scenario():
        c = await Learner.connect(daemon)
        w = await c.hello(learner_token(exp=int(time.time()) - 10))
        assert HEX32.match(w.session_id)
        await c.heartbeat()
        await c.status()
        await c.close()
    run(scenario())


@pytest.mark.parametrize("role", ["manager", "safety_officer",
                                  "team_leader"])
def test_every_role_is_accepted(daemon, role):
    async def scenario():
        c = await Learner.connect(daemon)
        await c.hello(learner_token(sub="role-" + role, role=role))
        await c.close()
    run(scenario())


def test_hello_deadline(daemon_factory):
    d = daemon_factory({"server.hello_timeout": "1s"})

    async def scenario():
        t0 = time.monotonic()
        c = await Learner.connect(d)
        await c.expect_close(4401, timeout=5)
        took = time.monotonic() - t0
        assert 0.8 <= took <= 2.5, "closed after %.2fs" % took

        # Pings are no Hello: they do not hold the deadline off.
        t0 = time.monotonic()
        c = await Learner.connect(d)
        for _ in range(4):
            try:
                await c.ws.ping()
            except websockets.ConnectionClosed:
                break
            await asyncio.sleep(0.3)
        await c.expect_close(4401, timeout=5)
        took = time.monotonic() - t0
        assert took <= 2.5, "closed after %.2fs" % took

        # A Hello in time cancels the deadline.
        c = await Learner.connect(d)
        await c.hello()
        await asyncio.sleep(1.6)
        await c.heartbeat()
        await c.status()
        assert c.ws.open
        await c.close()
    run(scenario())


# ---------------------------------------------------------------------
# 4400: malformed
# ---------------------------------------------------------------------

GARBAGE = b"\xff" * 16            # a varint longer than ten bytes
HTTPISH = b"GET / HTTP/1.1\r\n\r\n"  # wire type 7: not protobuf


@pytest.mark.parametrize("data", [GARBAGE, HTTPISH,
                                  b"\x12\x05ab",       # length past end
                                  pb.ClientMessage(seq=9).SerializeToString(),
                                  b""],
                         ids=["varint", "httpish", "truncated", "no_body",
                              "empty"])
def test_malformed_after_hello_is_4400(daemon, data):
    async def scenario():
        c = await Learner.connect(daemon)
        await c.hello()
        await c.send_raw(data)
        await c.expect_close(4400)
    run(scenario())


def test_garbage_before_hello_is_refused(daemon):
    """Malformed and before Hello: either code fits, but it must be one
    of them, with a matching Error."""
    async def scenario():
        c = await Learner.connect(daemon)
        await c.send_raw(GARBAGE)
        code, errors = await c.close_info()
        assert code in (4400, 4401)
        assert [e.code for e in errors] == [code]
    run(scenario())


def test_text_frame_is_4400(daemon):
    async def scenario():
        c = await Learner.connect(daemon)
        await c.hello()
        await c.send_raw("a text frame")
        await c.expect_close(4400)
    run(scenario())


def test_text_frame_before_hello_is_refused(daemon):
    async def scenario():
        c = await Learner.connect(daemon)
        await c.send_raw("{}")
        code, errors = await c.close_info()
        assert code in (4400, 4401)
        assert [e.code for e in errors] == [code]
    run(scenario())


def test_second_hello_is_4400(daemon):
    async def scenario():
        c = await Learner.connect(daemon)
        await c.hello()
        await c.send(hello=pb.Hello(token=learner_token(), client="pytest"))
        await c.expect_close(4400)
    run(scenario())


# ---------------------------------------------------------------------
# 4413: too large
# ---------------------------------------------------------------------

def test_frame_over_max_frame_is_4413(daemon_factory):
    d = daemon_factory({"server.max_frame": "64KiB"})

    async def scenario():
        # Exactly the limit passes ...
        c = await Learner.connect(d)
        await c.hello()
        await c.send_raw(frame_of_size(64 * 1024, seq=2))
        await c.status()
        assert c.last_ack == 2
        # ... 65 KiB does not.
        await c.send_raw(frame_of_size(65 * 1024, seq=3))
        await c.expect_close(4413)
    run(scenario())


def test_frame_over_max_frame_before_hello_is_4413(daemon_factory):
    d = daemon_factory({"server.max_frame": "64KiB"})

    async def scenario():
        c = await Learner.connect(d)
        await c.send_raw(os.urandom(65 * 1024))
        await c.expect_close(4413)
    run(scenario())


def test_default_max_frame_is_2mib(daemon):
    async def scenario():
        limit = 2 * 1024 * 1024
        c = await Learner.connect(daemon)
        await c.hello()
        await c.send_raw(frame_of_size(limit, seq=2))
        await c.status(timeout=20)
        assert c.last_ack == 2
        await c.send_raw(frame_of_size(limit + 1, seq=3))
        await c.expect_close(4413, timeout=20)
    run(scenario())


def test_fragmented_message_over_max_frame_is_4413(daemon_factory):
    """The limit is on the message, not on each WebSocket fragment."""
    d = daemon_factory({"server.max_frame": "64KiB"})

    async def scenario():
        c = await Learner.connect(d)
        await c.hello()
        data = frame_of_size(65 * 1024, seq=2)
        await c.send_raw([data[i:i + 8192] for i in
                          range(0, len(data), 8192)])
        await c.expect_close(4413)
    run(scenario())


# ---------------------------------------------------------------------
# 4429: too fast
# ---------------------------------------------------------------------

def test_flood_is_4429(daemon_factory):
    d = daemon_factory({"server.msg_rate": "5", "server.msg_burst": "10"})

    async def scenario():
        c = await Learner.connect(d)
        await c.hello()
        try:
            for _ in range(50):
                await c.heartbeat()
        except websockets.ConnectionClosed:
            pass
        code, errors = await c.close_info()
        assert code == 4429
        assert [e.code for e in errors] == [4429]
    run(scenario())


def test_under_the_rate_is_not_closed(daemon_factory):
    d = daemon_factory({"server.msg_rate": "50", "server.msg_burst": "5"})

    async def scenario():
        c = await Learner.connect(d)
        await c.hello()
        for _ in range(40):               # 25/s for 1.6 s
            await c.heartbeat()
            await c.status()
            assert c.last_ack == c.seq
            await asyncio.sleep(0.04)
        assert c.ws.open
        await c.close()
    run(scenario())


# ---------------------------------------------------------------------
# The handshake
# ---------------------------------------------------------------------

@pytest.mark.parametrize("path,subprotocol", [
    ("/other", "proctor.v1"),
    ("/", "proctor.v1"),
    ("/v1/learn/x", "proctor.v1"),
    ("/v1/learn", None),
    ("/v1/learn", "proctor.v2"),
], ids=["other_path", "root", "longer_path", "no_subprotocol",
        "other_subprotocol"])
def test_handshake_refused(daemon, path, subprotocol):
    async def scenario():
        with pytest.raises(websockets.InvalidHandshake):
            c = await asyncio.wait_for(Learner.connect(
                daemon, subprotocol=subprotocol, path=path), 10)
            # Accepted after all: show what was negotiated.
            await c.close()
        # The daemon is unharmed.
        c = await Learner.connect(daemon)
        assert c.ws.subprotocol == "proctor.v1"
        await c.hello()
        await c.close()
    run(scenario())


# ---------------------------------------------------------------------
# Bye, take-over and resume
# ---------------------------------------------------------------------

def test_bye_closes_with_1000(daemon):
    async def scenario():
        c = await Learner.connect(daemon)
        await c.hello()
        await c.heartbeat()
        await c.status()
        await c.send(bye=pb.Bye(reason="done"))
        await c.expect_close(1000, error=False)
    run(scenario())


def test_second_login_takes_over(daemon):
    async def scenario():
        token = learner_token(sub="taken-over")
        first = await Learner.connect(daemon)
        w1 = await first.hello(token)
        other = await Learner.connect(daemon)
        await other.hello(learner_token(sub="bystander"))

        second = await Learner.connect(daemon)
        w2 = await second.hello(token)
        assert w2.session_id != w1.session_id
        await first.expect_close(4409)

        for _ in range(3):
            await second.heartbeat()
            await second.status()
            assert second.last_ack == second.seq
        # Another learner is not touched.
        await other.heartbeat()
        await other.status()
        await second.close()
        await other.close()
    run(scenario())


def test_resume_returns_the_same_session(daemon):
    async def scenario():
        token = learner_token(sub="resumer")
        c = await Learner.connect(daemon)
        sid = (await c.hello(token)).session_id
        await c.heartbeat()
        await c.status()
        await c.close()
        await asyncio.sleep(0.2)

        c = await Learner.connect(daemon)
        assert (await c.hello(token, resume=sid)).session_id == sid
        await c.heartbeat()
        await c.status()
        await c.close()
        await asyncio.sleep(0.2)

        # Twice in a row works too.
        c = await Learner.connect(daemon)
        assert (await c.hello(token, resume=sid)).session_id == sid
        await c.close()
    run(scenario())


@pytest.mark.parametrize("resume", [
    os.urandom(16).hex(), "not-a-session-id", "ABCDEF" * 5 + "AB",
    "0" * 33, "'; FLUSHALL; --"])
def test_unknown_resume_id_starts_a_new_session(daemon, resume):
    async def scenario():
        token = learner_token(sub="unknown-resume")
        c = await Learner.connect(daemon)
        old = (await c.hello(token)).session_id
        await c.close()
        c = await Learner.connect(daemon)
        sid = (await c.hello(token, resume=resume)).session_id
        assert HEX32.match(sid)
        assert sid not in (resume, old)
        await c.heartbeat()
        await c.status()
        await c.close()
    run(scenario())


def test_resume_of_another_learners_session_is_refused(daemon):
    async def scenario():
        a = await Learner.connect(daemon)
        sid_a = (await a.hello(learner_token(sub="owner"))).session_id
        await a.close()
        await asyncio.sleep(0.2)

        b = await Learner.connect(daemon)
        sid_b = (await b.hello(learner_token(sub="thief"),
                               resume=sid_a)).session_id
        assert sid_b != sid_a
        assert HEX32.match(sid_b)
        await b.close()

        # The owner can still resume it.
        a = await Learner.connect(daemon)
        assert (await a.hello(learner_token(sub="owner"),
                              resume=sid_a)).session_id == sid_a
        await a.close()
    run(scenario())


def test_resume_while_the_old_connection_is_open(daemon):
    """A page reload that beats the old socket's end: the new connection
    takes over and resumes the same session."""
    async def scenario():
        token = learner_token(sub="reloader")
        old = await Learner.connect(daemon)
        sid = (await old.hello(token)).session_id
        new = await Learner.connect(daemon)
        assert (await new.hello(token, resume=sid)).session_id == sid
        await old.expect_close(4409)
        await new.heartbeat()
        await new.status()
        await new.close()
    run(scenario())


def test_resume_after_the_window_starts_a_new_session(daemon_factory):
    d = daemon_factory({"policy.resume_window": "1s"})

    async def scenario():
        token = learner_token(sub="late-resumer")
        c = await Learner.connect(d)
        sid = (await c.hello(token)).session_id
        await c.close()
        await asyncio.sleep(2.0)
        c = await Learner.connect(d)
        assert (await c.hello(token, resume=sid)).session_id != sid
        await c.close()
    run(scenario())


def test_resume_across_a_daemon_restart(daemon_factory):
    d = daemon_factory()

    async def first():
        c = await Learner.connect(d)
        sid = (await c.hello(learner_token(sub="restarter"))).session_id
        await c.heartbeat()
        await c.status()
        await c.close()
        return sid

    sid = run(first())
    time.sleep(0.2)
    assert d.stop() == 0
    d.start()

    async def second():
        c = await Learner.connect(d)
        got = (await c.hello(learner_token(sub="restarter"),
                             resume=sid)).session_id
        assert got == sid
        await c.close()
    run(second())
