// The browser tests' harness: a private redis-server and the real proctord
// on free loopback ports, HS256 tokens made as a platform makes them, the
// test media made with ffmpeg under a temporary folder, a static server for
// the demo course page (another origin than the daemon, as on a real
// platform) and headless Chromium through playwright-core, with a fake
// camera playing a y4m file.
import { spawn, spawnSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createReadStream, mkdtempSync, openSync, readFileSync, rmSync, statSync,
         writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as netServer } from 'node:net';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const SOURCE = process.env.PROCTORD_SOURCE || resolve(here, '..', '..');
export const SHARED = process.env.PROCTORD_SHARED || resolve(SOURCE, '..', 'shared');
export const BIN = process.env.PROCTORD_BIN || join(SOURCE, 'build', 'daemon', 'proctord');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const SECRET = 'browser-test-secret-0123456789';
// The npm packages live in web/node_modules, beside web/package.json.
export const webRequire = createRequire(join(SOURCE, 'web', 'package.json'));

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function tempDir(prefix) {
    return mkdtempSync(join(tmpdir(), prefix));
}

export async function freePort() {
    return new Promise((res, rej) => {
        const s = netServer();
        s.unref();
        s.on('error', rej);
        s.listen(0, '127.0.0.1', () => {
            const { port } = s.address();
            s.close(() => res(port));
        });
    });
}

// Polls fn until it returns something truthy; returns that.
export async function waitFor(fn, { timeout = 30000, interval = 100, what = 'condition' } = {}) {
    const end = Date.now() + timeout;
    for (;;) {
        const v = await fn();
        if (v)
            return v;
        if (Date.now() > end)
            throw new Error(`${what} not met within ${timeout / 1000} s`);
        await sleep(interval);
    }
}

/* ---- Tokens ------------------------------------------------------------ */

const b64url = (buf) => Buffer.from(buf).toString('base64url');

export function makeToken(claims) {
    const now = Math.floor(Date.now() / 1000);
    const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
    const body = b64url(JSON.stringify({ iat: now, exp: now + 3600, ...claims }));
    const sig = createHmac('sha256', SECRET).update(`${head}.${body}`).digest();
    return `${head}.${body}.${b64url(sig)}`;
}

export const learnerToken = (sub, course, org) =>
    makeToken({ sub, course, org, role: 'manager' });
export const platformToken = () => makeToken({ sub: 'platform-1', scope: 'platform' });
export const supervisorToken = () => makeToken({ sub: 'supervisor-1', scope: 'supervisor' });

/* ---- Media ------------------------------------------------------------- */

export function ffmpeg(...args) {
    const r = spawnSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', ...args],
                        { encoding: 'utf8' });
    if (r.status !== 0)
        throw new Error(`ffmpeg ${args.join(' ')} failed: ${r.stderr || r.error}`);
}

/* ---- Redis and the daemon ---------------------------------------------- */

export class Redis {
    async start(dir) {
        this.port = await freePort();
        this.proc = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1',
                                           '--dir', dir, '--save', '', '--appendonly', 'no'],
                          { stdio: 'ignore' });
        await waitFor(() => this.cli('PING') === 'PONG', { timeout: 10000, what: 'redis' });
        return this;
    }

    cli(...args) {
        const r = spawnSync('redis-cli', ['-p', String(this.port), '--raw', ...args],
                            { encoding: 'utf8' });
        return (r.stdout || '').trim();
    }

    stop() {
        if (this.proc)
            this.proc.kill('SIGKILL');
        this.proc = null;
    }
}

export class Daemon {
    constructor(dir, redisAddress, overrides = {}) {
        this.dir = dir;
        this.overrides = overrides;
        this.redisAddress = redisAddress;
        this.configPath = join(dir, 'proctord.conf');
        this.logPath = join(dir, 'proctord.log');
    }

    writeConfig() {
        const sections = {
            server: { ws_listen: `127.0.0.1:${this.wsPort}`,
                      http_listen: `127.0.0.1:${this.httpPort}`, threads: '2',
                      console_dir: join(SOURCE, 'web', 'console') },
            redis: { address: this.redisAddress, data_dir: join(this.dir, 'embedded') },
            auth: { jwt_secret: SECRET },
            log: { level: 'verbose' },
            vision: { models_dir: join(SHARED, 'models'), workers: '2' },
        };
        for (const [key, value] of Object.entries(this.overrides)) {
            const [section, name] = key.split('.');
            (sections[section] ||= {})[name] = value;
        }
        let text = '';
        for (const [section, keys] of Object.entries(sections)) {
            text += `[${section}]\n`;
            for (const [k, v] of Object.entries(keys))
                text += `${k} = ${v}\n`;
        }
        writeFileSync(this.configPath, text);
    }

