// proctord's learner client, for a course page:
//
//   import { ProctorClient } from '/proctor/client/proctor-client.js';
//   const client = new ProctorClient({ url, token, media: videoElement });
//   client.addEventListener('status', (e) => show(e.detail));
//   await client.start();
//
// It asks for the camera, answers each Challenge with a JPEG taken from it,
// sends a Heartbeat every Welcome.heartbeat_interval_ms (page visible and
// focused, input events counted, the lesson video's state) and reconnects
// with back-off, resuming its session. Every frame is one protobuf message
// (proto/proctor.proto, compiled into ./proctor_pb.js). What happens is told
// to the page as events; see the README's "Browser side" for their details.
//
// Left out on purpose: the camera preview's layout, any UI text, and token
// minting (the platform signs the learner's JWT on its server and hands it
// to the page, or a function that fetches a fresh one).
import pb from './proctor_pb.js';

const v1 = pb.proctor.v1;

export const SUBPROTOCOL = 'proctor.v1';
export const CLIENT_NAME = 'proctord-web/0.1';

// Close codes after which reconnecting cannot help: the message was
// malformed or too large (a bug: repeating it gives the same answer), the
// learner is not allowed, or a newer login took the session over (fighting
// it back would only bounce the session between two tabs). A bad token
// (4401) is retried only when the page gave a function for fresh tokens.
const FINAL_CLOSES = new Set([4400, 4403, 4409, 4413]);
const CLOSE_BAD_TOKEN = 4401;

// Count at most one of these per period: a moving mouse fires them at
// the display's frame rate, and one is as good as sixty for "not idle".
const THROTTLED_INPUT_MS = 250;

const DEFAULTS = {
    clientName: CLIENT_NAME,
    width: 640,
    height: 480,
    jpegQuality: 0.8,
    heartbeatMs: 10000, // until the Welcome says otherwise
    backoffMs: 1000,
    backoffMaxMs: 30000,
    // An action (liveness) challenge's burst: four frames over 1.5 s, as
    // proto/proctor.proto's Snapshot.frames asks and as the daemon's turn
    // and planar checks were calibrated (frames ~0.47 s apart): a turn at
    // a natural pace barely starts within a shorter burst.
    burstFrames: 4,
    burstGapMs: 500,
    actionLeadMs: 800, // time to read "turn left" before the burst
    resumeKey: 'proctord.session', // sessionStorage key; null: none
};

/* ----------------------------------------------------------------------
 * uint64 fields
 * -------------------------------------------------------------------- */

// protobufjs gives a uint64 as a Long when the page has long.js loaded
// (globally) and as a number otherwise. Challenge ids are ~1.8e15, below
// 2^53, so a number holds them exactly; anything larger comes back as a
// decimal string rather than silently rounded.
export function uint64ToJs(v) {
    if (typeof v === 'number')
        return v;
    if (typeof v === 'bigint')
        return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
    if (v != null && typeof v.low === 'number' && typeof v.high === 'number') {
        const n = (v.high >>> 0) * 4294967296 + (v.low >>> 0);
        if (Number.isSafeInteger(n))
            return n;
        return typeof v.toString === 'function' ? v.toString() : String(n);
    }
    return 0;
}

function enumName(enumObj, value) {
    const name = enumObj[value];
    return typeof name === 'string' ? name : String(value);
}

/* ----------------------------------------------------------------------
 * The client
 * -------------------------------------------------------------------- */

export class ProctorClient extends EventTarget {
    // options: url (ws://HOST:PORT/v1/learn), token (a JWT string, or a
    // function returning one or a promise of one, called on every
    // connect), media (the lesson's <video>/<audio>, or a function giving
    // it), lessonId (string or function; default media.dataset.lessonId),
    // preview (a <video> to show the camera in; one is made, unattached,
    // otherwise), resumeSessionId, and the DEFAULTS above.
    constructor(options) {
        super();
        if (!options || !options.url || !options.token)
            throw new TypeError('ProctorClient needs url and token');
        this.opts = { ...DEFAULTS, ...options };
        this.sessionId = options.resumeSessionId || this._storedSession();
        this.state = null; // the last Status's state name
        this.lastStatus = null;
        this.lastVerdict = null;
        this._ws = null;
        this._seq = 0;
        this._stopped = true;
        this._attempt = 0;
        this._retryTimer = null;
        this._hbTimer = null;
        this._hbMs = this.opts.heartbeatMs;
        this._stream = null;
        this._video = null;
        this._canvas = null;
        this._inputs = 0;
        this._lastThrottled = new Map();
        // Hidden or unfocused at some moment since the last heartbeat.
        this._wasHidden = false;
        this._wasBlurred = false;
        this._challenge = null; // the one being answered
        this._listeners = [];
    }

