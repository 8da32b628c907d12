"""The supervisor console's static files at /console/: types and headers,
GET and HEAD only, and no way out of server.console_dir, whatever the
path's encoding. Requests are written byte for byte on a socket, so no
client library tidies a path before the daemon sees it."""

import json
import os
import socket

import pytest

from conftest import SOURCE, run_binary

CONSOLE = os.path.join(SOURCE, "web", "console")


def raw(daemon, path, method="GET"):
    """Sends one request line as given; returns (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", daemon.http_port),
                                  timeout=10) as s:
        s.sendall(("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   "Connection: close\r\n\r\n" % (method, path))
                  .encode("latin-1"))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


@pytest.fixture
def console_dir(workdir):
    """A console folder with traps around it: a link out of it, a file
    outside it, one too large, one of a type never served."""
    d = os.path.join(workdir, "console")
    os.makedirs(os.path.join(d, "sub"))
    with open(os.path.join(d, "index.html"), "w") as f:
        f.write("<!doctype html><title>console</title>")
    with open(os.path.join(d, "app.js"), "w") as f:
        f.write("export {};\n")
    with open(os.path.join(d, "sub", "index.html"), "w") as f:
        f.write("sub")
    with open(os.path.join(d, "notes.txt"), "w") as f:
        f.write("not the console's")
    with open(os.path.join(d, "big.js"), "wb") as f:
        f.write(b"/" * (5 * 1024 * 1024))
    with open(os.path.join(workdir, "secret.html"), "w") as f:
        f.write("SECRET outside the folder")
    os.symlink(os.path.join(workdir, "secret.html"),
               os.path.join(d, "leak.html"))
    os.symlink("/etc", os.path.join(d, "etc"))
    return d


def test_serves_the_console_with_strict_headers(daemon_factory):
    d = daemon_factory({"server.console_dir": CONSOLE})

    status, h, body = raw(d, "/console/")
    assert status == 200
    assert h["content-type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="console.js">' in body
    csp = h["content-security-policy"]
    for part in ("default-src 'self'", "img-src 'self' blob:",
                 "connect-src 'self'"):
        assert part in csp, csp
    assert "unsafe" not in csp
    assert h["x-content-type-options"] == "nosniff"
    assert h["cache-control"] == "no-store"
    with open(os.path.join(CONSOLE, "index.html"), "rb") as f:
        assert raw(d, "/console/index.html")[2] == body == f.read()

    for name, ctype in (("console.js", "text/javascript; charset=utf-8"),
                        ("console.css", "text/css; charset=utf-8")):
        status, h, body = raw(d, "/console/" + name)
        assert status == 200 and h["content-type"] == ctype, (name, h)
        assert h["x-content-type-options"] == "nosniff"
        assert h["cache-control"] == "no-cache"
        assert int(h["content-length"]) == len(body) > 0

    status, h, _ = raw(d, "/console")
    assert status == 301 and h["location"] == "/console/"


def test_keep_alive_stays_in_step(daemon_factory):
    """A HEAD and a GET on one connection: each answer is framed by its
    Content-Length, so the second is read whole and in order."""
    d = daemon_factory({"server.console_dir": CONSOLE})
    with open(os.path.join(CONSOLE, "console.css"), "rb") as f:
        css = f.read()

    with socket.create_connection(("127.0.0.1", d.http_port),
                                  timeout=10) as s:
        s.sendall(b"HEAD /console/console.css HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /console/console.css HTTP/1.1\r\nHost: x\r\n"
                  b"Connection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 200"), rest[:80]
    assert rest.partition(b"\r\n\r\n")[2] == css


def test_head_and_methods(daemon_factory):
    d = daemon_factory({"server.console_dir": CONSOLE})

    status, h, body = raw(d, "/console/console.js", "HEAD")
    assert status == 200 and body == b""
    assert int(h["content-length"]) == os.path.getsize(
        os.path.join(CONSOLE, "console.js"))
    # Refusals to a HEAD carry no body either.
    status, h, body = raw(d, "/console/missing.js", "HEAD")
    assert status == 404 and body == b"" and int(h["content-length"]) > 0
    status, h, body = raw(d, "/console/%2e%2e/x", "HEAD")
    assert status == 400 and body == b""
    for method in ("POST", "PUT", "DELETE"):
        status, h, body = raw(d, "/console/index.html", method)
        assert status == 405, method
        assert h["allow"] == "GET, HEAD"
        assert "error" in json.loads(body)


# Raw, encoded, double-encoded, backslashes, doubled slashes, NULs, dots.
ESCAPES = [
    "/console/../etc/passwd",
    "/console/../../../../../../etc/passwd",
    "/console/sub/../../etc/passwd",
    "/console/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/console/%2E%2E%2F%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/console/.%2e/.%2e/.%2e/etc/passwd",
    "/console/%252e%252e/%252e%252e/%252e%252e/etc/passwd",
    "/console/%25252e%25252e%25252fetc%25252fpasswd",
    "/console/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/console/..%5c..%5c..%5cetc%5cpasswd",
    "/console/..\\..\\..\\etc\\passwd",
    "/console//etc/passwd",
    "/console///etc/passwd",
    "/console/%2fetc%2fpasswd",
    "/console/%2F%2Fetc%2Fpasswd",
    "/console/index.html%00.png",
    "/console/%00",
    "/console/./index.html",
    "/console/.htaccess",
    "/console/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "/console/etc/passwd",
    "/console/leak.html",
    "/console/notes.txt",
    "/console/big.js",
    "/console/missing.js",
    "/console/sub",
]


def test_paths_cannot_leave_the_folder(daemon_factory, console_dir):
    d = daemon_factory({"server.console_dir": console_dir})

    assert raw(d, "/console/")[0] == 200
    assert raw(d, "/console/sub/") == raw(d, "/console/sub/index.html")
    assert raw(d, "/console/sub/")[2] == b"sub"
    for path in ESCAPES:
        status, h, body = raw(d, path)
        assert status in (400, 403, 404), (path, status, body[:80])
        assert b"root:" not in body and b"SECRET" not in body, path
        if status != 400 or h.get("content-type") == "application/json":
            assert "error" in json.loads(body), (path, body[:80])
    # Each refusal for its own reason.
    assert raw(d, "/console/%2e%2e/%2e%2e/etc/passwd")[0] == 400
    assert raw(d, "/console/%252e%252e/etc/passwd")[0] == 400
    assert raw(d, "/console/leak.html")[0] == 403
    assert raw(d, "/console/big.js")[0] == 403
    assert raw(d, "/console/notes.txt")[0] == 404
    assert raw(d, "/console/missing.js")[0] == 404
    # Not the console's prefix: the API's 404.
    status, _, body = raw(d, "/consoles")
    assert status == 404 and json.loads(body)["error"] == "no such resource"
    assert d.alive()


def test_missing_folder_is_a_404_not_a_failure(daemon_factory, workdir):
    d = daemon_factory({"server.console_dir": os.path.join(workdir, "none")})

    status, _, body = raw(d, "/console/")
    assert status == 404 and "error" in json.loads(body)
    assert d.health() == 200
    d.wait_log("console folder missing")


def test_empty_console_dir_is_a_config_error(workdir):
    path = os.path.join(workdir, "bad.conf")
    with open(path, "w") as f:
        f.write("[server]\nconsole_dir =\n[auth]\n"
                "jwt_secret = integration-secret-0123456789\n")
    r = run_binary("-c", path)
    assert r.returncode == 2
    assert b"server.console_dir" in r.stderr, r.stderr
