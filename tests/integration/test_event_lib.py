"""server.event_lib: the same daemon on lws's poll() loop, on libuv and on
libev. Each loop carries the behaviours that depend on it: wake-ups from
the core (Welcome, Status, take-over), lws timers (the Hello deadline),
the rate and size limits, SIGHUP, and the drain on SIGTERM and SIGINT
(libuv or libev must not take the signals from the core).

Known under uv (lws 4.1.6): lws shuts the socket without the close frame
that should follow our Error, so a client sees the Error (or, still
sending, a reset) but no close code; closing() below accepts that for uv
only, and bench/README.md says why uv is not the default."""

import os
import shutil
import signal
import subprocess
import time

import pytest
import websockets

from conftest import BIN, Daemon, Learner, learner_token, run, run_binary

LIBS = ["poll", "uv", "ev"]


async def closing(c, lib, code):
    """The server closes c with code: the close frame, and before it an
    Error with the same code for our own (4xxx) codes."""
    got, errors = await c.close_info(timeout=6)
    codes = [e.code for e in errors]
    if lib == "uv":
        # Without the close frame a client still sending (the flood) can
        # get a reset and lose the Error too; the close itself must come.
        assert got in (code, None), got
        assert codes in ([], [code]) if code >= 4000 else codes == [], codes
        return
    assert got == code, (got, errors)
    if code >= 4000:
        assert codes == [code], errors


def _daemon(daemon_factory, lib, **extra):
    overrides = {"server.event_lib": lib}
    overrides.update(extra)
    d = daemon_factory(overrides)
    d.wait_log("proctord started", "event_lib=%s" % lib)
    return d


@pytest.mark.parametrize("lib", LIBS)
def test_sessions_limits_and_takeover(daemon_factory, lib):
    d = _daemon(daemon_factory, lib, **{"server.hello_timeout": "1s",
                                        "server.msg_rate": "5",
                                        "server.msg_burst": "10",
                                        "server.max_frame": "4KiB"})

    async def scenario():
        token = learner_token(sub="evlib-%s" % lib)
        first = await Learner.connect(d)
        await first.hello(token)
        await first.heartbeat()
        await first.status()

        # The Hello deadline is an lws timer on the thread's loop.
        t0 = time.monotonic()
        mute = await Learner.connect(d)
        await closing(mute, lib, 4401)
        took = time.monotonic() - t0
        assert 0.8 <= took <= 2.5, "closed after %.2fs" % took

        big = await Learner.connect(d)
        await big.hello(learner_token(sub="evlib-big-%s" % lib))
        await big.send_raw(b"\x00" * 8192)
        await closing(big, lib, 4413)

        flood = await Learner.connect(d)
        await flood.hello(learner_token(sub="evlib-flood-%s" % lib))
        try:
            for _ in range(50):
                await flood.heartbeat()
        except websockets.ConnectionClosed:
            pass
        await closing(flood, lib, 4429)

        # The close comes from the core, through the thread's queue and a
        # lws_cancel_service() wake-up.
        second = await Learner.connect(d)
        await second.hello(token)
        await closing(first, lib, 4409)
        await second.heartbeat()
        await second.status()
        await second.close()

    run(scenario())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT],
                         ids=["sigterm", "sigint"])
@pytest.mark.parametrize("lib", LIBS)
def test_sighup_then_drain(daemon_factory, lib, sig):
    d = _daemon(daemon_factory, lib)
    d.sections.setdefault("policy", {})["heartbeat_interval"] = "5s"
    d.write_config()
    d.send_signal(signal.SIGHUP)
    d.wait_log("policy reloaded", "policy.heartbeat_interval")
    assert d.alive()

    async def scenario():
        learners = []
        for i in range(3):
            c = await Learner.connect(d)
            w = await c.hello(learner_token(sub="drain-%s-%d" % (lib, i)))
            assert w.heartbeat_interval_ms == 5000
            learners.append(c)
        t0 = time.monotonic()
        d.send_signal(sig)
        for c in learners:
            await closing(c, lib, 1001)
        return t0

    t0 = run(scenario())
    rc = d.proc.wait(timeout=max(0.1, 5 - (time.monotonic() - t0)))
    assert rc == 0
    assert time.monotonic() - t0 < 5
    log = d.read_log()
    assert "proctord stopped" in log
    assert "libuv loop left with open handles" not in log


def test_unknown_event_lib_is_a_config_error(workdir):
    d = Daemon(workdir, "127.0.0.1:1", {"server.event_lib": "epoll"})
    p = run_binary("-c", d.config_path)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert b"server.event_lib" in p.stderr, p.stderr


# A dlopen() that refuses lws's event-library plugins, as on a host where
# libwebsockets-evlib-ev is not installed.
NO_EVLIB_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
void *dlopen(const char *file, int flags)
{
    void *(*real)(const char *, int) =
        (void *(*)(const char *, int))dlsym(RTLD_NEXT, "dlopen");
    if (file != NULL && strstr(file, "evlib") != NULL)
        return NULL;
    return real(file, flags);
}
"""


def test_missing_plugin_fails_naming_the_key(workdir, redis):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the dlopen shim")
    src = os.path.join(workdir, "no_evlib.c")
    lib = os.path.join(workdir, "no_evlib.so")
    with open(src, "w") as f:
        f.write(NO_EVLIB_SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-o", lib, src, "-ldl"],
                   check=True)
    d = Daemon(workdir, redis.address, {"server.event_lib": "ev"})
    env = dict(os.environ, LD_PRELOAD=lib)
    # The sanitizer runtime wants to be first in the library list.
    env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") +
                           ":verify_asan_link_order=0").lstrip(":")
    p = subprocess.run([BIN, "-c", d.config_path], env=env,
                       capture_output=True, timeout=60)
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])
    # The daemon's own line (a sanitizer build adds its report after it).
    lines = [l for l in p.stderr.decode(errors="replace").splitlines()
             if l.startswith("proctord: ")]
    assert len(lines) == 1, p.stderr[-2000:]
    assert "server.event_lib = ev" in lines[0], lines[0]
    assert "libwebsockets-evlib-ev" in lines[0], lines[0]