    /* ---- Lifecycle ------------------------------------------------- */

    // Asks for the camera and connects. A refused camera is reported as an
    // 'error' event (code 'camera') and the session goes on: the daemon
    // then sees challenges go unanswered, which is what happened.
    async start() {
        if (!this._stopped)
            return;
        this._stopped = false;
        this._listen();
        const camera = this._openCamera().catch((err) => {
            this._emit('error', { code: 'camera', message: err.message || String(err),
                                  fatal: false });
        });
        this._connect();
        await camera;
    }

    // Says Bye, closes and lets the camera go. The session can be resumed
    // by a new client within the daemon's resume window.
    stop(reason = 'page closed') {
        const ws = this._ws;

        if (this._stopped)
            return;
        if (ws && ws.readyState === WebSocket.OPEN) {
            this._send({ bye: { reason } });
            ws.close(1000, reason);
        } else if (ws) {
            ws.close();
        }
        this._teardown();
        this._emit('close', { code: 1000, reason, reconnecting: false });
    }

    // Everything start() set up, undone; the socket is forgotten, so its
    // close event (if still to come) is not reported again.
    _teardown() {
        this._stopped = true;
        this._ws = null;
        this._challenge = null;
        clearTimeout(this._retryTimer);
        this._retryTimer = null;
        this._stopHeartbeats();
        for (const [target, type, fn, opts] of this._listeners)
            target.removeEventListener(type, fn, opts);
        this._listeners = [];
        if (this._stream)
            for (const track of this._stream.getTracks())
                track.stop();
        this._stream = null;
        this._video = null;
    }

    /* ---- Connection ------------------------------------------------ */

    async _connect() {
        let token;

        this._retryTimer = null;
        try {
            token = typeof this.opts.token === 'function'
                ? await this.opts.token() : this.opts.token;
        } catch (err) {
            this._emit('error', { code: 'token', message: err.message || String(err),
                                  fatal: false });
            this._retry(null, '');
            return;
        }
        if (this._stopped)
            return;

        const ws = new WebSocket(this.opts.url, SUBPROTOCOL);
        const resume = this.sessionId || '';
        ws.binaryType = 'arraybuffer';
        this._ws = ws;
        this._seq = 0; // seq counts per connection
        ws.onopen = () => {
            this._send({ hello: { token, client: this.opts.clientName,
                                  resumeSessionId: resume } });
        };
        ws.onmessage = (ev) => {
            if (ws === this._ws)
                this._receive(ev.data, resume);
        };
        ws.onclose = (ev) => {
            if (ws !== this._ws)
                return;
            this._ws = null;
            this._stopHeartbeats();
            this._challenge = null;
            this._retry(ev.code, ev.reason);
        };
        // An error is always followed by a close, which decides.
        ws.onerror = () => {};
    }

    _retry(code, reason) {
        const final = FINAL_CLOSES.has(code) ||
            (code === CLOSE_BAD_TOKEN && typeof this.opts.token !== 'function');

        if (final) {
            this._teardown();
            this._emit('close', { code, reason, reconnecting: false });
            return;
        }
        // Exponential back-off with jitter, so a restarted daemon is not
        // hit by every learner in the same second.
        const base = Math.min(this.opts.backoffMaxMs,
                              this.opts.backoffMs * 2 ** this._attempt);
        const delay = Math.round(base * (0.5 + Math.random() / 2));
        this._attempt++;
        this._emit('close', { code, reason, reconnecting: true, retryInMs: delay });
        this._retryTimer = setTimeout(() => this._connect(), delay);
    }

    _send(body) {
        const ws = this._ws;

        if (!ws || ws.readyState !== WebSocket.OPEN)
            return false;
        this._seq++;
        const msg = v1.ClientMessage.create({ seq: this._seq, ...body });
        ws.send(v1.ClientMessage.encode(msg).finish());
        return true;
    }

