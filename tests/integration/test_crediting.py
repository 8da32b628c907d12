"""Crediting end to end: real photographs through the real daemon, a real
Redis, the HTTP API. Intervals are shortened so a scenario takes seconds;
the rules are the same as with the defaults."""

import asyncio
import os
import random
import signal
import subprocess
import tempfile
import time

from conftest import (Learner, face, learner_token, pb, platform_token, run,
                      supervisor_token)

FAST = {
    "policy.heartbeat_interval": "500ms",
    "policy.heartbeat_grace": "2s",
    "policy.check_interval": "1h",
    "policy.challenge_deadline": "20s",
    "policy.idle_after": "2s",
    "policy.absent_after": "3s",
    "policy.resume_window": "1m",
    # No liveness challenges: these scenarios answer with one photo (the
    # bursts of action challenges are tested in test_liveness.py).
    "policy.liveness_share": "0",
}

A = ["lfw/Colin_Powell/Colin_Powell_%04d.jpg" % i for i in range(1, 11)]
B = ["lfw/Hugo_Chavez/Hugo_Chavez_%04d.jpg" % i for i in range(1, 11)]


def enrol(daemon, learner, photo, org="org-1"):
    status, body = daemon.http_json(
        "PUT", "/v1/learners/%s/enrollment?org=%s" % (learner, org),
        platform_token(), face(photo), {"Content-Type": "image/jpeg"})
    assert status == 201, body
    return body


def hours(daemon, learner, course="course-1"):
    status, body = daemon.http_json(
        "GET", "/v1/learners/%s/hours?course=%s" % (learner, course),
        platform_token())
    assert status == 200, body
    return body


def blank_jpeg():
    """A grey JPEG with no face in it."""
    d = tempfile.mkdtemp()
    ppm = os.path.join(d, "blank.ppm")
    rng = random.Random(7)
    with open(ppm, "wb") as f:
        f.write(b"P6 320 240 255\n")
        f.write(bytes(120 + rng.randrange(16) for _ in range(320 * 240 * 3)))
    out = subprocess.run(["cjpeg", "-quality", "85", ppm], check=True,
                         capture_output=True)
    return out.stdout


async def verified(daemon, learner="learner-1", photo=A[1], **claims):
    """Connects, answers the first challenge with photo, expects MATCH."""
    c = await Learner.connect(daemon)
    await c.hello(learner_token(sub=learner, **claims))
    ch = await c.expect("challenge")
    await c.snapshot(face(photo), ch.challenge_id)
    v = await c.expect("verdict")
    assert v.outcome == pb.MATCH, v
    assert v.challenge_id == ch.challenge_id
    return c


async def study(c, seconds, **hb):
    """Heartbeats every 0.25 s for seconds; returns the wall time between
    the first and the last, which is what can be credited."""
    t0 = time.time()
    last = t0
    while time.time() - t0 < seconds:
        last = time.time()
        await c.heartbeat(**hb)
        await c.expect("status")
        await asyncio.sleep(0.25)
    return last - t0


async def check(c, photo, outcome):
    await c.snapshot(face(photo) if isinstance(photo, str) else photo, 0)
    v = await c.expect("verdict")
    assert v.outcome == outcome, v
    st = await c.expect("status")
    return v, st


def test_study_is_credited_within_a_second(daemon_factory):
    d = daemon_factory(FAST)
    enrol(d, "learner-1", A[0])

    async def scenario():
        c = await verified(d)
        spent = await study(c, 4.0)
        _, st = await check(c, A[2], pb.MATCH)
        h = hours(d, "learner-1")
        assert abs(h["credited_seconds"] - spent) <= 1.0, (h, spent)
        assert st.credited_s == h["credited_seconds"]
        assert h["days"] and h["days"][0]["credited_seconds"] == \
            h["credited_seconds"]
        await c.close()
    run(scenario())


