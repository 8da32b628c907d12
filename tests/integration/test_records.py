"""Records end to end: the hours report behind training-fund claims (JSON
and CSV, paged by learner id), a learner's event stream, the pd:events
stream read the way a platform reads it (a consumer group, across a
daemon restart), exam results, evidence expiry and the erasure of a
learner's biometric data. The real daemon, a real Redis, real
photographs; what the report says is checked against the ledger's keys
(daemon/ledger.h) read straight from Redis."""

import base64
import csv
import io
import json
import socket
import time
import urllib.parse

from conftest import (Learner, face, learner_token, pb, platform_token, run,
                      supervisor_token, wait_until)
from test_crediting import A, B, FAST, blank_jpeg, check, enrol, study, \
    verified

COLUMNS = ["learner_id", "role", "required_hours", "credited_seconds",
           "credit_hours", "online_cap_hours", "online_used_hours",
           "flags_open", "flags_confirmed"]
# [requirements] defaults: required hours, and the online cap at 0.4.
ROLES = {"manager": (12, 480), "safety_officer": (12, 480),
         "team_leader": (20, 800)}


# ---------------------------------------------------------------------
# A small RESP client, as a platform's consumer would use
# ---------------------------------------------------------------------

class RespError(Exception):
    pass


class Resp:
    """One connection speaking RESP2; replies as bytes, ints and lists."""

    def __init__(self, port, timeout=15):
        self.sock = socket.create_connection(("127.0.0.1", port),
                                             timeout=timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def call(self, *args):
        parts = [a if isinstance(a, bytes) else str(a).encode()
                 for a in args]
        msg = b"*%d\r\n" % len(parts)
        for p in parts:
            msg += b"$%d\r\n%s\r\n" % (len(p), p)
        self.sock.sendall(msg)
        return self._reply()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("redis closed the connection")
        self.buf += data

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RespError("unexpected reply %r" % line)


def fields(flat):
    """[b"k", b"v", ...] -> {"k": "v"}."""
    return {flat[i].decode(): flat[i + 1].decode()
            for i in range(0, len(flat), 2)}


class Consumer:
    """A platform reading pd:events with a consumer group, as the README's
    "Events out" describes: XGROUP CREATE once, XREADGROUP ">" for new
    events, "0" for its own delivered but unacknowledged ones, XACK."""

    def __init__(self, redis, group="platform", name="c1"):
        self.redis, self.group, self.name = redis, group, name
        self.conn = Resp(redis.port)

    def create(self):
        try:
            self.conn.call("XGROUP", "CREATE", "pd:events", self.group, "$",
                           "MKSTREAM")
        except RespError as e:
            if not str(e).startswith("BUSYGROUP"):
                raise

    def read(self, start=">", count=100, block=5000):
        reply = self.conn.call("XREADGROUP", "GROUP", self.group, self.name,
                               "COUNT", count, "BLOCK", block, "STREAMS",
                               "pd:events", start)
        if reply is None:
            return []
        return [(eid.decode(), fields(flat)) for eid, flat in reply[0][1]]

    def ack(self, ids):
        if ids:
            assert self.conn.call("XACK", "pd:events", self.group,
                                  *ids) == len(ids)

    def reconnect(self):
        self.conn.close()
        self.conn = Resp(self.redis.port)


def stream(redis, key, start="-"):
    """Every entry of a stream as [(id, {field: value})]."""
    conn = Resp(redis.port)
    try:
        return [(eid.decode(), fields(flat)) for eid, flat in
                conn.call("XRANGE", key, start, "+")]
    finally:
        conn.close()


def learner_stream(redis, learner):
    return stream(redis, "pd:{%s}:stream" % learner)


def hours(daemon, learner, course="course-1"):
    status, body = daemon.http_json(
        "GET", "/v1/learners/%s/hours?%s" % (
            learner, urllib.parse.urlencode({"course": course})),
        platform_token())
    assert status == 200, body
    return body


def open_flags(daemon, learner):
    status, body = daemon.http_json("GET", "/v1/flags?status=all&learner=" +
                                    learner, supervisor_token())
    assert status == 200, body
    return body["flags"]


def review(daemon, flag_id, decision):
    status, body = daemon.http_json(
        "POST", "/v1/flags/%s/review" % flag_id, supervisor_token(),
        ('{"decision": "%s", "note": "checked"}' % decision).encode(),
        {"Content-Type": "application/json"})
    assert status == 200, body
    return body


async def credit_then_stranger(d, learner, **claims):
    """A verified session that earns a credit, then shows a stranger (a
    face_mismatch flag with evidence). Returns the open connection."""
    c = await verified(d, learner, **claims)
    await study(c, 2.0)
    await check(c, A[2], pb.MATCH)
    await study(c, 1.5)
    await check(c, B[0], pb.MISMATCH)
    return c


# ---------------------------------------------------------------------
# The hours report
# ---------------------------------------------------------------------

ORG = 'Acme, "East" Works'
COURSE = "Safety, level 1"


def report(daemon, token=None, csv_format=False, **query):
    query.setdefault("org", ORG)
    query.setdefault("course", COURSE)
    path = "/v1/reports/hours?" + urllib.parse.urlencode(query)
    headers = {"Accept": "text/csv"} if csv_format else {}
    return daemon.http("GET", path, token or platform_token(),
                       headers=headers)


def report_json(daemon, **query):
    status, _, data = report(daemon, **query)
    body = json.loads(data.decode())
    assert status == 200, body
    return body


def expected_rows(redis, org, course, lo=None, hi=None):
    """The report computed from the ledger's keys, as the hours API rules
    say: seconds rounded down, hours in hundredths rounded down, the
    online cap of the role."""
    conn = Resp(redis.port)
    try:
        members = sorted(conn.call("SMEMBERS",
                                   "pd:org:{%s}:learners" % org))
        rows = []
        for m in members:
            learner = m.decode()
            role = conn.call("HGET", "pd:{%s}:profile" % learner, "role")
            role = role.decode() if role is not None else None
            h = fields(conn.call("HGETALL",
                                 "pd:{%s}:course:%s" % (learner, course)))
            if lo is None and hi is None:
                ms = int(h.get("total_ms", 0))
            else:
                ms = sum(int(v) for k, v in h.items()
                         if k.startswith("d:") and
                         (lo is None or k[2:] >= lo) and
                         (hi is None or k[2:] <= hi))
            secs = ms // 1000
            centi = secs * 100 // (45 * 60)
            need = ROLES.get(role)
            rows.append({
                "learner_id": learner, "role": role,
                "required_hours": need[0] if need else None,
                "credited_seconds": secs, "credit_hours": centi / 100,
                "online_cap_hours": need[1] / 100 if need else None,
                "online_used_hours": (min(centi, need[1]) if need
                                      else centi) / 100,
                "flags_open": int(h.get("flags_open", 0)),
                "flags_confirmed": int(h.get("flags_confirmed", 0))})
        return rows
    finally:
        conn.close()


def all_pages(daemon, limit, **query):
    """Walks the report page by page; returns (rows, pages)."""
    rows, pages, cursor = [], [], None
    while True:
        q = dict(query, limit=limit)
        if cursor:
            q["cursor"] = cursor
        body = report_json(daemon, **q)
        pages.append(body["rows"])
        rows += body["rows"]
        cursor = body["next"]
        if cursor is None:
            return rows, pages
        assert len(pages) < 100


def seed_learner(redis, learner, role, days, flags_open=0, confirmed=0):
    key = "pd:{%s}:course:%s" % (learner, COURSE)
    args = ["total_ms", sum(days.values())]
    for day, ms in days.items():
        args += ["d:" + day, ms]
    args += ["flags_open", flags_open, "flags_confirmed", confirmed]
    conn = Resp(redis.port)
    try:
        conn.call("HSET", key, *args)
        if role is not None:
            conn.call("HSET", "pd:{%s}:profile" % learner, "role", role,
                      "org", ORG)
        conn.call("SADD", "pd:org:{%s}:learners" % ORG, learner)
    finally:
        conn.close()


def build_org(d, redis):
    """Learners of ORG: two with real sessions (credit and flags, one
    confirmed), one who only said Hello (never enrolled), and seeded ones
    around the report's date range. Returns (today, from, to)."""
    enrol(d, "rp-real-1", A[0], org="")
    enrol(d, "rp-real-2", B[2], org="")
    claims = dict(org=ORG, course=COURSE)

    async def sessions():
        c = await credit_then_stranger(d, "rp-real-1", **claims)
        await c.close()
        c = await verified(d, "rp-real-2", photo=B[3], role="team_leader",
                           **claims)
        await study(c, 2.0)
        await check(c, B[4], pb.MATCH)
        await study(c, 1.0)
        await check(c, A[5], pb.MISMATCH)
        await c.close()
        # Never enrolled: the Hello alone makes the learner a member.
        c = await Learner.connect(d)
        await c.hello(learner_token(sub="rp-hello", role="safety_officer",
                                    **claims))
        ch = await c.expect("challenge")
        await c.snapshot(face(A[6]), ch.challenge_id)
        assert (await c.expect("verdict")).outcome == pb.NOT_ENROLLED
        await c.close()
    run(sessions())
    # rp-real-1 is enrolled in ORG too: the flag may be shared_face.
    flags = open_flags(d, "rp-real-2")
    assert len(flags) == 1
    review(d, flags[0]["id"], "confirm")

    conn = Resp(redis.port)
    h = fields(conn.call("HGETALL", "pd:{rp-real-1}:course:%s" % COURSE))
    conn.close()
    today = [k[2:] for k in h if k.startswith("d:")][0]
    t = time.mktime(time.strptime(today, "%Y-%m-%d")) + 43200

    def day(n):
        return time.strftime("%Y-%m-%d", time.localtime(t + n * 86400))

    lo, hi = day(-2), day(2)
    seed_learner(redis, "rp-s1", "manager",
                 {day(-3): 600000, lo: 5400000, today: 2699000})
    seed_learner(redis, "rp-s2", "team_leader",
                 {hi: 7 * 3600000, day(3): 3600000}, flags_open=2)
    seed_learner(redis, "rp-s3", 'lead, "night"\r\nshift', {today: 1500},
                 confirmed=1)
    seed_learner(redis, "rp-s4", None, {day(-10): 99000})
    # 12 h: past the manager's 4.8 h online cap.
    seed_learner(redis, "rp-s5", "manager", {lo: 6 * 3600000,
                                             today: 3 * 3600000})
    return today, lo, hi


def test_hours_report_matches_the_ledger(daemon_factory, redis):
    d = daemon_factory(FAST)
    today, lo, hi = build_org(d, redis)
    members = redis.cli("SMEMBERS", "pd:org:{%s}:learners" % ORG).split()
    assert "rp-hello" in members and len(members) == 8

    full = expected_rows(redis, ORG, COURSE, lo, hi)
    body = report_json(d, **{"from": lo, "to": hi})
    assert body["next"] is None
    assert body["rows"] == full
    by_id = {r["learner_id"]: r for r in full}
    # The real sessions: credit, an open flag, a confirmed one.
    assert by_id["rp-real-1"]["credited_seconds"] >= 1
    assert by_id["rp-real-1"]["flags_open"] == 1
    assert by_id["rp-real-2"]["flags_confirmed"] == 1
    assert by_id["rp-real-2"]["flags_open"] == 0
    assert by_id["rp-real-2"]["role"] == "team_leader"
    assert by_id["rp-hello"]["role"] == "safety_officer"
    assert by_id["rp-hello"]["credited_seconds"] == 0
    # The range's ends count, the days past them do not.
    assert by_id["rp-s1"]["credited_seconds"] == 5400 + 2699
    assert by_id["rp-s1"]["credit_hours"] == 2.99
    assert by_id["rp-s2"]["credited_seconds"] == 7 * 3600
    assert by_id["rp-s2"]["online_used_hours"] == 8.0
    assert by_id["rp-s4"]["credited_seconds"] == 0
    assert by_id["rp-s4"]["role"] is None
    assert by_id["rp-s4"]["required_hours"] is None
    assert by_id["rp-s5"]["credit_hours"] == 12.0
    assert by_id["rp-s5"]["online_used_hours"] == 4.8
    # Each real learner's hours API agrees (all days are in range).
    for learner in ("rp-real-1", "rp-real-2"):
        assert hours(d, learner, COURSE)["credited_seconds"] == \
            by_id[learner]["credited_seconds"]

    # No range: every day, as the hours API counts them.
    assert report_json(d)["rows"] == expected_rows(redis, ORG, COURSE)
    assert report_json(d)["rows"][[r["learner_id"] for r in full].index(
        "rp-s4")]["credited_seconds"] == 99
    only_lo = report_json(d, **{"from": lo, "to": lo})["rows"]
    assert only_lo == expected_rows(redis, ORG, COURSE, lo, lo)

    # CSV: the same rows, RFC 4180 quoting, CRLF line ends.
    status, headers, data = report(d, csv_format=True,
                                   **{"from": lo, "to": hi})
    assert status == 200
    assert headers["Content-Type"].startswith("text/csv")
    assert "X-Next-Cursor" not in headers
    text = data.decode("utf-8")
    assert text.startswith(",".join(COLUMNS) + "\r\n")
    assert '"lead, ""night""\r\nshift"' in text
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert parsed[0] == COLUMNS
    assert len(parsed) == 1 + len(full)
    for row, want in zip(parsed[1:], full):
        for col, value in zip(COLUMNS, row):
            w = want[col]
            if w is None:
                assert value == "", (col, row)
            elif isinstance(w, str):
                assert value == w, (col, row)
            else:
                assert float(value) == w, (col, row, w)


def test_hours_report_pages(daemon_factory, redis):
    d = daemon_factory(FAST)
    ids = ["pg-%02d" % i for i in range(7)] + ["pg.a", "pg@b", "pg_c"]
    for i, learner in enumerate(ids):
        seed_learner(redis, learner, "manager", {"2026-12-01": 1000 * i})
    full = expected_rows(redis, ORG, COURSE)
    n = len(full)
    assert [r["learner_id"] for r in full] == sorted(ids)

    for limit in (n, n - 1, 1, n + 1, 3):
        rows, pages = all_pages(d, limit)
        assert rows == full, limit
        assert len(pages) == -(-n // limit), limit
        assert all(len(p) == limit for p in pages[:-1])
    rows, pages = all_pages(d, n)
    assert len(pages) == 1
    assert report_json(d, limit=n)["next"] is None
    assert report_json(d, limit=n - 1)["next"] is not None

    # The cursor is the last id of a page, base64url: a learner added
    # before it meanwhile does not shift what comes next.
    first = report_json(d, limit=3)
    assert base64.urlsafe_b64decode(first["next"] + "==").decode() == \
        full[2]["learner_id"]
    seed_learner(redis, "pg-", "manager", {})
    second = report_json(d, limit=3, cursor=first["next"])
    assert second["rows"] == full[3:6]

    # CSV pages: the cursor in X-Next-Cursor, a header row on each.
    got, cursor = [], None
    while True:
        q = {"limit": 4}
        if cursor:
            q["cursor"] = cursor
        status, headers, data = report(d, csv_format=True, **q)
        assert status == 200
        parsed = list(csv.reader(io.StringIO(data.decode(), newline="")))
        assert parsed[0] == COLUMNS
        got += [r[0] for r in parsed[1:]]
        cursor = headers.get("X-Next-Cursor")
        if cursor is None:
            break
    assert got == sorted(ids + ["pg-"])

    # An organisation nobody belongs to.
    body = report_json(d, org="nobody-here")
    assert body["rows"] == [] and body["next"] is None


def test_hours_report_refusals(daemon):
    for query in ({"org": ""}, {"course": ""}, {"from": "2026-13-01"},
                  {"to": "2026-02-30"}, {"from": "2026-12-02",
                                         "to": "2026-12-01"},
                  {"from": "20261201"}, {"limit": 0}, {"limit": 1001},
                  {"limit": "x"}, {"cursor": "!!"}, {"cursor": "A"}):
        status, _, data = report(daemon, **query)
        assert status == 400 and b"error" in data, query
    status, _, _ = daemon.http("GET", "/v1/reports/hours?course=c",
                               platform_token())
    assert status == 400
    assert report(daemon, token=supervisor_token())[0] == 403
    assert report(daemon, token=learner_token())[0] == 403
    assert report(daemon, **{"from": "2024-02-29", "to": "2024-02-29"})[0] \
        == 200


# ---------------------------------------------------------------------
# A learner's events
# ---------------------------------------------------------------------

def test_learner_events_pages(daemon, redis):
    tag = "pd:{ev-1}:"
    now = int(time.time() * 1000)
    for i in range(7):
        redis.cli("XADD", tag + "stream", "*", "type", "credit", "session",
                  "s" * 32, "credited_ms", 1000 * i, "at_ms", now + i)
    want = [eid for eid, _ in learner_stream(redis, "ev-1")]

    def walk(count, token=None):
        got, pages, start = [], 0, None
        while True:
            path = "/v1/learners/ev-1/events?count=%d" % count
            if start:
                path += "&from=" + start
            status, body = daemon.http_json("GET", path,
                                            token or platform_token())
            assert status == 200, body
            pages += 1
            got += body["events"]
            start = body["next"]
            if start is None:
                return got, pages

    for count in (7, 6, 1, 3, 100):
        got, pages = walk(count)
        assert [e["id"] for e in got] == want, count
        assert pages == -(-7 // count), count
    got, _ = walk(2, supervisor_token())
    assert got[3]["type"] == "credit" and got[3]["credited_ms"] == 3000
    assert got[3]["at_ms"] == now + 3 and got[3]["at"].endswith("Z")

    # from is exclusive: after the last id there is nothing.
    status, body = daemon.http_json(
        "GET", "/v1/learners/ev-1/events?from=" + want[-1], platform_token())
    assert body["events"] == [] and body["next"] is None
    status, body = daemon.http_json(
        "GET", "/v1/learners/ev-1/events?count=2&from=" + want[2],
        platform_token())
    assert [e["id"] for e in body["events"]] == want[3:5]
    assert body["next"] == want[4]

    status, body = daemon.http_json("GET", "/v1/learners/nobody/events",
                                    platform_token())
    assert status == 200 and body["events"] == [] and body["next"] is None
    for bad in ("count=0", "count=1001", "count=x", "from=abc",
                "from=1-", "from=-1"):
        status, body = daemon.http_json(
            "GET", "/v1/learners/ev-1/events?" + bad, platform_token())
        assert status == 400 and "error" in body, bad
    assert daemon.http_json("GET", "/v1/learners/bad%20id/events",
                            platform_token())[0] == 400
    assert daemon.http_json("GET", "/v1/learners/ev-1/events",
                            learner_token())[0] == 403


# ---------------------------------------------------------------------
# Events out: pd:events with a consumer group
# ---------------------------------------------------------------------

def read_until(consumer, want_types, start=">", timeout=15):
    """Reads until events of all want_types have come (or timeout)."""
    got = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        got += consumer.read(start, block=1000)
        if want_types <= {f["type"] for _, f in got}:
            break
    return got


def test_events_out_with_a_consumer_group(daemon_factory, redis):
    consumer = Consumer(redis)
    consumer.create()
    d = daemon_factory(FAST)
    enrol(d, "eo-1", A[0])

    async def first():
        c = await credit_then_stranger(d, "eo-1", org="org-eo",
                                       course="c-eo")
        sid = c.welcome.session_id
        await c.close()
        return sid
    sid = run(first())
    flag = open_flags(d, "eo-1")[0]
    review(d, flag["id"], "dismiss")

    got = read_until(consumer, {"credit", "flag", "review"})
    by_type = {}
    for _, f in got:
        by_type.setdefault(f["type"], []).append(f)
    credit = [f for f in by_type["credit"] if int(f["credited_ms"]) > 0][0]
    assert credit["learner_id"] == "eo-1" and credit["org"] == "org-eo"
    assert credit["course"] == "c-eo" and credit["session_id"] == sid
    assert len(credit["day"]) == 10 and int(credit["at_ms"]) > 0
    f = by_type["flag"][0]
    assert f["flag_id"] == flag["id"] and f["kind"] == "face_mismatch"
    assert f["evidence"] == ",".join(flag["evidence"])
    assert f["session_id"] == sid and f["org"] == "org-eo"
    r = by_type["review"][0]
    assert r["flag_id"] == flag["id"] and r["decision"] == "dismissed"
    assert r["credited_ms"] == f["withheld_ms"] and r["kind"] == f["kind"]
    # Each event names its entry in the learner's own stream.
    own = dict(learner_stream(redis, "eo-1"))
    for _, e in got:
        assert own[e["event_id"]]["type"] == e["type"]

    # Acknowledge all but the last: it stays pending for this consumer.
    ids = [eid for eid, _ in got]
    consumer.ack(ids[:-1])

    d.stop()
    d.start()
    consumer.reconnect()

    async def second():
        c = await verified(d, "eo-1", photo=A[3], org="org-eo",
                           course="c-eo")
        await study(c, 2.0)
        await check(c, A[4], pb.MATCH)
        await c.close()
    run(second())

    # After its own restart the consumer first takes what it was given
    # and did not acknowledge, then only what is new.
    pending = consumer.read("0")
    assert [eid for eid, _ in pending] == ids[-1:]
    consumer.ack(ids[-1:])
    later = read_until(consumer, {"credit"})
    consumer.ack([eid for eid, _ in later])
    assert later and all(eid > ids[-1] for eid, _ in later)
    assert all(f["type"] == "credit" for _, f in later)
    seen = ids + [eid for eid, _ in later]
    assert len(seen) == len(set(seen))
    assert seen == [eid for eid, _ in stream(redis, "pd:events")]
    assert consumer.conn.call("XPENDING", "pd:events", "platform")[0] == 0


def test_events_stream_is_capped(daemon_factory, redis):
    d = daemon_factory(dict(FAST, **{"redis.events_maxlen": "5"}))
    for i in range(300):
        redis.cli("XADD", "pd:events", "*", "type", "seed", "n", i)
    enrol(d, "cap-1", A[0])

    async def scenario():
        c = await credit_then_stranger(d, "cap-1")
        await c.close()
    run(scenario())
    # MAXLEN ~ trims whole nodes (100 entries by default), never below 5.
    length = int(redis.cli("XLEN", "pd:events"))
    assert 5 <= length <= 110, length
    types = [f["type"] for _, f in stream(redis, "pd:events")]
    assert types[-1] == "flag"


# ---------------------------------------------------------------------
# Exam results
# ---------------------------------------------------------------------

def test_exam_result_on_close(daemon_factory, redis):
    d = daemon_factory(dict(FAST, **{"policy.exam_check_interval": "1h"}))
    enrol(d, "ex-1", A[0])

    async def scenario():
        c = await verified(d, "ex-1", mode="exam", course="c-exam",
                           org="org-ex")
        await study(c, 2.0)
        await check(c, A[2], pb.MATCH)
        await check(c, blank_jpeg(), pb.NO_FACE)
        await check(c, B[0], pb.MISMATCH)
        await check(c, A[3], pb.MATCH)
        sid = c.welcome.session_id
        await c.close()
        # An ordinary session writes no exam result.
        c = await verified(d, "ex-1", photo=A[4], course="c-exam")
        await c.close()
        return sid
    sid = run(scenario())

    def result():
        return [f for _, f in learner_stream(redis, "ex-1")
                if f["type"] == "exam_result"]
    results = wait_until(result, 10, what="exam_result")
    assert len(results) == 1
    r = results[0]
    credited = sum(int(f["credited_ms"]) for _, f in
                   learner_stream(redis, "ex-1")
                   if f["type"] == "credit" and f["session"] == sid)
    assert r["session"] == sid and r["course"] == "c-exam"
    assert r["checks"] == "5" and r["matches"] == "3"
    assert r["flags"] == "face_mismatch:1,no_face:1"
    assert r["flags_total"] == "2"
    assert int(r["session_credited_ms"]) == credited > 0
    out = [f for _, f in stream(redis, "pd:events")
           if f["type"] == "exam_result"]
    assert len(out) == 1 and out[0]["learner_id"] == "ex-1"
    assert out[0]["org"] == "org-ex" and out[0]["session_id"] == sid
    assert out[0]["checks"] == "5"
    # Verdicts are in the learner's stream too, with the session's id.
    verdicts = [f["outcome"] for _, f in learner_stream(redis, "ex-1")
                if f["type"] == "verdict" and f["session"] == sid]
    assert verdicts == ["MATCH", "MATCH", "NO_FACE", "MISMATCH", "MATCH"]


# ---------------------------------------------------------------------
# Retention and erasure
# ---------------------------------------------------------------------

def test_evidence_expires_after_its_ttl(daemon_factory, redis):
    d = daemon_factory(dict(FAST, **{"policy.evidence_ttl": "2s"}))
    enrol(d, "ttl-1", A[0])

    async def scenario():
        c = await credit_then_stranger(d, "ttl-1")
        await c.close()
    run(scenario())
    flag = open_flags(d, "ttl-1")[0]
    eid = flag["evidence"][0]
    t0 = time.time()
    status, _, jpeg = d.http("GET", "/v1/evidence/" + eid,
                             supervisor_token())
    assert status == 200 and jpeg == face(B[0])
    wait_until(lambda: d.http("GET", "/v1/evidence/" + eid,
                              supervisor_token())[0] == 404, 6,
               what="evidence expiry")
    assert time.time() - t0 >= 1.0
    wait_until(lambda: redis.cli("EXISTS", "pd:evidx:" + eid) == "0", 2,
               what="index expiry")
    # The flag keeps naming it.
    status, body = d.http_json("GET", "/v1/flags/" + flag["id"],
                               supervisor_token())
    assert status == 200 and body["evidence"] == [eid]


def erase(daemon, learner, token=None):
    return daemon.http_json("DELETE", "/v1/learners/" + learner,
                            token or platform_token())


def test_erasure_keeps_the_ledger_and_needs_a_new_enrolment(daemon_factory,
                                                             redis):
    d = daemon_factory(FAST)
    enrol(d, "er-1", A[0], org="org-er")
    tag = "pd:{er-1}:"

    async def scenario():
        c = await credit_then_stranger(d, "er-1", org="org-er")
        flag = open_flags(d, "er-1")[0]
        eid = flag["evidence"][0]
        assert d.http("GET", "/v1/evidence/" + eid,
                      supervisor_token())[0] == 200
        assert redis.cli("SISMEMBER", tag + "evidence", eid) == "1"
        assert int(redis.cli("LLEN", tag + "sigs")) > 0
        # Every evidence key expires by itself.
        ev_keys = redis.cli("--scan", "--pattern", "pd:*evid*").split()
        assert tag + "evidence:" + eid in ev_keys
        for key in ev_keys:
            if key != tag + "evidence":
                assert int(redis.cli("PTTL", key)) > 0, key
        before = hours(d, "er-1")
        assert before["credited_seconds"] >= 1

        status, body = erase(d, "er-1")
        assert status == 200, body
        assert body["deleted"]["enrolment"] is True
        assert body["deleted"]["signatures"] is True
        assert body["deleted"]["evidence_images"] == 1
        assert body["recorded"] is True
        for key in ("enrol", "sigs", "evidence", "evidence:" + eid):
            assert redis.cli("EXISTS", tag + key) == "0", key
        # Nothing biometric of the learner is left anywhere in Redis.
        left = redis.cli("--scan", "--pattern", "pd:{er-1}:*").split()
        assert not [k for k in left
                    if k.startswith((tag + "enrol", tag + "sigs",
                                     tag + "evidence"))], left
        assert redis.cli("--scan", "--pattern", "pd:evidx:*").split() == []
        assert redis.cli("EXISTS", "pd:evidx:" + eid) == "0"
        assert d.http("GET", "/v1/evidence/" + eid,
                      supervisor_token())[0] == 404
        # The ledger stays: hours, the flag with its evidence id.
        assert hours(d, "er-1") == before
        status, kept = d.http_json("GET", "/v1/flags/" + flag["id"],
                                   supervisor_token())
        assert status == 200 and kept["evidence"] == [eid]
        entries = learner_stream(redis, "er-1")
        assert entries[-1][1]["type"] == "erasure"
        assert "enrolment" in [f["type"] for _, f in entries]
        assert not any("photo_sha256" in f for _, f in entries)
        assert any(f["type"] == "erasure" and f["learner_id"] == "er-1"
                   for _, f in stream(redis, "pd:events"))

        # The live session: no embedding, so no match and no credit.
        await c.snapshot(face(A[3]), 0)
        assert (await c.expect("verdict")).outcome == pb.NOT_ENROLLED
        await c.heartbeat()
        st = await c.status()
        assert st.state == pb.UNVERIFIED and st.reason == "not_enrolled"
        await study(c, 1.5)
        assert hours(d, "er-1") == before

        # Again: the same answer, nothing more recorded.
        status, body = erase(d, "er-1")
        assert status == 200 and body["recorded"] is False
        assert body["deleted"]["evidence_images"] == 0
        assert [f["type"] for _, f in learner_stream(redis, "er-1")].count(
            "erasure") == 1

        # A new enrolment, a match against it, and credit again.
        enrol(d, "er-1", A[5], org="org-er")
        await check(c, A[6], pb.MATCH)
        await study(c, 2.0)
        await check(c, A[7], pb.MATCH)
        assert hours(d, "er-1")["credited_seconds"] >= \
            before["credited_seconds"] + 1
        await c.close()
    run(scenario())

    # Someone never enrolled: recorded once, then nothing more.
    status, body = erase(d, "never-enrolled")
    assert status == 200 and body["recorded"] is True
    assert body["deleted"]["enrolment"] is False
    assert erase(d, "never-enrolled")[1]["recorded"] is False
    assert erase(d, "er-1", supervisor_token())[0] == 403
    assert erase(d, "bad%20id")[0] == 400
    assert d.http_json("GET", "/v1/learners/er-1",
                       platform_token())[0] == 405


def test_erased_learner_must_enrol_again(daemon_factory):
    d = daemon_factory(FAST)
    enrol(d, "er-2", A[0])
    assert erase(d, "er-2")[0] == 200

    async def scenario():
        c = await Learner.connect(d)
        await c.hello(learner_token(sub="er-2"))
        ch = await c.expect("challenge")
        await c.snapshot(face(A[1]), ch.challenge_id)
        assert (await c.expect("verdict")).outcome == pb.NOT_ENROLLED
        await c.close()
    run(scenario())
    assert hours(d, "er-2")["credited_seconds"] == 0
