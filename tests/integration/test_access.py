"""Who may read what: flags and evidence only with the supervisor scope,
whatever else a client holds (a platform token, the learner's own token,
none); evidence and flag ids that cannot be guessed from one another; no
way out of /console/ into the API; logs with no token and no image; HEAD
answered like GET. Real flags, opened by a stranger's face through the
real daemon, are what is asked for."""

import asyncio
import json
import socket

from conftest import (SECRET, Learner, face, learner_token, pb,
                      platform_token, run, supervisor_token)
from test_crediting import A, B, FAST, enrol

LEARNER = "access-1"


async def strangers(d, token, photos):
    """A verified session whose next checks show strangers: one
    face_mismatch flag with its evidence per photo."""
    c = await Learner.connect(d)
    await c.hello(token)
    ch = await c.expect("challenge")
    await c.snapshot(face(A[1]), ch.challenge_id)
    assert (await c.expect("verdict")).outcome == pb.MATCH
    for photo in photos:
        for _ in range(3):
            await c.heartbeat()
            await c.status()
            await asyncio.sleep(0.2)
        await c.snapshot(face(photo), 0)
        assert (await c.expect("verdict")).outcome == pb.MISMATCH
    await c.close()


def neighbours(hex_id):
    n = int(hex_id, 16)
    return ["%032x" % ((n + k) % (1 << 128)) for k in (-1, 1)]


def differing(a, b):
    return sum(x != y for x, y in zip(a, b))


def http_status(d, method, path, token, body=None):
    return d.http(method, path, token, body,
                  {"Content-Type": "application/json"} if body else None)[0]


def test_flags_and_evidence_need_the_supervisor_scope(daemon_factory):
    d = daemon_factory(FAST)
    enrol(d, LEARNER, A[0])
    own = learner_token(sub=LEARNER)
    run(strangers(d, own, [B[0], B[1], B[2]]))

    status, body = d.http_json("GET", "/v1/flags", supervisor_token())
    assert status == 200
    flags = [f for f in body["flags"] if f["learner_id"] == LEARNER]
    assert len(flags) == 3, flags
    flag = flags[0]
    evidence = [e for f in flags for e in f["evidence"]]
    assert len(evidence) == 3

    review = json.dumps({"decision": "dismiss", "note": "x"}).encode()
    paths = [("GET", "/v1/flags", None),
             ("GET", "/v1/flags?status=open", None),
             ("GET", "/v1/flags/" + flag["id"], None),
             ("GET", "/v1/evidence/" + evidence[0], None),
             ("POST", "/v1/flags/%s/review" % flag["id"], review)]
    for method, path, body in paths:
        # The learner's own token, about its own flags, is refused too.
        for token, want in ((None, 401), (own, 403),
                            (platform_token(), 403),
                            (learner_token(sub="other"), 403)):
            got = http_status(d, method, path, token, body)
            assert got == want, (method, path, want, got)

    # With the scope: the evidence is the stranger's JPEG, byte for byte.
    status, _, jpeg = d.http("GET", "/v1/evidence/" + evidence[0],
                             supervisor_token())
    assert status == 200 and jpeg in (face(B[0]), face(B[1]), face(B[2]))
    # Nothing was reviewed by the refused attempts.
    status, body = d.http_json("GET", "/v1/flags/" + flag["id"],
                               supervisor_token())
    assert body["status"] == "open"


def test_evidence_and_flag_ids_cannot_be_guessed(daemon_factory):
    d = daemon_factory(FAST)
    enrol(d, LEARNER, A[0])
    run(strangers(d, learner_token(sub=LEARNER), [B[0], B[1], B[2], B[3]]))
    _, body = d.http_json("GET", "/v1/flags", supervisor_token())
    flags = [f for f in body["flags"] if f["learner_id"] == LEARNER]
    evidence = [e for f in flags for e in f["evidence"]]
    ids = evidence + [f["id"] for f in flags]
    assert len(ids) == 8 and len(set(ids)) == 8
    for i in ids:
        assert len(i) == 32 and all(ch in "0123456789abcdef" for ch in i)
    # 128 random bits: two ids share about 2 of 32 hex digits by chance;
    # ids made from a counter or a clock would share most.
    for a in ids:
        for b in ids:
            if a != b:
                assert differing(a, b) >= 20, (a, b)
    # The neighbours of a real id are nothing.
    for e in evidence:
        for guess in neighbours(e):
            assert http_status(d, "GET", "/v1/evidence/" + guess,
                               supervisor_token()) == 404
    for f in flags:
        for guess in neighbours(f["id"]):
            assert http_status(d, "GET", "/v1/flags/" + guess,
                               supervisor_token()) == 404