def test_idle_learner_is_not_credited(daemon_factory):
    d = daemon_factory(FAST)
    enrol(d, "learner-1", A[0])

    async def scenario():
        c = await verified(d)
        await study(c, 1.0)
        # No input and no media: idle after idle_after (2 s).
        await study(c, 5.0, input_events=0)
        _, st = await check(c, A[2], pb.MATCH)
        assert st.state == pb.IDLE
        h = hours(d, "learner-1")
        assert 2 <= h["credited_seconds"] <= 4, h
        await c.close()
    run(scenario())


def test_hidden_page_and_playing_media(daemon_factory):
    d = daemon_factory(FAST)
    enrol(d, "learner-1", A[0])

    async def scenario():
        c = await verified(d)
        await study(c, 2.0, page_visible=False)
        _, st = await check(c, A[2], pb.MATCH)
        assert hours(d, "learner-1")["credited_seconds"] == 0
        # A lesson video playing in step with the clock counts without
        # input; one playing at 4x does not.
        t0 = time.time()
        while time.time() - t0 < 4.0:
            await c.heartbeat(input_events=0, media_playing=True,
                              playback_rate=1.0,
                              media_position_s=time.time() - t0)
            await c.expect("status")
            await asyncio.sleep(0.25)
        await check(c, A[3], pb.MATCH)
        first = hours(d, "learner-1")["credited_seconds"]
        assert first >= 3, first
        await asyncio.sleep(2.5)
        t0 = time.time()
        while time.time() - t0 < 3.0:
            await c.heartbeat(input_events=0, media_playing=True,
                              playback_rate=4.0,
                              media_position_s=4 * (time.time() - t0))
            await c.expect("status")
            await asyncio.sleep(0.25)
        await check(c, A[4], pb.MATCH)
        assert hours(d, "learner-1")["credited_seconds"] <= first + 1
        await c.close()
    run(scenario())


def test_stranger_withholds_and_dismissal_gives_back(daemon_factory):
    d = daemon_factory(FAST)
    enrol(d, "learner-1", A[0])

    async def scenario():
        c = await verified(d)
        await study(c, 3.0)
        stranger = face(B[0])
        v, st = await check(c, stranger, pb.MISMATCH)
        assert st.provisional_s == 0
        assert hours(d, "learner-1")["credited_seconds"] == 0
        status, body = d.http_json("GET", "/v1/flags?status=open",
                                   supervisor_token())
        assert status == 200, body
        flags = [f for f in body["flags"] if f["learner_id"] == "learner-1"]
        assert len(flags) == 1 and flags[0]["kind"] == "face_mismatch"
        flag = flags[0]
        assert flag["withheld_seconds"] >= 2
        assert len(flag["evidence"]) == 1
        status, _, jpeg = d.http("GET", "/v1/evidence/" + flag["evidence"][0],
                                 supervisor_token())
        assert status == 200 and jpeg == stranger
        status, _, _ = d.http("GET", "/v1/evidence/" + flag["evidence"][0],
                              platform_token())
        assert status == 403

        status, body = d.http_json(
            "POST", "/v1/flags/%s/review" % flag["id"], supervisor_token(),
            b'{"decision": "dismiss", "note": "same person, bad light"}',
            {"Content-Type": "application/json"})
        assert status == 200, body
        assert body["status"] == "dismissed"
        h = hours(d, "learner-1")
        assert h["credited_seconds"] == flag["withheld_seconds"]
        # The session goes on and challenges keep coming.
        await c.heartbeat()
        await c.expect("status")
        await c.close()
    run(scenario())


def test_other_outcomes(daemon_factory):
    d = daemon_factory(FAST)
    enrol(d, "learner-1", A[0])

    async def scenario():
        c = await verified(d)
        v, _ = await check(c, blank_jpeg(), pb.NO_FACE)
        assert v.faces == 0
        v, _ = await check(c, "named_color/_multi/two_people.jpg",
                           pb.MULTIPLE_FACES)
        assert v.faces >= 2
        await check(c, b"not a jpeg at all", pb.BAD_IMAGE)
        await check(c, face(A[3])[:400], pb.BAD_IMAGE)
        await check(c, A[4], pb.MATCH)
        await check(c, A[4], pb.REPLAYED)
        # An answer to a challenge that was never sent is late.
        await c.snapshot(face(A[5]), 12345)
        v = await c.expect("verdict")
        assert v.outcome == pb.LATE and v.challenge_id == 12345
        await c.close()

        status, body = d.http_json("GET", "/v1/flags?status=open",
                                   supervisor_token())
        kinds = sorted(f["kind"] for f in body["flags"])
        assert "multiple_faces" in kinds and "replayed_image" in kinds, kinds
    run(scenario())


