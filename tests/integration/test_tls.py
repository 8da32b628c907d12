"""TLS on both listeners: server.tls_cert and server.tls_key make the
learner port speak wss:// and the API port https://. The certificate is a
self-signed one made here with the openssl command; clients trust exactly
that certificate. Plain-text clients on the TLS ports must fail without
harming the daemon, and a certificate with the wrong key must stop it at
start with a message naming the key."""

import asyncio
import http.client
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
import websockets

from conftest import (VALGRIND, Learner, learner_token, platform_token,
                      run, run_binary)

# A handshake under memcheck takes seconds: OpenSSL runs some 50 times
# slower there.
TLS_TIMEOUT = 60 if VALGRIND else 10


def make_pair(directory, name):
    """A self-signed P-256 certificate for 127.0.0.1 and its key; returns
    (cert path, key path)."""
    cert = os.path.join(directory, name + ".crt")
    key = os.path.join(directory, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out",
                    cert], check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture
def pair(workdir):
    return make_pair(workdir, "server")


@pytest.fixture
def tls_daemon(daemon_factory, pair):
    cert, key = pair
    return daemon_factory({"server.tls_cert": cert, "server.tls_key": key})


def client_context(cert):
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = True
    return ctx


def https(daemon, cert, method, path, token=None, timeout=TLS_TIMEOUT):
    """(status, parsed JSON body) over https:// to the API port."""
    req = urllib.request.Request("https://127.0.0.1:%d%s" %
                                 (daemon.http_port, path), method=method)
    if token is not None:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout,
                                    context=client_context(cert)) as resp:
            return resp.status, json.loads(resp.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


async def wss_learner(daemon, cert):
    ws = await websockets.connect(
        "wss://127.0.0.1:%d/v1/learn" % daemon.ws_port,
        subprotocols=["proctor.v1"], ssl=client_context(cert), max_size=None,
        ping_interval=None, open_timeout=TLS_TIMEOUT, close_timeout=2)
    return Learner(ws)


def test_learner_over_wss(tls_daemon, pair):
    async def scenario():
        c = await wss_learner(tls_daemon, pair[0])
        welcome = await c.hello(learner_token(sub="tls-learner"))
        assert len(welcome.session_id) > 0
        for _ in range(3):
            await c.heartbeat()
            await c.status()
            assert c.last_ack == c.seq
        await c.close()
    run(scenario())
    tls_daemon.wait_log("session started", "learner=tls-learner")


def test_api_over_https(tls_daemon, pair):
    cert = pair[0]
    status, body = https(tls_daemon, cert, "GET", "/healthz")
    assert status == 200 and body["status"] == "ok"
    status, body = https(tls_daemon, cert, "GET",
                         "/v1/learners/tls-learner/hours?course=course-1",
                         platform_token())
    assert status == 200 and body["learner_id"] == "tls-learner"
    status, body = https(tls_daemon, cert, "GET",
                         "/v1/learners/tls-learner/hours?course=course-1")
    assert status == 401
    # A client that trusts some other certificate refuses this server.
    other = make_pair(tls_daemon.workdir, "other")[0]
    with pytest.raises(urllib.error.URLError) as e:
        https(tls_daemon, other, "GET", "/healthz")
    assert isinstance(e.value.reason, ssl.SSLCertVerificationError)


def test_plain_text_on_tls_ports_fails(tls_daemon, pair):
    async def plain_ws():
        with pytest.raises((websockets.InvalidHandshake,
                            websockets.ConnectionClosed, OSError,
                            asyncio.TimeoutError)):
            ws = await websockets.connect(
                "ws://127.0.0.1:%d/v1/learn" % tls_daemon.ws_port,
                subprotocols=["proctor.v1"], open_timeout=TLS_TIMEOUT)
            await ws.close()
    run(plain_ws())

    conn = http.client.HTTPConnection("127.0.0.1", tls_daemon.http_port,
                                      timeout=TLS_TIMEOUT)
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.request("GET", "/healthz")
        conn.getresponse().read()
    conn.close()

    # Both refusals were the clients' problem only.
    assert tls_daemon.alive()
    assert https(tls_daemon, pair[0], "GET", "/healthz")[0] == 200

    async def still_serves():
        c = await wss_learner(tls_daemon, pair[0])
        await c.hello()
        await c.close()
    run(still_serves())


def start_refused(daemon_factory, overrides):
    """Runs a daemon that must refuse to start; returns its stderr."""
    d = daemon_factory(overrides, start=False)
    out = run_binary("-c", d.config_path)
    assert out.returncode == 2, out
    return out.stderr.decode()


def test_wrong_key_refused(daemon_factory, pair, workdir):
    _, other_key = make_pair(workdir, "other")
    err = start_refused(daemon_factory, {"server.tls_cert": pair[0],
                                         "server.tls_key": other_key})
    assert "server.tls_key: \"%s\" does not match server.tls_cert" % other_key in err


def test_cert_and_key_come_together(daemon_factory, pair, workdir):
    err = start_refused(daemon_factory, {"server.tls_cert": pair[0]})
    assert "server.tls_key: required with server.tls_cert" in err
    err = start_refused(daemon_factory, {"server.tls_key": pair[1]})
    assert "server.tls_cert: required with server.tls_key" in err

    missing = os.path.join(workdir, "missing.key")
    err = start_refused(daemon_factory, {"server.tls_cert": pair[0],
                                         "server.tls_key": missing})
    assert "server.tls_key: cannot read \"%s\"" % missing in err

    # A file that is there but holds no certificate.
    junk = os.path.join(workdir, "junk.crt")
    with open(junk, "w") as f:
        f.write("not a certificate\n")
    err = start_refused(daemon_factory, {"server.tls_cert": junk,
                                         "server.tls_key": pair[1]})
    assert "server.tls_cert: cannot load" in err
