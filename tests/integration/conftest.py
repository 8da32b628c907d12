"""Integration harness: a real redis-server and the real proctord binary on
free loopback ports, the protocol compiled from proto/proctor.proto, HS256
tokens made the way a platform makes them, and a WebSocket client."""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest
import websockets

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("PROCTORD_SOURCE", os.path.normpath(
    os.path.join(HERE, "..", "..")))
SHARED = os.environ.get("PROCTORD_SHARED") or os.path.normpath(
    os.path.join(SOURCE, "..", "shared"))
BIN = os.environ.get("PROCTORD_BIN") or os.path.join(
    SOURCE, "build", "daemon", "proctord")
SECRET = "integration-secret-0123456789"


def _sanitized(path):
    """True for a binary built with AddressSanitizer, whose quarantine and
    shadow memory make RSS say nothing about leaks (LSan reports those)."""
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


SANITIZED = _sanitized(BIN)


# ---------------------------------------------------------------------
# Valgrind: PROCTORD_VALGRIND=1 runs every Daemon under memcheck. Each
# process writes its report to valgrind.PID.log beside proctord.log; the
# daemon_factory fixture stops the daemons with SIGTERM (a SIGKILL leaves
# no report) and fails the test on any error or definite leak.
# ---------------------------------------------------------------------

VALGRIND = os.environ.get("PROCTORD_VALGRIND") == "1"
VALGRIND_EXIT = 97
# Memcheck runs the daemon some 20-50 times slower: start-up (the models
# load) and a clean stop (the leak scan) need far longer than natively.
START_TIMEOUT = 240 if VALGRIND else 30
STOP_TIMEOUT = 120 if VALGRIND else 10


def daemon_command(config_path, workdir):
    """The argv that starts proctord with config_path, under memcheck when
    PROCTORD_VALGRIND=1."""
    if not VALGRIND:
        return [BIN, "-c", config_path]
    return ["valgrind", "--tool=memcheck", "--leak-check=full",
            "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite",
            "--error-exitcode=%d" % VALGRIND_EXIT, "--num-callers=30",
            "--suppressions=" + os.path.join(SOURCE, "tests",
                                             "valgrind.supp"),
            "--log-file=" + os.path.join(workdir, "valgrind.%p.log"),
            BIN, "-c", config_path]


def valgrind_problems(workdir):
    """The reports under workdir that show errors or definite leaks, as
    one text (empty when clean). A process killed by SIGKILL left only a
    partial report with no summary, which says nothing either way."""
    bad = []
    for name in sorted(os.listdir(workdir)):
        if not (name.startswith("valgrind.") and name.endswith(".log")):
            continue
        with open(os.path.join(workdir, name), errors="replace") as f:
            text = f.read()
        errors = [line for line in text.splitlines()
                  if "ERROR SUMMARY:" in line and
                  not line.split("ERROR SUMMARY:")[1].strip().startswith("0 ")]
        if errors:
            bad.append("%s:\n%s" % (name, text))
    return "\n".join(bad)


def _compile_proto():
    out = tempfile.mkdtemp(prefix="proctord-pb-")
    subprocess.run(["protoc", "--python_out=" + out,
                    "-I" + os.path.join(SOURCE, "proto"),
                    os.path.join(SOURCE, "proto", "proctor.proto")],
                   check=True)
    sys.path.insert(0, out)
    import proctor_pb2  # noqa: E402
    return proctor_pb2


pb = _compile_proto()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Polls predicate until it returns a true value; returns it."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError("%s not met within %ss" % (what, timeout))
        time.sleep(interval)


def run_binary(*args, timeout=10):
    """Runs proctord to completion (a hang fails); a CompletedProcess."""
    return subprocess.run([BIN] + list(args), capture_output=True,
                          timeout=timeout)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(secret=SECRET, alg="HS256", header=None, **claims):
    """An HS256 JWT over claims; exp defaults to an hour from now."""
    now = int(time.time())
    body = {"iat": now, "exp": now + 3600}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    head = header or {"alg": alg, "typ": "JWT"}
    signing = (b64url(json.dumps(head).encode()) + "." +
               b64url(json.dumps(body).encode()))
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64url(sig)


def learner_token(sub="learner-1", course="course-1", org="org-1",
                  role="manager", **extra):
    return make_token(sub=sub, course=course, org=org, role=role, **extra)


def platform_token(**extra):
    return make_token(sub="platform-1", scope="platform", **extra)


def supervisor_token(**extra):
    return make_token(sub="supervisor-1", scope="supervisor", **extra)