    // Starts on free ports; a restart keeps the ports it had.
    async start() {
        this.wsPort ||= await freePort();
        this.httpPort ||= await freePort();
        this.writeConfig();
        const log = openSync(this.logPath, 'a');
        this.proc = spawn(BIN, ['-c', this.configPath], { stdio: ['ignore', log, log] });
        this.exited = new Promise((res) => this.proc.on('exit', res));
        await waitFor(async () => {
            if (this.proc.exitCode !== null)
                throw new Error('proctord exited:\n' + this.log());
            try {
                return (await fetch(`${this.http}/healthz`)).status === 200;
            } catch {
                return false;
            }
        }, { timeout: 30000, what: 'proctord ready' });
        return this;
    }

    // Changes [policy] keys and reloads them with SIGHUP.
    async reload(overrides) {
        const before = this.log().split('policy reloaded').length;
        Object.assign(this.overrides, overrides);
        this.writeConfig();
        this.proc.kill('SIGHUP');
        await waitFor(() => this.log().split('policy reloaded').length > before,
                      { timeout: 10000, what: 'policy reloaded' });
    }

    log() {
        try {
            return readFileSync(this.logPath, 'utf8');
        } catch {
            return '';
        }
    }

    get http() {
        return `http://127.0.0.1:${this.httpPort}`;
    }

    get ws() {
        return `ws://127.0.0.1:${this.wsPort}/v1/learn`;
    }

    async api(method, path, token, body, type) {
        const headers = {};
        if (token)
            headers.Authorization = 'Bearer ' + token;
        if (type)
            headers['Content-Type'] = type;
        const res = await fetch(this.http + path, { method, headers, body });
        const text = await res.text();
        let json = null;
        try {
            json = JSON.parse(text);
        } catch {
            // not JSON
        }
        return { status: res.status, json, text };
    }

    // SIGTERM; returns the exit status (null when killed), which is 0
    // after a clean drain, and not 0 when a sanitizer found something.
    async stop() {
        if (!this.proc)
            return null;
        if (this.proc.exitCode === null && this.proc.signalCode === null) {
            this.proc.kill('SIGTERM');
            const timer = setTimeout(() => this.proc.kill('SIGKILL'), 8000);
            await this.exited;
            clearTimeout(timer);
        }
        const code = this.proc.exitCode;
        this.proc = null;
        return code;
    }
}

/* ---- A static server for the course page ------------------------------- */

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
                '.css': 'text/css; charset=utf-8', '.webm': 'video/webm',
                '.json': 'application/json' };

// Serves web/ (demo/ and client/) and, under /media/, files of mediaDir.
// Supports Range, which <video> uses to seek and to probe the length.
export async function staticServer(webDir, mediaDir) {
    const server = createServer((req, res) => {
        const url = new URL(req.url, 'http://x');
        const path = decodeURIComponent(url.pathname);
        const root = path.startsWith('/media/') ? mediaDir : webDir;
        const rel = path.startsWith('/media/') ? path.slice(7) : path.slice(1);
        const file = normalize(join(root, rel.endsWith('/') || rel === '' ? rel + 'index.html' : rel));
        let st;
        if (!file.startsWith(root + sep) || file.includes(`${sep}node_modules${sep}`)) {
            res.writeHead(403).end();
            return;
        }
        try {
            st = statSync(file);
        } catch {
            res.writeHead(404).end();
            return;
        }
        const headers = { 'Content-Type': TYPES[extname(file)] || 'application/octet-stream',
                          'Accept-Ranges': 'bytes', 'Cache-Control': 'no-store' };
        const range = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range || '');
        if (range) {
            const start = range[1] ? Number(range[1]) : 0;
            const end = range[2] ? Math.min(Number(range[2]), st.size - 1) : st.size - 1;
            res.writeHead(206, { ...headers, 'Content-Range': `bytes ${start}-${end}/${st.size}`,
                                 'Content-Length': end - start + 1 });
            createReadStream(file, { start, end }).pipe(res);
            return;
        }
        res.writeHead(200, { ...headers, 'Content-Length': st.size });
        createReadStream(file).pipe(res);
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    server.url = `http://127.0.0.1:${server.address().port}`;
    return server;
}

/* ---- Chromium ---------------------------------------------------------- */

// A headless Chromium with a fresh profile whose camera plays y4m (or no
// fake camera when y4m is null). Returns the persistent context.
export async function launchChromium(y4m, profileDir) {
    const { chromium } = webRequire('playwright-core');
    const args = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update',
                  '--disable-sync', '--autoplay-policy=no-user-gesture-required'];
    if (y4m)
        args.push('--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
                  `--use-file-for-fake-video-capture=${y4m}`);
    return chromium.launchPersistentContext(profileDir, {
        executablePath: CHROMIUM, headless: true, args,
        viewport: { width: 1280, height: 800 },
    });
}

export function removeTree(dir) {
    rmSync(dir, { recursive: true, force: true });
}
