"""The platform and supervisor HTTP API through the real daemon: enrolment
with real photographs, credited hours, flags and their review, evidence
downloads and session timelines. Flags, evidence and sessions are written
into Redis directly, following the key layout of daemon/ledger.h, so these
tests do not depend on a learner session producing them."""

import asyncio
import json
import socket
import threading
import time

from conftest import (SECRET, Learner, face, learner_token, make_token, pb,
                      platform_token, run, supervisor_token)

PHOTO = "lfw/Colin_Powell/Colin_Powell_0001.jpg"
PHOTO_2 = "lfw/Serena_Williams/Serena_Williams_0001.jpg"
GROUP = "named_color/_multi/two_people.jpg"
LARGE = "named_color/_multi/obama_and_biden.jpg"
JPEG = {"Content-Type": "image/jpeg"}


# ---------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------

def gray_jpeg(width=160, height=120):
    """A baseline greyscale JPEG of flat 8x8 blocks in a diagonal ramp: a
    valid photograph of no face. Only DC coefficients are coded, so the
    standard library is enough to write it."""
    dc_bits = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    dc_vals = list(range(12))
    ac_bits = [0, 1] + [0] * 14          # a single 2-bit code: EOB
    ac_vals = [0x00]

    def codes(bits, vals):
        table, code, k = {}, 0, 0
        for length in range(1, 17):
            for _ in range(bits[length - 1]):
                table[vals[k]] = (code, length)
                code += 1
                k += 1
            code <<= 1
        return table

    dc, ac = codes(dc_bits, dc_vals), codes(ac_bits, ac_vals)
    out = bytearray()
    state = {"acc": 0, "n": 0}

    def put(value, length):
        for i in range(length - 1, -1, -1):
            state["acc"] = (state["acc"] << 1) | ((value >> i) & 1)
            state["n"] += 1
            if state["n"] == 8:
                out.append(state["acc"])
                if state["acc"] == 0xFF:
                    out.append(0)
                state["acc"], state["n"] = 0, 0

    prev = 0
    bw, bh = (width + 7) // 8, (height + 7) // 8
    for by in range(bh):
        for bx in range(bw):
            level = 40 + (180 * (bx + by)) // (bw + bh)
            coef = 8 * (level - 128)
            diff, prev = coef - prev, coef
            cat = abs(diff).bit_length()
            put(*dc[cat])
            if cat:
                put(diff if diff > 0 else diff + (1 << cat) - 1, cat)
            put(*ac[0x00])
    if state["n"]:
        put((1 << (8 - state["n"])) - 1, 8 - state["n"])

    def seg(marker, payload):
        return (bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big")
                + bytes(payload))

    head = b"\xff\xd8" + seg(0xDB, [0] + [1] * 64)
    head += seg(0xC0, [8, height >> 8, height & 255, width >> 8,
                       width & 255, 1, 1, 0x11, 0])
    head += seg(0xC4, [0x00] + dc_bits + dc_vals)
    head += seg(0xC4, [0x10] + ac_bits + ac_vals)
    head += seg(0xDA, [1, 1, 0x00, 0, 63, 0])
    return head + bytes(out) + b"\xff\xd9"


def resp(redis, *args):
    """One binary-safe command over RESP (redis-cli cannot pass bytes with
    NULs as arguments). Returns the raw first reply line."""
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    msg = b"*%d\r\n" % len(parts)
    for p in parts:
        msg += b"$%d\r\n%s\r\n" % (len(p), p)
    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as s:
        s.sendall(msg)
        return s.recv(4096).split(b"\r\n", 1)[0]


def put_photo(daemon, learner, data, token=None, query="", headers=None):
    return daemon.http_json("PUT", "/v1/learners/%s/enrollment%s" %
                            (learner, query), token or platform_token(),
                            data, JPEG if headers is None else headers)