class Redis:
    """A private redis-server with AOF in its own directory."""

    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", self.dir, "--appendonly", "yes", "--appendfsync",
             "everysec", "--save", "", "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if self.cli("PING") == "PONG":
                    return
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def cli(self, *args):
        out = subprocess.run(["redis-cli", "-p", str(self.port), "--raw"] +
                             [str(a) for a in args], check=True,
                             capture_output=True, timeout=10)
        return out.stdout.decode().rstrip("\n")

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port


def _event_lib_override():
    """PROCTORD_EVENT_LIB=poll|uv|ev runs every test on that
    server.event_lib instead of the daemon's default."""
    lib = os.environ.get("PROCTORD_EVENT_LIB")
    return {"event_lib": lib} if lib else {}


class Daemon:
    """The real proctord on free ports, with a config written for it."""

    def __init__(self, workdir, redis_address, overrides=None):
        self.workdir = workdir
        self.ws_port = free_port()
        self.http_port = free_port()
        self.config_path = os.path.join(workdir, "proctord.conf")
        self.log_path = os.path.join(workdir, "proctord.log")
        sections = {
            "server": {"ws_listen": "127.0.0.1:%d" % self.ws_port,
                       "http_listen": "127.0.0.1:%d" % self.http_port,
                       "threads": "2"},
            "redis": {"address": redis_address,
                      "data_dir": os.path.join(workdir, "embedded")},
            "auth": {"jwt_secret": SECRET},
            "log": {"level": "verbose"},
            "vision": {"models_dir": os.path.join(SHARED, "models"),
                       "workers": "2"},
        }
        sections["server"].update(_event_lib_override())
        for key, value in (overrides or {}).items():
            section, name = key.split(".", 1)
            if value is None:
                sections.get(section, {}).pop(name, None)
            else:
                sections.setdefault(section, {})[name] = value
        self.sections = sections
        self.write_config()
        self.proc = None

    def write_config(self):
        with open(self.config_path, "w") as f:
            for section, keys in self.sections.items():
                f.write("[%s]\n" % section)
                for k, v in keys.items():
                    f.write("%s = %s\n" % (k, v))

    def start(self, wait=True):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            daemon_command(self.config_path, self.workdir),
            stdout=self.log, stderr=self.log)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=START_TIMEOUT):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("proctord exited: %s" % self.read_log())
            try:
                with socket.create_connection(("127.0.0.1", self.ws_port),
                                              timeout=0.2):
                    pass
                with socket.create_connection(("127.0.0.1", self.http_port),
                                              timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("proctord did not start: %s" % self.read_log())

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_log(self, *needles, timeout=10):
        """Waits until one log line holds every needle; returns it."""
        deadline = time.time() + timeout
        while True:
            for line in self.read_log().splitlines():
                if all(n in line for n in needles):
                    return line
            if time.time() > deadline:
                raise AssertionError("no log line with %r within %ss:\n%s" %
                                     (needles, timeout, self.read_log()))
            time.sleep(0.05)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        self.log.close()
        return rc

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    @property
    def ws_url(self):
        return "ws://127.0.0.1:%d/v1/learn" % self.ws_port

    def http(self, method, path, token=None, body=None, headers=None,
             timeout=10):
        """Returns (status, headers, body bytes)."""
        req = urllib.request.Request(
            "http://127.0.0.1:%d%s" % (self.http_port, path), method=method,
            data=body)
        if token is not None:
            req.add_header("Authorization", "Bearer " + token)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def http_json(self, method, path, token=None, body=None, headers=None):
        status, _, data = self.http(method, path, token, body, headers)
        return status, json.loads(data.decode()) if data else None

    def metric(self, name):
        """The sum of a metric's samples; name may carry labels, as in
        'proctord_closes_total{code="4401"}'."""
        _, _, data = self.http("GET", "/metrics")
        total = 0.0
        for line in data.decode().splitlines():
            if line.startswith(name + " ") or (
                    "{" not in name and line.startswith(name + "{")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def health(self, timeout=5):
        """The /healthz status code, or None when nothing answers."""
        try:
            return self.http("GET", "/healthz", timeout=timeout)[0]
        except OSError:
            return None


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="proctord-it-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def redis(workdir):
    r = Redis(workdir)
    yield r
    r.kill()


@pytest.fixture
def daemon_factory(workdir, redis):
    started = []

    def make(overrides=None, start=True, redis_address=None):
        d = Daemon(tempfile.mkdtemp(dir=workdir), redis_address or
                   redis.address, overrides)
        started.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in started:
        d.stop(signal.SIGTERM if VALGRIND else signal.SIGKILL,
               timeout=STOP_TIMEOUT)
    if VALGRIND:
        problems = "".join(valgrind_problems(d.workdir) for d in started)
        assert not problems, "valgrind found problems:\n" + problems


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Learner:
    """One learner's WebSocket: seq numbering, typed sends and receives."""

    def __init__(self, ws):
        self.ws = ws
        self.seq = 0
        self.welcome = None

    @classmethod
    async def connect(cls, daemon, subprotocol="proctor.v1", path="/v1/learn"):
        url = "ws://127.0.0.1:%d%s" % (daemon.ws_port, path)
        ws = await websockets.connect(
            url, subprotocols=[subprotocol] if subprotocol else None,
            max_size=None, ping_interval=None, open_timeout=10,
            close_timeout=2)
        return cls(ws)

    async def send(self, **body):
        self.seq += 1
        msg = pb.ClientMessage(seq=self.seq, **body)
        await self.ws.send(msg.SerializeToString())
        return self.seq

    async def send_seq(self, seq, **body):
        """Sends with an explicit seq, which may repeat an earlier one."""
        self.seq = max(self.seq, seq)
        await self.ws.send(pb.ClientMessage(seq=seq, **body)
                           .SerializeToString())
        return seq

    async def send_raw(self, data):
        """Sends data as it is: bytes as a binary frame, str as text."""
        await self.ws.send(data)

    async def hello(self, token=None, resume=""):
        await self.send(hello=pb.Hello(token=token or learner_token(),
                                       client="pytest",
                                       resume_session_id=resume))
        self.welcome = await self.expect("welcome")
        return self.welcome

    async def heartbeat(self, **fields):
        hb = dict(page_visible=True, window_focused=True, input_events=1)
        hb.update(fields)
        await self.send(heartbeat=pb.Heartbeat(
            client_time_ms=int(time.time() * 1000), **hb))

    async def snapshot(self, jpeg, challenge_id, frames=None):
        await self.send(snapshot=pb.Snapshot(
            jpeg=jpeg, challenge_id=challenge_id,
            captured_at_ms=int(time.time() * 1000), frames=frames or []))

    async def recv(self, timeout=10):
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        msg = pb.ServerMessage()
        msg.ParseFromString(data)
        return msg

    async def expect(self, kind, timeout=10, skip=("challenge", "status")):
        """Receives until a message of kind arrives; others in skip are
        passed over (and challenges remembered)."""
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError("no %s within %ss" % (kind, timeout))
            try:
                msg = await self.recv(left)
            except asyncio.TimeoutError:
                raise AssertionError("no %s within %ss" % (kind, timeout)) \
                    from None
            which = msg.WhichOneof("body")
            if which == "challenge":
                self.last_challenge = msg.challenge
            if which == kind:
                self.last_ack = msg.ack_seq
                return getattr(msg, kind)
            if which not in skip:
                raise AssertionError("expected %s, got %s" % (kind, msg))

    async def status(self, timeout=10):
        """The next Status (challenges passed over); checks nothing."""
        return await self.expect("status", timeout, skip=("challenge",))

    async def silent(self, timeout=1.0):
        """True when nothing arrives within timeout (and the connection
        stays open)."""
        try:
            msg = await self.recv(timeout)
        except asyncio.TimeoutError:
            return True
        if msg.WhichOneof("body") == "challenge":
            return await self.silent(timeout)
        return False

    async def close_info(self, timeout=15):
        """Reads until the server closes. Returns (close code, the Error
        messages received on the way); the code is None when the
        connection ended without a close frame."""
        errors = []
        try:
            while True:
                data = await asyncio.wait_for(self.ws.recv(), timeout)
                msg = pb.ServerMessage()
                msg.ParseFromString(data)
                if msg.WhichOneof("body") == "error":
                    errors.append(msg.error)
        except websockets.ConnectionClosed as e:
            return (e.rcvd.code if e.rcvd is not None else None), errors

    async def expect_close(self, code, timeout=15, error=True):
        """Asserts the server closes with code, after an Error carrying
        the same code (required when error is true, checked when one is
        sent anyway)."""
        got, errors = await self.close_info(timeout)
        assert got == code, "close code %r, wanted %r (errors %r)" % (
            got, code, [(e.code, e.message) for e in errors])
        if error:
            assert errors, "no Error before close %d" % code
        for e in errors:
            assert e.code == code, "Error code %d before close %d (%s)" % (
                e.code, code, e.message)
        return errors

    async def closed_code(self, timeout=15):
        """Reads until the server closes; returns its close code."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed as e:
            return e.rcvd.code if e.rcvd is not None else None

    async def close(self):
        await asyncio.wait_for(self.ws.close(), 10)


def face(name):
    """Bytes of a photograph in the shared data set."""
    with open(os.path.join(SHARED, "data", "faces", name), "rb") as f:
        return f.read()
