#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/.

Run from anywhere with /usr/bin/python3 (needs python3-protobuf, protoc
and libjpeg-turbo-progs); the JPEGs are made from ../shared/data, so pass
--shared when it lives elsewhere. The output is deterministic: tokens are
signed for the targets' fixed clock, JPEGs are re-encoded at a fixed
quality. Seeds found by fuzzing (regressions) live beside these under
names that do not start with "seed-" and are never rewritten.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.normpath(os.path.join(HERE, "..", ".."))
SECRET = b"fuzz-secret-0123456789abcdef"   # as in the targets
NOW = 1760000000                           # the targets' clock, seconds


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def token(claims, header=None, secret=SECRET):
    head = header or {"alg": "HS256", "typ": "JWT"}
    signing = (b64url(json.dumps(head).encode()) + b"." +
               b64url(json.dumps(claims).encode()))
    sig = hmac.new(secret, signing, hashlib.sha256).digest()
    return (signing + b"." + b64url(sig)).decode()


def learner(**extra):
    c = {"sub": "learner-1", "course": "course-1", "org": "org-1",
         "role": "manager", "iat": NOW, "exp": NOW + 3600}
    c.update(extra)
    return c


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def compile_proto():
    out = tempfile.mkdtemp(prefix="fuzz-pb-")
    subprocess.run(["protoc", "--python_out=" + out,
                    "-I" + os.path.join(SOURCE, "proto"),
                    os.path.join(SOURCE, "proto", "proctor.proto")],
                   check=True)
    sys.path.insert(0, out)
    import proctor_pb2
    return proctor_pb2


def jpeg(src, *cjpeg_args, scale="1/8", crop=None):
    """src decoded at scale and encoded again with cjpeg's arguments."""
    ppm = subprocess.run(["djpeg", "-scale", scale, "-ppm", src],
                         check=True, capture_output=True).stdout
    if crop:
        # The header of a binary PPM, then rows cut to the first crop[1].
        magic, w, h, maxv, rest = ppm.split(maxsplit=4)
        w, h = int(w), int(h)
        cw, ch = min(w, crop[0]), min(h, crop[1])
        rows = b"".join(rest[y * w * 3:y * w * 3 + cw * 3]
                        for y in range(ch))
        ppm = b"P6 %d %d 255\n" % (cw, ch) + rows
    return subprocess.run(["cjpeg", "-quality", "60"] + list(cjpeg_args),
                          input=ppm, check=True, capture_output=True).stdout