def seed_flag(redis, fid, learner="learner-1", kind="face_mismatch",
              org="org-1", course="course-1", session="s" * 32,
              opened_ms=None, evidence="", withheld_ms=60000,
              day="2026-12-01", status="open"):
    """A flag exactly as the crediting core writes it (LEDGER_FLAG and the
    global indexes beside it)."""
    opened_ms = opened_ms or int(time.time() * 1000)
    tag = "pd:{%s}:" % learner
    redis.cli("HSET", tag + "flag:" + fid, "id", fid, "kind", kind,
              "learner_id", learner, "org", org, "course", course,
              "session_id", session, "opened_ms", opened_ms,
              "evidence", evidence, "withheld_ms", withheld_ms, "day", day,
              "status", status)
    redis.cli("ZADD", tag + "flags", opened_ms, fid)
    redis.cli("HSET", "pd:flagindex", fid, learner)
    redis.cli("ZADD", "pd:flags:all", opened_ms, fid)
    if status == "open":
        redis.cli("ZADD", "pd:flags:open", opened_ms, fid)
    return fid


def fid(n):
    return "%032x" % (0xf1a9 << 64 | n)


# ---------------------------------------------------------------------
# Routing and tokens
# ---------------------------------------------------------------------

def test_unknown_route_and_wrong_method(daemon):
    tok = supervisor_token()
    status, body = daemon.http_json("GET", "/v1/nothing", tok)
    assert status == 404 and "error" in body
    status, body = daemon.http_json("GET", "/v1/learners/x/enrollment",
                                    platform_token())
    assert status == 405 and "error" in body
    status, headers, _ = daemon.http("DELETE", "/v1/flags", tok)
    assert status == 405 and headers.get("Allow") == "GET"
    status, _ = daemon.http_json("PUT", "/v1/learners/x/hours", tok, b"x")
    assert status == 405
    status, _ = daemon.http_json("GET", "/v1/flags/%s/review" % fid(1), tok)
    assert status == 405


def test_tokens_and_scopes(daemon):
    photo = face(PHOTO)
    assert put_photo(daemon, "l1", photo, supervisor_token())[0] == 403
    assert put_photo(daemon, "l1", photo, learner_token())[0] == 403
    status, body = daemon.http_json("PUT", "/v1/learners/l1/enrollment",
                                    None, photo, JPEG)
    assert status == 401 and "error" in body
    bad = make_token(secret=SECRET + "x", sub="p", scope="platform")
    assert put_photo(daemon, "l1", photo, bad)[0] == 401
    expired = platform_token(exp=int(time.time()) - 3600)
    assert put_photo(daemon, "l1", photo, expired)[0] == 401

    hours = "/v1/learners/l1/hours?course=c"
    assert daemon.http_json("GET", hours, supervisor_token())[0] == 403
    assert daemon.http_json("GET", hours, learner_token())[0] == 403
    assert daemon.http_json("GET", "/v1/flags", platform_token())[0] == 403
    assert daemon.http_json("GET", "/v1/flags", learner_token())[0] == 403
    assert daemon.http_json("GET", "/v1/flags")[0] == 401
    assert daemon.http_json("GET", "/v1/evidence/" + "a" * 32,
                            platform_token())[0] == 403
    assert daemon.http_json("GET", "/v1/sessions/" + "s" * 32,
                            learner_token())[0] == 403


def test_learner_id_syntax(daemon):
    tok = platform_token()
    for bad in ("bad%20id", "a" * 129, "semi;colon", "%00x", "a%2Fb",
                "br%7Bace%7D"):
        status, body = daemon.http_json(
            "GET", "/v1/learners/%s/hours?course=c" % bad, tok)
        assert status == 400, bad
        assert "error" in body
    status, body = daemon.http_json(
        "GET", "/v1/learners/%s/hours?course=c" % ("a" * 128), tok)
    assert status == 200
    # A percent-encoded id is decoded before use.
    status, body = daemon.http_json(
        "GET", "/v1/learners/ann%40example.org/hours?course=c", tok)
    assert status == 200 and body["learner_id"] == "ann@example.org"


# ---------------------------------------------------------------------
# Enrolment
# ---------------------------------------------------------------------