    _receive(data, resumed) {
        let msg;

        try {
            msg = v1.ServerMessage.decode(new Uint8Array(data));
        } catch (err) {
            this._emit('error', { code: 'decode', message: err.message, fatal: false });
            return;
        }
        this.ackSeq = uint64ToJs(msg.ackSeq);
        switch (msg.body) {
        case 'welcome':
            this._onWelcome(msg.welcome, resumed);
            break;
        case 'challenge':
            this._onChallenge(msg.challenge);
            break;
        case 'verdict':
            this._onVerdict(msg.verdict);
            break;
        case 'status':
            this._onStatus(msg.status);
            break;
        case 'error':
            // The close that follows says whether to reconnect.
            this._emit('error', { code: msg.error.code, message: msg.error.message,
                                  fatal: true });
            break;
        default:
            break; // a body newer than this client
        }
    }

    /* ---- Server messages ------------------------------------------- */

    _onWelcome(w, resumed) {
        this.sessionId = w.sessionId;
        this._attempt = 0;
        this._storeSession(w.sessionId);
        this._hbMs = w.heartbeatIntervalMs > 0 ? w.heartbeatIntervalMs : this.opts.heartbeatMs;
        this._emit('welcome', { sessionId: w.sessionId, heartbeatIntervalMs: this._hbMs,
                                creditedS: uint64ToJs(w.creditedS),
                                resumed: resumed !== '' && resumed === w.sessionId });
        this._startHeartbeats();
    }

    _onVerdict(v) {
        const detail = { challengeId: uint64ToJs(v.challengeId),
                         outcome: enumName(v1.Outcome, v.outcome),
                         similarity: v.similarity, faces: v.faces,
                         hint: v.hint || '' };
        this.lastVerdict = detail;
        this._emit('verdict', detail);
    }

    _onStatus(s) {
        const detail = { creditedS: uint64ToJs(s.creditedS),
                         provisionalS: uint64ToJs(s.provisionalS),
                         state: enumName(v1.State, s.state), reason: s.reason || '' };
        this.lastStatus = detail;
        this.state = detail.state;
        this._emit('status', detail);
    }

    async _onChallenge(c) {
        // The id goes back exactly as it came (Long or number).
        const raw = c.challengeId;
        const action = enumName(v1.Action, c.action);
        const token = {};

        this._challenge = token;
        this._emit('challenge', { challengeId: uint64ToJs(raw), deadlineMs: c.deadlineMs,
                                  action });
        try {
            const deadline = performance.now() + (c.deadlineMs || 30000);
            await this._cameraReady(deadline);
            let jpeg, frames = [];
            if (action !== 'NONE') {
                await sleep(this.opts.actionLeadMs);
                frames = await this._burst();
                jpeg = frames[0];
            } else {
                jpeg = await this._capture();
            }
            // A newer challenge (or a reconnect) has replaced this one.
            if (this._challenge !== token)
                return;
            this._send({ snapshot: { jpeg, challengeId: raw, capturedAtMs: Date.now(),
                                     frames } });
        } catch (err) {
            this._emit('error', { code: 'capture', message: err.message || String(err),
                                  fatal: false });
        } finally {
            if (this._challenge === token)
                this._challenge = null;
        }
    }

    /* ---- Camera ---------------------------------------------------- */