def test_not_enrolled(daemon_factory):
    d = daemon_factory(FAST)

    async def scenario():
        c = await Learner.connect(d)
        await c.hello(learner_token(sub="nobody"))
        ch = await c.expect("challenge")
        await c.snapshot(face(A[0]), ch.challenge_id)
        v = await c.expect("verdict")
        assert v.outcome == pb.NOT_ENROLLED
        await c.close()
    run(scenario())


def test_daily_cap_holds(daemon_factory):
    d = daemon_factory(dict(FAST, **{"policy.daily_cap": "2s"}))
    enrol(d, "learner-1", A[0])

    async def scenario():
        c = await verified(d)
        await study(c, 4.0)
        _, st = await check(c, A[2], pb.MATCH)
        assert hours(d, "learner-1")["credited_seconds"] == 2
        await study(c, 1.0)
        _, st = await check(c, A[3], pb.MATCH)
        assert st.state == pb.SUSPENDED
        assert hours(d, "learner-1")["credited_seconds"] == 2
        await c.close()
    run(scenario())


def test_second_login_takes_over(daemon_factory):
    d = daemon_factory(FAST)
    enrol(d, "learner-1", A[0])

    async def scenario():
        first = await verified(d)
        await study(first, 1.0)
        second = await Learner.connect(d)
        await second.hello(learner_token())
        assert await first.closed_code() == 4409
        await second.heartbeat()
        await second.expect("status")
        await second.close()
        status, body = d.http_json("GET", "/v1/flags?status=open",
                                   supervisor_token())
        assert any(f["kind"] == "concurrent_session" for f in body["flags"])
    run(scenario())


def test_sigkill_and_restart_credit_nothing_twice(daemon_factory, redis):
    d = daemon_factory(FAST)
    enrol(d, "learner-1", A[0])

    async def before():
        c = await verified(d)
        await study(c, 3.0)
        _, st = await check(c, A[2], pb.MATCH)
        return c.welcome.session_id, st.credited_s

    sid, credited = run(before())
    assert credited >= 2
    d.stop(signal.SIGKILL)
    total = int(redis.cli("HGET", "pd:{learner-1}:course:course-1",
                          "total_ms"))
    d.start()

    async def after():
        c = await Learner.connect(d)
        w = await c.hello(resume=sid)
        assert w.session_id == sid
        assert w.credited_s == credited
        ch = await c.expect("challenge")
        await c.snapshot(face(A[3]), ch.challenge_id)
        v = await c.expect("verdict")
        assert v.outcome == pb.MATCH
        await c.close()
    run(after())
    assert int(redis.cli("HGET", "pd:{learner-1}:course:course-1",
                         "total_ms")) == total
    # The ledger's stream and totals agree.
    entries = redis.cli("XRANGE", "pd:{learner-1}:stream", "-", "+")
    words = entries.split("\n")
    credited_ms = sum(int(words[i + 1]) for i, w in enumerate(words)
                      if w == "credited_ms")
    assert credited_ms == total


def test_face_of_another_enrolled_learner_is_shared_face(daemon_factory):
    d = daemon_factory(FAST)
    enrol(d, "learner-1", A[0])
    enrol(d, "learner-2", B[0])

    async def scenario():
        c = await verified(d)
        await study(c, 1.5)
        await check(c, B[1], pb.MISMATCH)
        await c.close()
        status, body = d.http_json("GET", "/v1/flags?status=open",
                                   supervisor_token())
        kinds = [f["kind"] for f in body["flags"]
                 if f["learner_id"] == "learner-1"]
        assert kinds == ["shared_face"], kinds
    run(scenario())