def seeds_jpeg(shared):
    faces = os.path.join(shared, "data", "faces", "named_color")
    obama = os.path.join(faces, "obama", "obama1.jpg")
    biden = os.path.join(faces, "biden", "biden2.jpg")
    out = {
        "baseline": jpeg(obama),
        "progressive": jpeg(obama, "-progressive"),
        "grey-restart": jpeg(biden, "-grayscale", "-restart", "1"),
        "444-optimised": jpeg(biden, "-sample", "1x1", "-optimize"),
        "arithmetic": jpeg(obama, "-arithmetic", crop=(48, 40)),
        "tiny": jpeg(obama, crop=(16, 16)),
    }
    out["truncated"] = out["baseline"][:len(out["baseline"]) // 2]
    for name, data in out.items():
        assert len(data) < 20 * 1024, (name, len(data))
        write("fuzz_jpeg", name + ".jpg", data)
    return out


def frames(*msgs):
    return b"".join(struct.pack("<H", len(m)) + m for m in msgs)


def seeds_frame(pb, jpegs):
    def msg(seq, **body):
        m = pb.ClientMessage(seq=seq)
        for k, v in body.items():
            getattr(m, k).CopyFrom(v)
        return m.SerializeToString()

    hello = msg(1, hello=pb.Hello(token="valid", client="fuzz"))
    hb = [msg(i + 2, heartbeat=pb.Heartbeat(
        client_time_ms=(NOW + 5 * i) * 1000, page_visible=True,
        window_focused=True, input_events=3, media_playing=i % 2 == 0,
        playback_rate=1.0, media_position_s=5.0 * i, lesson_id="lesson-1"))
        for i in range(4)]
    small = jpegs["tiny"]
    snap = msg(6, snapshot=pb.Snapshot(jpeg=small, captured_at_ms=0))
    burst = msg(7, snapshot=pb.Snapshot(
        challenge_id=1, captured_at_ms=NOW * 1000,
        frames=[small] * 4))
    write("fuzz_frame", "hello-heartbeats", frames(hello, *hb))
    write("fuzz_frame", "hello-snapshot-burst",
          frames(hello, snap, hb[0], burst, hb[1]))
    write("fuzz_frame", "signed-hello", frames(
        msg(1, hello=pb.Hello(token=token(learner(mode="exam")),
                              resume_session_id="0123456789abcdef")),
        hb[0], msg(3, bye=pb.Bye(reason="done"))))
    write("fuzz_frame", "heartbeat-first", frames(hb[0], hello))
    write("fuzz_frame", "hello-twice", frames(hello, hello))


def seeds_jwt():
    hs = {"alg": "HS256", "typ": "JWT"}
    raw = {
        "learner": token(learner()),
        "platform": token({"sub": "p", "scope": "platform", "iat": NOW,
                           "exp": NOW + 60}),
        "expired": token(learner(exp=NOW - 3600)),
        "alg-none": (b64url(b'{"alg":"none"}') + b"." +
                     b64url(json.dumps(learner()).encode()) + b".").decode(),
        "hs512": token(learner(), header={"alg": "HS512", "typ": "JWT"}),
        "wrong-secret": token(learner(), secret=b"another"),
    }
    for name, t in raw.items():
        write("fuzz_jwt", "raw-" + name, b"\x00" + t.encode())
    # Odd first byte: the harness signs header NUL payload itself.
    claims = {
        "learner": learner(),
        "supervisor": {"sub": "s", "scope": "supervisor", "org": "o",
                       "iat": NOW, "exp": NOW + 60},
        "bad-types": {"sub": 7, "course": ["x"], "org": None,
                      "role": "king", "exp": "soon", "scope": 1},
        "long-sub": learner(sub="x" * 300),
        "huge-exp": learner(exp=2 ** 63 + 5, iat=-2 ** 63),
        "float-exp": learner(exp=1.5e300),
    }
    for name, c in claims.items():
        write("fuzz_jwt", "signed-" + name,
              b"\x01" + json.dumps(hs).encode() + b"\x00" +
              json.dumps(c).encode())
    write("fuzz_jwt", "signed-no-signature",
          b"\x03" + json.dumps(learner()).encode())


def seeds_config():
    with open(os.path.join(SOURCE, "config", "proctord.conf"), "rb") as f:
        write("fuzz_config", "shipped.conf", f.read())
    write("fuzz_config", "units.conf",
          b"[server]\nmax_frame = 2MiB\nhello_timeout = 500ms\n"
          b"[auth]\njwt_secret = s\njwt_leeway = 2m\n"
          b"[policy]\nheartbeat_interval = 5s\ndaily_cap = 8h\n"
          b"evidence_ttl = 180d\ntimezone = Europe/Berlin\n"
          b"liveness_share = 0.5\n"
          b"[requirements]\nmanager = 10-40\nonline_share = 0.3\n")
    write("fuzz_config", "bad.conf",
          b"[auth]\njwt_secret=\n[policy]\nheartbeat_interval = -5s\n"
          b"daily_cap = 99999999999999999999h\n[nope]\nx\n")


def seeds_http(jpegs):
    def req(method, auth, target, ctype=b"", body=b""):
        return bytes([method, auth]) + target + b"\n" + ctype + b"\n" + body

    GET, PUT, POST, DELETE = 0, 1, 2, 3
    PLATFORM, SUPERVISOR, LEARNER, RAW = 1, 2, 3, 5
    out = {
        "enrol": req(PUT, PLATFORM, b"/v1/learners/learner-1/enrollment"
                     b"?org=org-1", b"image/jpeg", jpegs["tiny"]),
        "hours": req(GET, PLATFORM,
                     b"/v1/learners/learner-1/hours?course=course-1"),
        "events": req(GET, SUPERVISOR,
                      b"/v1/learners/learner-1/events?since=0&limit=10"),
        "erase": req(DELETE, PLATFORM, b"/v1/learners/learner%2D1"),
        "report": req(GET, PLATFORM, b"/v1/reports/hours?org=org-1"
                      b"&from=2025-01-01&to=2025-01-31&format=csv"),
        "flags": req(GET, SUPERVISOR, b"/v1/flags?status=open&kind=no_face"
                     b"&learner=learner-1&limit=5&cursor=abc"),
        "flag": req(GET, SUPERVISOR, b"/v1/flags/0123456789abcdef"),
        "review": req(POST, SUPERVISOR, b"/v1/flags/0123456789abcdef/review",
                      b"application/json",
                      b'{"decision":"confirm","note":"seen \\u00e9"}'),
        "review-bad": req(POST, SUPERVISOR, b"/v1/flags/x/review",
                          b"application/json",
                          b'{"decision":"dismiss","note":"a\\u0000b"}'),
        "evidence": req(GET, SUPERVISOR,
                        b"/v1/evidence/0123456789abcdef0123456789abcdef"),
        "session": req(GET, PLATFORM, b"/v1/sessions/0123456789abcdef"),
        "learner-token": req(GET, LEARNER, b"/v1/flags"),
        "raw-auth": req(GET, RAW, b"/v1/flags", b"Bearer a.b.c"),
        "method": req(POST, PLATFORM, b"/v1/learners/l/hours"),
        "console": req(GET, 0, b"/console/../../etc/passwd"),
    }
    # The raw-auth seed's extra line is the header itself.
    out["raw-auth"] = (bytes([GET, RAW]) + b"Bearer a.b.c\n/v1/flags\n\n")
    for name, data in out.items():
        write("fuzz_http", name, data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.path.join(SOURCE, "..", "shared"))
    args = ap.parse_args()
    pb = compile_proto()
    jpegs = seeds_jpeg(args.shared)
    seeds_frame(pb, jpegs)
    seeds_jwt()
    seeds_config()
    seeds_http(jpegs)


if __name__ == "__main__":
    main()