def test_enrol_single_face(daemon, redis):
    status, body = put_photo(daemon, "enr-1", face(PHOTO), query="?org=org-7")
    assert status == 201, body
    assert body["learner_id"] == "enr-1"
    assert body["replaced"] is False
    assert body["model"]
    box = body["face"]
    assert set(box) >= {"x", "y", "w", "h", "score"}
    assert box["w"] > 20 and box["h"] > 20

    tag = "pd:{enr-1}:"
    assert redis.cli("HGET", tag + "enrol", "model") == body["model"]
    assert redis.cli("HGET", tag + "enrol", "org") == "org-7"
    dim = int(body["model"][2:5]) if body["model"][2:5].isdigit() else None
    emb_len = int(redis.cli("HSTRLEN", tag + "enrol", "emb"))
    assert emb_len > 0 and emb_len % 4 == 0
    if dim:
        assert emb_len == dim * 4
    assert len(redis.cli("HGET", tag + "enrol", "photo_sha256")) == 64
    assert json.loads(redis.cli("HGET", tag + "enrol", "box"))["w"] > 20
    assert redis.cli("SISMEMBER", "pd:org:{org-7}:learners", "enr-1") == "1"


def test_reenrolment_replaces_and_is_streamed(daemon, redis):
    tok = platform_token(org="org-tok")
    assert put_photo(daemon, "enr-2", face(PHOTO), tok)[0] == 201
    status, body = put_photo(daemon, "enr-2", face(PHOTO_2), tok)
    assert status == 201 and body["replaced"] is True
    # Without ?org= the token's organisation is used.
    assert body["org"] == "org-tok"
    assert redis.cli("SISMEMBER", "pd:org:{org-tok}:learners",
                     "enr-2") == "1"

    lines = redis.cli("XRANGE", "pd:{enr-2}:stream", "-", "+").split("\n")
    assert lines.count("enrolment") == 2
    # The last entry's replaced field is 1.
    last = lines[lines.index("enrolment", lines.index("enrolment") + 1):]
    assert last[last.index("replaced") + 1] == "1"


def test_enrol_refusals(daemon, redis):
    status, body = put_photo(daemon, "enr-3", face(GROUP))
    assert status == 422
    assert body["error"] == "more than one face" and body["faces"] >= 2
    status, body = put_photo(daemon, "enr-3", gray_jpeg())
    assert status == 422 and body["error"] == "no face found"
    status, body = put_photo(daemon, "enr-3", b"this is not a JPEG at all")
    assert status == 422 and body["error"].startswith("not a decodable JPEG")
    status, body = put_photo(daemon, "enr-3", face(PHOTO)[:600])
    assert status == 422
    status, body = put_photo(daemon, "enr-3", face(PHOTO),
                             headers={"Content-Type": "image/png"})
    assert status == 415 and "error" in body
    status, body = put_photo(daemon, "enr-3", face(PHOTO), headers={})
    assert status == 415
    status, body = put_photo(daemon, "enr-3", b"")
    assert status == 400 and "error" in body
    status, body = put_photo(daemon, "enr-3", face(PHOTO),
                             query="?org=bad%7Borg")
    assert status == 400
    # Nothing of the refused attempts was written.
    assert redis.cli("EXISTS", "pd:{enr-3}:enrol") == "0"
    assert redis.cli("EXISTS", "pd:{enr-3}:stream") == "0"


def test_enrol_body_too_large(daemon_factory):
    d = daemon_factory({"server.http_max_body": "64KiB"})
    status, _, _ = d.http("PUT", "/v1/learners/big/enrollment",
                          platform_token(), b"\xff" * 200000, JPEG)
    assert status == 413


def test_enrol_busy_is_503_with_retry_after(daemon_factory):
    d = daemon_factory({"vision.workers": "1", "vision.queue": "1"})
    photo = face(LARGE)
    results = []

    def one():
        status, headers, body = d.http(
            "PUT", "/v1/learners/busy/enrollment", platform_token(), photo,
            JPEG, timeout=30)
        results.append((status, headers.get("Retry-After"),
                        json.loads(body)))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    busy = [r for r in results if r[0] == 503]
    assert busy, results
    assert all(r[1] == "1" and r[2]["error"] == "busy" for r in busy)
    assert all(r[0] in (503, 422) for r in results)