def test_missed_challenge_flags(daemon_factory):
    d = daemon_factory(dict(FAST, **{"policy.challenge_deadline": "2s",
                                     "policy.check_interval": "3s"}))
    enrol(d, "learner-1", A[0])

    async def scenario():
        c = await verified(d)
        # Heartbeats only: the next challenge goes unanswered.
        ch = None
        t0 = time.time()
        while time.time() - t0 < 15 and ch is None:
            await c.heartbeat()
            msg = await c.recv()
            if msg.WhichOneof("body") == "challenge":
                ch = msg.challenge
            await asyncio.sleep(0.2)
        assert ch is not None
        await study(c, 3.0)
        # Answering after the deadline is late and commits nothing.
        await c.snapshot(face(A[2]), ch.challenge_id)
        v = await c.expect("verdict")
        assert v.outcome == pb.LATE
        await c.close()
        status, body = d.http_json("GET", "/v1/flags?status=open&kind="
                                   "challenge_missed", supervisor_token())
        kinds = [f["kind"] for f in body["flags"]]
        assert kinds and set(kinds) == {"challenge_missed"}, kinds
        assert hours(d, "learner-1")["credited_seconds"] == 0
    run(scenario())


def test_absence_opens_no_face_flag_with_evidence(daemon_factory):
    d = daemon_factory(FAST)
    enrol(d, "learner-1", A[0])

    async def scenario():
        c = await verified(d)
        await study(c, 2.0)
        empty = blank_jpeg()
        _, st = await check(c, empty, pb.NO_FACE)
        assert st.state == pb.UNVERIFIED
        # Nothing accrues without a face; past absent_after (3 s) the
        # stretch is withheld and flagged, with the empty frame as proof.
        await study(c, 4.5)
        await c.close()
        status, body = d.http_json("GET", "/v1/flags?kind=no_face",
                                   supervisor_token())
        flags = body["flags"]
        assert len(flags) == 1, flags
        assert flags[0]["withheld_seconds"] >= 1
        status, _, jpeg = d.http("GET", "/v1/evidence/" +
                                 flags[0]["evidence"][0], supervisor_token())
        assert status == 200 and jpeg == empty
        assert hours(d, "learner-1")["credited_seconds"] == 0
    run(scenario())


def test_network_drop_keeps_unconfirmed_time_for_a_resume(daemon_factory):
    d = daemon_factory(FAST)
    enrol(d, "learner-1", A[0])

    async def scenario():
        c = await verified(d)
        spent = await study(c, 3.0)
        sid = c.welcome.session_id
        await c.ws.close()              # the network drops
        await asyncio.sleep(0.5)
        c = await Learner.connect(d)
        w = await c.hello(learner_token(), resume=sid)
        assert w.session_id == sid
        ch = await c.expect("challenge")
        await c.snapshot(face(A[2]), ch.challenge_id)
        v = await c.expect("verdict")
        assert v.outcome == pb.MATCH
        st = await c.expect("status")
        h = hours(d, "learner-1")
        assert abs(h["credited_seconds"] - spent) <= 1.0, (h, spent)
        assert st.credited_s == h["credited_seconds"]
        await c.close()
    run(scenario())


def test_live_session_stays_resumable_past_its_window(daemon_factory):
    """The resume key of a live session is refreshed while it lives, so a
    session older than resume_window is still resumed after a crash."""
    d = daemon_factory(dict(FAST, **{"policy.resume_window": "4s"}))

    async def first():
        c = await Learner.connect(d)
        w = await c.hello(learner_token(sub="long-1"))
        t0 = time.time()
        while time.time() - t0 < 6.0:
            await c.heartbeat()
            await c.expect("status")
            await asyncio.sleep(0.5)
        return w.session_id

    sid = run(first())
    d.stop(signal.SIGKILL)
    d.start()

    async def again():
        c = await Learner.connect(d)
        w = await c.hello(learner_token(sub="long-1"), resume=sid)
        assert w.session_id == sid
        await c.close()
    run(again())