    async _openCamera() {
        if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia)
            throw new Error('this browser has no camera access (needs https or localhost)');
        const stream = await navigator.mediaDevices.getUserMedia({
            audio: false,
            video: { width: { ideal: this.opts.width }, height: { ideal: this.opts.height },
                     facingMode: 'user' },
        });
        if (this._stopped) {
            for (const track of stream.getTracks())
                track.stop();
            return;
        }
        const video = this.opts.preview || document.createElement('video');
        video.muted = true;
        video.playsInline = true;
        video.srcObject = stream;
        this._stream = stream;
        this._video = video;
        await video.play();
    }

    // Waits until the camera gives frames, or the deadline (performance.now
    // clock, less a margin for encoding and sending) passes.
    async _cameraReady(deadline) {
        while (!this._video || this._video.readyState < 2 || !this._video.videoWidth) {
            if (performance.now() > deadline - 1000)
                throw new Error('no camera picture before the deadline');
            await sleep(100);
        }
    }

    // One JPEG of width x height. A camera of another shape is scaled to
    // fit, with black bars, rather than stretched: a stretched face
    // matches worse.
    async _capture() {
        const { width, height, jpegQuality } = this.opts;
        const v = this._video;
        if (!this._canvas) {
            this._canvas = document.createElement('canvas');
            this._canvas.width = width;
            this._canvas.height = height;
        }
        const ctx = this._canvas.getContext('2d');
        const scale = Math.min(width / v.videoWidth, height / v.videoHeight);
        const w = v.videoWidth * scale, h = v.videoHeight * scale;
        ctx.fillStyle = '#000';
        ctx.fillRect(0, 0, width, height);
        ctx.drawImage(v, (width - w) / 2, (height - h) / 2, w, h);
        const blob = await new Promise((resolve, reject) => {
            this._canvas.toBlob((b) => (b ? resolve(b) : reject(new Error('JPEG encoding failed'))),
                                'image/jpeg', jpegQuality);
        });
        return new Uint8Array(await blob.arrayBuffer());
    }

    async _burst() {
        const frames = [];
        for (let i = 0; i < this.opts.burstFrames; i++) {
            if (i > 0)
                await sleep(this.opts.burstGapMs);
            frames.push(await this._capture());
        }
        return frames;
    }

    /* ---- Heartbeats ------------------------------------------------ */

    _startHeartbeats() {
        this._stopHeartbeats();
        this._heartbeat();
        this._hbTimer = setInterval(() => this._heartbeat(), this._hbMs);
    }

    _stopHeartbeats() {
        clearInterval(this._hbTimer);
        this._hbTimer = null;
    }

    // The page is reported hidden or unfocused for an interval in which it
    // was so at any moment, not only at the instant of sending: a learner
    // who looks away for nine seconds in ten is not studying.
    _heartbeat() {
        const media = this._media();
        const visible = document.visibilityState === 'visible' && !this._wasHidden;
        const focused = document.hasFocus() && !this._wasBlurred;
        const playing = !!media && !media.paused && !media.ended && media.readyState >= 3;
        const lesson = typeof this.opts.lessonId === 'function'
            ? this.opts.lessonId() : this.opts.lessonId;

        const sent = this._send({ heartbeat: {
            clientTimeMs: Date.now(),
            pageVisible: visible,
            windowFocused: focused,
            inputEvents: this._inputs,
            mediaPlaying: playing,
            playbackRate: media ? media.playbackRate : 0,
            mediaPositionS: media ? media.currentTime : 0,
            lessonId: lesson || (media && media.dataset ? media.dataset.lessonId || '' : ''),
        } });
        if (sent) {
            this._inputs = 0;
            this._wasHidden = document.visibilityState !== 'visible';
            this._wasBlurred = !document.hasFocus();
        }
    }

    _media() {
        const m = this.opts.media;
        return typeof m === 'function' ? m() : m || null;
    }

    /* ---- Page listeners -------------------------------------------- */

    _on(target, type, fn, opts) {
        target.addEventListener(type, fn, opts);
        this._listeners.push([target, type, fn, opts]);
    }

    _listen() {
        const passive = { passive: true, capture: true };
        const count = () => { this._inputs++; };
        const throttled = (ev) => {
            const now = performance.now();
            if (now - (this._lastThrottled.get(ev.type) || -Infinity) >= THROTTLED_INPUT_MS) {
                this._lastThrottled.set(ev.type, now);
                this._inputs++;
            }
        };

        for (const type of ['keydown', 'pointerdown', 'touchstart'])
            this._on(window, type, count, passive);
        for (const type of ['pointermove', 'wheel'])
            this._on(window, type, throttled, passive);
        this._on(document, 'visibilitychange', () => {
            if (document.visibilityState !== 'visible')
                this._wasHidden = true;
        });
        // Focus moving into an iframe of the page blurs the window too,
        // while the document still has focus: look once the move is done.
        this._on(window, 'blur', () => {
            setTimeout(() => {
                if (!document.hasFocus())
                    this._wasBlurred = true;
            }, 0);
        });
        this._on(window, 'pagehide', () => this.stop('page closed'));
        // Back online: try now rather than at the end of the back-off.
        this._on(window, 'online', () => {
            if (!this._stopped && !this._ws && this._retryTimer) {
                clearTimeout(this._retryTimer);
                this._connect();
            }
        });
    }

    /* ---- Resuming after a reload ----------------------------------- */

    _storedSession() {
        try {
            return (this.opts.resumeKey && sessionStorage.getItem(this.opts.resumeKey)) || '';
        } catch {
            return ''; // storage refused (privacy settings, sandboxed frame)
        }
    }

    _storeSession(id) {
        try {
            if (this.opts.resumeKey)
                sessionStorage.setItem(this.opts.resumeKey, id);
        } catch {
            // Without storage a reload starts a new session; nothing lost.
        }
    }

    _emit(type, detail) {
        this.dispatchEvent(new CustomEvent(type, { detail }));
    }
}

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}
