#!/usr/bin/env bash
# Runs the browser tests (tests/browser/*.test.mjs) with node's own test
# runner: the learner client and the demo course page in headless
# Chromium against the real daemon and a real redis-server, and the
# supervisor console served by the daemon. Exits 77 (CTest's skip) when
# there is no Chromium; installs web/'s npm packages when they are missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
    echo "browser tests skipped: no Chromium at $CHROMIUM (apt-get install chromium)"
    exit 77
fi
for tool in node npm ffmpeg redis-server redis-cli; do
    command -v "$tool" >/dev/null || { echo "browser tests need $tool" >&2; exit 1; }
done

export PROCTORD_SOURCE="${PROCTORD_SOURCE:-$root}"
export PROCTORD_BIN="${PROCTORD_BIN:-$root/build/daemon/proctord}"
[ -x "$PROCTORD_BIN" ] || { echo "no daemon at $PROCTORD_BIN: build it first" >&2; exit 1; }

if [ ! -d "$root/web/node_modules" ]; then
    (cd "$root/web" && npm ci --no-audit --no-fund --loglevel=error)
fi

# Playwright never downloads a browser here: Debian's Chromium is used.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
cd "$root"
exec node --test "$here"/*.test.mjs