def raw(d, request):
    with socket.create_connection(("127.0.0.1", d.http_port),
                                  timeout=10) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk


def test_no_path_from_the_console_into_the_api(daemon_factory):
    d = daemon_factory(FAST)
    enrol(d, LEARNER, A[0])
    run(strangers(d, learner_token(sub=LEARNER), [B[0]]))
    for path in ("/console/../v1/flags", "/console/%2e%2e/v1/flags",
                 "/console/..%2fv1%2fflags", "/console/../v1/evidence/" +
                 "0" * 32, "/console/%2e%2e/%2e%2e/v1/flags",
                 "/console/../metrics"):
        reply = raw(d, ("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close"
                        "\r\n\r\n" % path).encode())
        status = int(reply.split(b" ", 2)[1])
        assert status in (400, 403, 404), (path, reply[:200])
        assert b'"flags"' not in reply and b"proctord_" not in reply, path


def test_logs_hold_no_token_and_no_image(daemon_factory):
    d = daemon_factory(FAST)
    enrol(d, LEARNER, A[0])
    tokens = [learner_token(sub=LEARNER), platform_token(),
              supervisor_token(), learner_token(sub="x", exp=1)]
    run(strangers(d, tokens[0], [B[0]]))
    _, body = d.http_json("GET", "/v1/flags", tokens[2])
    d.http("GET", "/v1/evidence/" + body["flags"][0]["evidence"][0],
           tokens[2])
    d.http("GET", "/v1/learners/%s/hours?course=course-1" % LEARNER,
           tokens[1])
    d.http("GET", "/v1/flags", tokens[3])               # expired: 401
    d.http("GET", "/v1/flags", tokens[0][:-4] + "AAAA")  # bad signature

    async def bad_hellos():
        for tok in (tokens[3], "not.a.token", tokens[0] + "x"):
            c = await Learner.connect(d)
            await c.send(hello=pb.Hello(token=tok, client="pytest"))
            await c.close_info()
    run(bad_hellos())

    with open(d.log_path, "rb") as f:
        log = f.read()
    assert log, "the daemon logged nothing"
    for tok in tokens:
        for part in tok.split("."):
            assert part.encode() not in log, part
    assert SECRET.encode() not in log
    assert b"eyJ" not in log                  # any JWT header or body
    assert b"\xff\xd8\xff" not in log and b"JFIF" not in log
    assert b"Bearer" not in log


def head_then_get(d, path):
    """HEAD then GET on one kept-alive connection: (HEAD status, its
    Content-Length, GET status, GET body). A HEAD that sent a body would
    put the GET's reply out of step."""
    with socket.create_connection(("127.0.0.1", d.http_port),
                                  timeout=10) as s:
        s.sendall(("HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n"
                   "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                   % (path, path)).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert rest.startswith(b"HTTP/1.1 "), rest[:80]
    get_head, _, get_body = rest.partition(b"\r\n\r\n")
    length = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
              if line.lower().startswith(b"content-length:")]
    return (int(head.split(b" ", 2)[1]), length[0] if length else None,
            int(get_head.split(b" ", 2)[1]), get_body)


def test_head_answers_like_get_without_a_body(daemon, redis):
    status, length, get_status, body = head_then_get(daemon, "/healthz")
    assert (status, get_status) == (200, 200)
    assert length == len(body) and json.loads(body)["status"] == "ok"

    status, length, get_status, body = head_then_get(daemon, "/metrics")
    assert (status, get_status) == (200, 200)
    assert length and body.startswith(b"# HELP")
    # Counters move between the two; the size stays about the same.
    assert abs(length - len(body)) < 64

    redis.kill()
    assert head_then_get(daemon, "/healthz")[:3:2] == (503, 503)