def test_client_gone_before_analysis(daemon, redis):
    photo = face(LARGE)
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", daemon.http_port))
        s.sendall(("PUT /v1/learners/gone/enrollment HTTP/1.1\r\n"
                   "Host: x\r\nAuthorization: Bearer %s\r\n"
                   "Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                   % (platform_token(), len(photo))).encode() + photo)
        s.close()
    time.sleep(1.5)
    assert daemon.proc.poll() is None
    status, _ = daemon.http_json("GET", "/healthz")
    assert status == 200
    assert put_photo(daemon, "gone-2", face(PHOTO))[0] == 201


def test_enrol_with_redis_down(daemon, redis):
    redis.kill()
    time.sleep(0.5)
    status, body = put_photo(daemon, "down-1", face(PHOTO))
    assert status == 503 and "error" in body


# ---------------------------------------------------------------------
# Hours
# ---------------------------------------------------------------------

def test_hours_unknown_learner_is_zero(daemon):
    status, body = daemon.http_json(
        "GET", "/v1/learners/never-seen/hours?course=c1", platform_token())
    assert status == 200
    assert body["learner_id"] == "never-seen" and body["course"] == "c1"
    assert body["credited_seconds"] == 0 and body["credit_hours"] == 0
    assert body["days"] == []
    assert body["role"] is None and body["required_hours"] is None


def test_hours_from_the_course_hash(daemon, redis):
    key = "pd:{h-1}:course:course-A"
    redis.cli("HSET", key, "total_ms", 5400000 + 2699000, "d:2026-12-02",
              2699000, "d:2026-12-01", 5400000)
    redis.cli("HSET", "pd:{h-1}:profile", "role", "team_leader", "org", "o")
    status, body = daemon.http_json(
        "GET", "/v1/learners/h-1/hours?course=course-A", platform_token())
    assert status == 200, body
    assert body["credited_seconds"] == 8099
    assert body["credit_hours"] == 2.99
    assert body["days"] == [
        {"date": "2026-12-01", "credited_seconds": 5400},
        {"date": "2026-12-02", "credited_seconds": 2699}]
    assert body["role"] == "team_leader"
    assert body["required_hours"] == 20 and body["max_hours"] == 72
    assert body["online_cap_hours"] == 8.0
    assert body["online_used_hours"] == 2.99


def test_hours_rounding_down(daemon, redis):
    redis.cli("HSET", "pd:{h-2}:course:c", "total_ms", 5400000,
              "d:2026-12-01", 5400000)
    redis.cli("HSET", "pd:{h-3}:course:c", "total_ms", 2699999)
    redis.cli("HSET", "pd:{h-3}:profile", "role", "manager")
    tok = platform_token()
    _, body = daemon.http_json("GET", "/v1/learners/h-2/hours?course=c", tok)
    assert body["credited_seconds"] == 5400 and body["credit_hours"] == 2.0
    _, body = daemon.http_json("GET", "/v1/learners/h-3/hours?course=c", tok)
    assert body["credited_seconds"] == 2699 and body["credit_hours"] == 0.99
    assert body["required_hours"] == 12 and body["online_cap_hours"] == 4.8


def test_hours_online_cap(daemon, redis):
    # 6 h = 8 credit hours, over a manager's 12 x 0.4 = 4.8 online cap.
    redis.cli("HSET", "pd:{h-4}:course:c", "total_ms", 6 * 3600000)
    redis.cli("HSET", "pd:{h-4}:profile", "role", "manager")
    _, body = daemon.http_json("GET", "/v1/learners/h-4/hours?course=c",
                               platform_token())
    assert body["credit_hours"] == 8.0
    assert body["online_used_hours"] == 4.8


def test_hours_needs_a_course(daemon):
    tok = platform_token()
    for q in ("", "?course=", "?other=1", "?course=" + "c" * 200):
        status, body = daemon.http_json("GET", "/v1/learners/h/hours" + q,
                                        tok)
        assert status == 400 and "error" in body, q


def test_hours_with_redis_down(daemon, redis):
    redis.kill()
    time.sleep(0.5)
    status, body = daemon.http_json(
        "GET", "/v1/learners/h/hours?course=c", platform_token())
    assert status == 503 and "error" in body


# ---------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------

def test_flags_list_and_filters(daemon, redis):
    now = int(time.time() * 1000)
    seed_flag(redis, fid(1), "fl-a", "face_mismatch", "org-1", "c1",
              opened_ms=now - 3000, evidence="%032x,%032x" % (1, 2))
    seed_flag(redis, fid(2), "fl-b", "no_face", "org-2", "c2",
              opened_ms=now - 2000)
    seed_flag(redis, fid(3), "fl-a", "idle", "org-1", "c2",
              opened_ms=now - 1000)
    seed_flag(redis, fid(4), "fl-b", "no_face", "org-2", "c2",
              opened_ms=now - 500, status="confirmed")
    tok = supervisor_token()

    status, body = daemon.http_json("GET", "/v1/flags", tok)
    assert status == 200
    assert [f["id"] for f in body["flags"]] == [fid(3), fid(2), fid(1)]
    first = body["flags"][2]
    assert first["learner_id"] == "fl-a" and first["org"] == "org-1"
    assert first["course"] == "c1" and first["kind"] == "face_mismatch"
    assert first["session_id"] == "s" * 32
    assert first["evidence"] == ["%032x" % 1, "%032x" % 2]
    assert first["withheld_seconds"] == 60 and first["status"] == "open"
    assert first["opened_at"].endswith("Z") and "T" in first["opened_at"]
    assert "reviewed_by" not in first
    assert body["flags"][1]["evidence"] == []

    def ids(query):
        st, b = daemon.http_json("GET", "/v1/flags" + query, tok)
        assert st == 200, (query, b)
        return [f["id"] for f in b["flags"]]

    assert ids("?status=open&kind=no_face") == [fid(2)]
    assert ids("?org=org-1") == [fid(3), fid(1)]
    assert ids("?course=c2") == [fid(3), fid(2)]
    assert ids("?learner=fl-b") == [fid(2)]
    assert ids("?learner=fl-b&status=all") == [fid(4), fid(2)]
    assert ids("?status=all") == [fid(4), fid(3), fid(2), fid(1)]
    assert ids("?status=confirmed") == [fid(4)]
    assert ids("?status=dismissed") == []
    assert ids("?limit=2") == [fid(3), fid(2)]
    assert ids("?kind=replayed_image") == []
    for bad in ("?status=bogus", "?limit=0", "?limit=501", "?limit=x",
                "?learner=bad%20id"):
        assert daemon.http_json("GET", "/v1/flags" + bad, tok)[0] == 400


def test_flags_filter_scans_past_the_first_page(daemon, redis):
    now = int(time.time() * 1000)
    for i in range(120):
        seed_flag(redis, fid(100 + i), "many", "no_face",
                  opened_ms=now - 1000 + i)
    seed_flag(redis, fid(99), "many", "shared_face", opened_ms=now - 5000)
    status, body = daemon.http_json("GET", "/v1/flags?kind=shared_face&limit=1",
                                    supervisor_token())
    assert status == 200 and [f["id"] for f in body["flags"]] == [fid(99)]
    status, body = daemon.http_json("GET", "/v1/flags?limit=500",
                                    supervisor_token())
    assert len(body["flags"]) == 121


def test_flag_detail(daemon, redis):
    seed_flag(redis, fid(7), "fd", "challenge_missed", evidence="%032x" % 9)
    tok = supervisor_token()
    status, body = daemon.http_json("GET", "/v1/flags/" + fid(7), tok)
    assert status == 200
    assert body["id"] == fid(7) and body["kind"] == "challenge_missed"
    assert body["evidence"] == ["%032x" % 9]
    status, body = daemon.http_json("GET", "/v1/flags/" + fid(8), tok)
    assert status == 404 and "error" in body
    assert daemon.http_json("GET", "/v1/flags/bad%20id", tok)[0] == 404
    assert daemon.http_json("GET", "/v1/flags/" + fid(7),
                            platform_token())[0] == 403


def review(daemon, flag, decision, note="checked"):
    return daemon.http_json("POST", "/v1/flags/%s/review" % flag,
                            supervisor_token(),
                            json.dumps({"decision": decision,
                                        "note": note}).encode(),
                            {"Content-Type": "application/json"})


def test_review_dismiss_credits_and_is_idempotent(daemon, redis):
    tag = "pd:{rv}:"
    redis.cli("HSET", tag + "course:c1", "total_ms", 1000000,
              "d:2026-12-01", 1000000)
    redis.cli("HSET", tag + "days", "2026-12-01", 1000000)
    seed_flag(redis, fid(20), "rv", course="c1", withheld_ms=90500)

    status, body = review(daemon, fid(20), "dismiss", "false alarm")
    assert status == 200, body
    assert body["status"] == "dismissed" and body["credited_seconds"] == 90
    assert body["reviewed_by"] == "supervisor-1"
    assert body["note"] == "false alarm"
    assert body["reviewed_at"].endswith("Z")
    assert redis.cli("HGET", tag + "course:c1", "total_ms") == "1090500"
    assert redis.cli("HGET", tag + "course:c1", "d:2026-12-01") == "1090500"
    assert redis.cli("ZSCORE", "pd:flags:open", fid(20)) == ""
    assert "review" in redis.cli("XRANGE", tag + "stream", "-", "+")

    # The same decision again changes nothing and credits nothing.
    status, body = review(daemon, fid(20), "dismiss")
    assert status == 200 and body["credited_seconds"] == 0
    assert body["status"] == "dismissed"
    assert redis.cli("HGET", tag + "course:c1", "total_ms") == "1090500"
    status, body = review(daemon, fid(20), "confirm")
    assert status == 409 and body["error"] == "already dismissed"

    _, hours = daemon.http_json("GET", "/v1/learners/rv/hours?course=c1",
                                platform_token())
    assert hours["credited_seconds"] == 1090

    _, listed = daemon.http_json("GET", "/v1/flags?status=dismissed",
                                 supervisor_token())
    assert [f["id"] for f in listed["flags"]] == [fid(20)]
    assert daemon.http_json("GET", "/v1/flags",
                            supervisor_token())[1]["flags"] == []


def test_review_dismiss_respects_the_daily_cap(daemon, redis):
    tag = "pd:{cap}:"
    cap = 8 * 3600000
    redis.cli("HSET", tag + "days", "2026-12-01", cap - 5000)
    redis.cli("HSET", tag + "course:c1", "total_ms", cap - 5000)
    seed_flag(redis, fid(21), "cap", course="c1", withheld_ms=60000)
    status, body = review(daemon, fid(21), "dismiss")
    assert status == 200 and body["credited_seconds"] == 5
    assert redis.cli("HGET", tag + "days", "2026-12-01") == str(cap)


def test_review_confirm_keeps_time_withheld(daemon, redis):
    seed_flag(redis, fid(22), "cf", course="c1", withheld_ms=60000)
    status, body = review(daemon, fid(22), "confirm", "")
    assert status == 200
    assert body["status"] == "confirmed" and body["credited_seconds"] == 0
    assert redis.cli("EXISTS", "pd:{cf}:course:c1") == "0"
    assert review(daemon, fid(22), "confirm")[0] == 200
    status, body = review(daemon, fid(22), "dismiss")
    assert status == 409 and body["error"] == "already confirmed"


def test_review_bad_requests(daemon, redis):
    seed_flag(redis, fid(23), "bad")
    url = "/v1/flags/%s/review" % fid(23)
    tok = supervisor_token()
    for body in (b"", b"{not json", b"[1]", b'{"decision":"maybe"}',
                 b'{"note":"x"}', b'{"decision":"confirm","note":5}',
                 json.dumps({"decision": "confirm",
                             "note": "n" * 1001}).encode()):
        status, reply = daemon.http_json("POST", url, tok, body)
        assert status == 400 and "error" in reply, body
    # 1000 characters of a multi-byte script are within the limit.
    status, _ = daemon.http_json("POST", url, tok, json.dumps(
        {"decision": "confirm", "note": "\u5b66" * 1000}).encode())
    assert status == 200
    status, _ = review(daemon, fid(24), "dismiss")
    assert status == 404
    assert daemon.http_json("POST", url, platform_token(),
                            b'{"decision":"confirm"}')[0] == 403
    assert redis.cli("HGET", "pd:{bad}:flag:" + fid(23), "status") == \
        "confirmed"


# ---------------------------------------------------------------------
# Evidence
# ---------------------------------------------------------------------

def test_evidence_download(daemon, redis):
    eid = "%032x" % 0xe71de
    jpeg = face(PHOTO)
    assert resp(redis, "SET", "pd:{ev}:evidence:" + eid, jpeg, "PX",
                86400000) == b"+OK"
    redis.cli("SET", "pd:evidx:" + eid, "ev", "PX", 86400000)
    tok = supervisor_token()
    status, headers, data = daemon.http("GET", "/v1/evidence/" + eid, tok)
    assert status == 200
    assert headers["Content-Type"] == "image/jpeg"
    assert data == jpeg

    # Gone: the index outlived the JPEG, or never existed.
    redis.cli("DEL", "pd:{ev}:evidence:" + eid)
    assert daemon.http_json("GET", "/v1/evidence/" + eid, tok)[0] == 404
    assert daemon.http_json("GET", "/v1/evidence/" + "b" * 32, tok)[0] == 404
    for bad in ("short", "g" * 32, "a" * 33, "A" * 32):
        status, body = daemon.http_json("GET", "/v1/evidence/" + bad, tok)
        assert status == 404 and "error" in body, bad
    assert daemon.http_json("GET", "/v1/evidence/" + eid,
                            platform_token())[0] == 403


# ---------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------

def test_session_timeline(daemon, redis):
    sid, other = "a" * 32, "b" * 32
    now = int(time.time() * 1000)
    tag = "pd:{tl}:"
    redis.cli("SET", "pd:sid:" + sid, "tl")
    redis.cli("HSET", tag + "session:" + sid, "course", "c1", "org", "o1",
              "started_ms", now - 10000, "last_ms", now)
    redis.cli("XADD", tag + "stream", "*", "type", "enrolment", "model", "m")
    redis.cli("XADD", tag + "stream", "*", "type", "credit", "session", sid,
              "course", "c1", "check", "k1", "credited_ms", 30000,
              "at_ms", now)
    redis.cli("XADD", tag + "stream", "*", "type", "credit", "session",
              other, "credited_ms", 5000)
    redis.cli("XADD", tag + "stream", "*", "type", "flag", "session", sid,
              "flag", fid(30), "kind", "no_face", "at_ms", now)

    for tok in (platform_token(), supervisor_token()):
        status, body = daemon.http_json("GET", "/v1/sessions/" + sid, tok)
        assert status == 200, body
    assert body["session_id"] == sid and body["learner_id"] == "tl"
    assert body["course"] == "c1" and body["org"] == "o1"
    assert body["started_at"].endswith("Z") and body["last_at"]
    assert [e["type"] for e in body["events"]] == ["credit", "flag"]
    credit = body["events"][0]
    assert credit["credited_ms"] == 30000 and credit["check"] == "k1"
    assert credit["id"] and "-" in credit["id"]
    assert body["events"][1]["flag"] == fid(30)

    assert daemon.http_json("GET", "/v1/sessions/" + other,
                            supervisor_token())[0] == 404
    assert daemon.http_json("GET", "/v1/sessions/bad%20id",
                            supervisor_token())[0] == 404
    assert daemon.http_json("POST", "/v1/sessions/" + sid,
                            supervisor_token(), b"{}")[0] == 405


def test_session_timeline_of_a_real_session(daemon_factory):
    d = daemon_factory({"policy.heartbeat_interval": "500ms",
                        "policy.check_interval": "1h",
                        "policy.liveness_share": "0"})
    assert put_photo(d, "live-1", face(PHOTO))[0] == 201

    async def scenario():
        c = await Learner.connect(d)
        w = await c.hello(learner_token(sub="live-1", course="c-live"))
        ch = await c.expect("challenge")
        await c.snapshot(face("lfw/Colin_Powell/Colin_Powell_0002.jpg"),
                         ch.challenge_id)
        assert (await c.expect("verdict")).outcome == pb.MATCH
        for _ in range(8):
            await c.heartbeat()
            await c.expect("status")
            await asyncio.sleep(0.25)
        await c.snapshot(face("lfw/Colin_Powell/Colin_Powell_0003.jpg"), 0)
        assert (await c.expect("verdict")).outcome == pb.MATCH
        await c.expect("status")
        await c.close()
        return w.session_id

    sid = run(scenario())
    status, body = d.http_json("GET", "/v1/sessions/" + sid,
                               supervisor_token())
    assert status == 200, body
    assert body["learner_id"] == "live-1" and body["course"] == "c-live"
    credits = [e for e in body["events"] if e["type"] == "credit"]
    assert credits and sum(e["credited_ms"] for e in credits) > 0
    assert all(e.get("session") == sid for e in body["events"])
    _, hours = d.http_json("GET", "/v1/learners/live-1/hours?course=c-live",
                           platform_token())
    assert hours["credited_seconds"] == body["credited_seconds"]
