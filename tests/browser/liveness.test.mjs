// Action (liveness) challenges through the demo course page in headless
// Chromium, against the real daemon and a real Redis: the client's burst
// after "turn left/right", judged by the daemon.
//
// Chromium's fake camera plays a file and cannot follow the asked
// direction, so the page's camera is the test's own: getUserMedia gives a
// canvas.captureStream() on which the page draws, for each challenge, the
// frames of a real turning window of the shared video the way it asks
// (test_liveness.py's windows), or a photo held up and moved. The camera
// moves on to the burst's next frame as soon as the client has taken one,
// so the frames the client takes are known whatever the machine's load,
// and each capture is checked to show what the camera showed. Known
// shortcoming: the camera steps with the captures, not at a clock of its
// own, so what a client with other timing would catch of a moving head is
// not shown here; the capture times are checked against its options.
//
// 1. A real turn the asked way: MATCH, and the next one commits the time.
// 2. The client showed "turn left/right" while it took the burst, spaced
//    as its options say, and the daemon judged every frame of it.
// 3. A photo of the learner moved about: SPOOF, a presentation_attack
//    flag, and the page says to use a live camera.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { Daemon, Redis, SHARED, SOURCE, ffmpeg, launchChromium, learnerToken,
         platformToken, removeTree, staticServer, supervisorToken, tempDir,
         waitFor } from './harness.mjs';

const LEARNER = 'learner-live';
const COURSE = 'course-live';
const ORG = 'org-live';

// As e2e's POLICY, every challenge asking for a turn. The deadline leaves
// the burst (lead, frames, gaps: about 2.5 s) room on a loaded machine;
// gaps between challenges are drawn from [4 s, 18 s].
const POLICY = {
    'policy.heartbeat_interval': '500ms',
    'policy.heartbeat_grace': '2s',
    'policy.check_interval': '4500ms',
    'policy.challenge_deadline': '4s',
    'policy.idle_after': '2s',
    'policy.absent_after': '20s',
    'policy.resume_window': '1m',
    'policy.liveness_share': '1',
};

const FACE_Y4M = join(SHARED, 'data', 'video', 'face_640x480_15fps.y4m');
// test_liveness.py: first frames of 4-frame windows, 7 frames apart, over
// which the man turns his head to his own right / left; the evidence frame
// of each matches the enrolment, frame 3.
const WINDOWS = { TURN_RIGHT: [0, 2, 4, 6, 38, 40], TURN_LEFT: [11, 13, 27, 29, 9, 26] };
const STRIDE = 7;
const ENROL_FRAME = 3;
// The held-up photo: one frame, not the enrolment itself.
const PHOTO_FRAME = 1;
const VIDEO_FRAMES = 63;

const state = {};

function makeMedia(dir) {
    ffmpeg('-i', FACE_Y4M, '-q:v', '2', '-start_number', '0', join(dir, 'f%02d.jpg'));
    // The lesson playing keeps the learner from idling: long enough never
    // to end during the test.
    ffmpeg('-f', 'lavfi', '-i', 'testsrc=size=160x120:rate=5', '-t', '150',
           '-c:v', 'libvpx', '-b:v', '32k', '-deadline', 'realtime', '-cpu-used', '8',
           join(dir, 'lesson.webm'));
    return { enrol: join(dir, `f${String(ENROL_FRAME).padStart(2, '0')}.jpg`) };
}

// The page's camera, run in the page before its scripts (addInitScript).
// window.testCamera.mode says what the next challenge gets: 'turn' (a real
// turn the asked way) or 'photo'; each burst is recorded in
// testCamera.bursts with the time, the prompt on the page and how far the
// client's picture is from the camera's and from the camera's previous
// picture, at each frame the client takes.
function installCamera({ windows, stride, photoFrame, idleFrame, frames }) {
    const cam = {
        mode: 'turn', bursts: [], ready: false, error: null,
        fresh: { TURN_RIGHT: [...windows.TURN_RIGHT], TURN_LEFT: [...windows.TURN_LEFT] },
    };
    // The daemon keeps each evidence frame's signature: a later burst with
    // one of those frames in it is REPLAYED, rightly.
    const evidence = new Set();
    const take = (list) => {
        const i = list.findIndex((f) => [0, 1, 2, 3].every((k) => !evidence.has(f + stride * k)));
        return i < 0 ? undefined : list.splice(i, 1)[0];
    };
    window.testCamera = cam;
    const images = [];
    let canvas, ctx, stream, burst = null, previous = null;

    // A 40 x 30 grey thumbnail of a canvas, to compare pictures by.
    const thumb = document.createElement('canvas');
    thumb.width = 40;
    thumb.height = 30;
    const tctx = thumb.getContext('2d', { willReadFrequently: true });
    const origDraw = CanvasRenderingContext2D.prototype.drawImage;
    const grey = (src) => {
        origDraw.call(tctx, src, 0, 0, 40, 30);
        const d = tctx.getImageData(0, 0, 40, 30).data;
        const g = new Float32Array(1200);
        for (let i = 0; i < 1200; i++)
            g[i] = (d[4 * i] + d[4 * i + 1] + d[4 * i + 2]) / 3;
        return g;
    };
    const distance = (a, b) => {
        let s = 0;
        for (let i = 0; i < a.length; i++)
            s += Math.abs(a[i] - b[i]);
        return s / a.length;
    };

    // A photo held up in front of the camera: on a grey card, rotated,
    // scaled, shifted and sheared (tilted) differently for each frame.
    // Moves of a plane leave the landmarks' yaw about as it was (turn ~0;
    // a shear swept from -0.36 to 0.36 moved it by 0.05, a quarter of a
    // turn), so the daemon calls this not_turned before its planar check
    // has a say; that check is not reached from here.
    const HOLDS = [[0, 0.92, 0, 0, 0], [0.17, 0.97, 40, -15, 0.08],
                   [-0.14, 0.88, -35, 20, -0.1], [0.07, 1.02, 15, 10, 0.12]];
    const drawPhoto = (k) => {
        const [angle, scale, dx, dy, shear] = HOLDS[k % HOLDS.length];
        ctx.setTransform(1, 0, 0, 1, 0, 0);
        ctx.fillStyle = '#808080';
        ctx.fillRect(0, 0, 640, 480);
        ctx.translate(320 + dx, 240 + dy);
        ctx.rotate(angle);
        ctx.transform(1, 0, shear, 1, 0, 0);
        ctx.scale(scale, scale);
        origDraw.call(ctx, images[photoFrame], -320, -240, 640, 480);
        ctx.setTransform(1, 0, 0, 1, 0, 0);
    };
    const drawFrame = (n, mirror) => {
        ctx.setTransform(mirror ? -1 : 1, 0, 0, 1, mirror ? 640 : 0, 0);
        origDraw.call(ctx, images[n], 0, 0, 640, 480);
        ctx.setTransform(1, 0, 0, 1, 0, 0);
    };
    // Picture k of the burst under way (or, between bursts, its last).
    const show = () => {
        if (!cam.ready)
            return undefined;
        if (!burst)
            return drawFrame(idleFrame, false);
        // A burst longer than the 4-frame window holds the turn's end.
        const k = Math.min(burst.captures.length, burst.frames - 1);
        if (burst.mode === 'photo')
            drawPhoto(k);
        else
            drawFrame(burst.first + stride * Math.min(k, 3), burst.mirror);
    };

    const onChallenge = (e) => {
        const { challengeId, action } = e.detail;
        let first = null, mirror = false;
        if (cam.mode === 'turn' && action !== 'NONE') {
            const other = action === 'TURN_LEFT' ? 'TURN_RIGHT' : 'TURN_LEFT';
            // Asked one way more often than the video turns so: the other
            // way's window mirrored is the same motion seen from the side.
            first = take(cam.fresh[action]);
            if (first === undefined) {
                mirror = true;
                first = take(cam.fresh[other]);
            }
            evidence.add(first);
        }
        burst = { challengeId, action, mode: action === 'NONE' ? 'still' : cam.mode,
                  first, mirror, frames: window.demo.client.opts.burstFrames,
                  at: performance.now(), captures: [] };
        cam.bursts.push(burst);
        show();
        previous = null;
    };

    // The client takes a frame by drawing its preview <video> on its
    // canvas: note it, then move the camera on to the next picture.
    CanvasRenderingContext2D.prototype.drawImage = function (src, ...rest) {
        const r = origDraw.call(this, src, ...rest);
        if (stream && src instanceof HTMLVideoElement && src.srcObject === stream && burst &&
            burst.captures.length < burst.frames) {
            const took = grey(this.canvas), shown = grey(canvas);
            burst.captures.push({
                at: performance.now() - burst.at,
                prompt: document.getElementById('hint').textContent,
                toShown: distance(took, shown),
                toPrevious: previous ? distance(took, previous) : null,
                moved: previous ? distance(shown, previous) : null,
            });
            previous = shown;
            show();
        }
        return r;
    };

    navigator.mediaDevices.getUserMedia = async () => {
        // The client asks for the camera before it connects: no challenge
        // can have come yet.
        window.demo.client.addEventListener('challenge', onChallenge);
        canvas = document.createElement('canvas');
        canvas.width = 640;
        canvas.height = 480;
        ctx = canvas.getContext('2d');
        try {
            await Promise.all(frames.map(async (url, i) => {
                const img = new Image();
                img.src = url;
                await img.decode();
                images[i] = img;
            }));
        } catch (err) {
            cam.error = String(err);
            throw err;
        }
        cam.ready = true;
        show();
        stream = canvas.captureStream(30);
        // Redrawn now and then so that the stream never stalls on an
        // unchanged canvas.
        setInterval(show, 100);
        return stream;
    };
}

function demoUrl() {
    const hash = new URLSearchParams({ ws: state.daemon.ws,
                                       token: learnerToken(LEARNER, COURSE, ORG),
                                       video: '/media/lesson.webm', lesson: 'lesson-1' });
    return `${state.web.url}/demo/#${hash}`;
}

const demo = (page) => page.evaluate(() => ({
    welcomes: window.demo.welcomes, verdicts: window.demo.verdicts,
    challenges: window.demo.challenges, errors: window.demo.errors,
    status: window.demo.statuses.at(-1) || null,
    bursts: window.testCamera.bursts, cameraError: window.testCamera.error,
    opts: (({ burstFrames, burstGapMs, actionLeadMs }) =>
        ({ burstFrames, burstGapMs, actionLeadMs }))(window.demo.client.opts),
}));

async function hours() {
    const r = await state.daemon.api('GET', `/v1/learners/${LEARNER}/hours?course=${COURSE}`,
                                     platformToken());
    assert.equal(r.status, 200, r.text);
    return r.json.credited_seconds;
}

// The daemon's liveness line for a challenge, as key=value pairs.
function livenessLine(sessionId, challengeId) {
    const line = state.daemon.log().split('\n').find(
        (l) => l.includes('msg="liveness"') && l.includes(` session=${sessionId} `) &&
            l.includes(` challenge=${challengeId} `));
    if (!line)
        return null;
    return Object.fromEntries([...line.matchAll(/(\w+)=("[^"]*"|\S+)/g)].map((m) => [m[1], m[2]]));
}

// A burst as the client took it: opts.burstFrames frames, the first
// actionLeadMs after the challenge and each burstGapMs after the one
// before, all while the page asked for the turn, each the camera's
// picture of the moment rather than the one before.
function checkBurst(b, opts) {
    const said = `Face check: ${b.action === 'TURN_LEFT' ? 'turn left' : 'turn right'}, please.`;
    const where = JSON.stringify(b);
    assert.equal(b.captures.length, opts.burstFrames, where);
    assert.ok(b.captures[0].at >= opts.actionLeadMs, where);
    for (const [k, c] of b.captures.entries()) {
        assert.equal(c.prompt, said, `frame ${k} of ${where}`);
        if (k > 0)
            assert.ok(c.at - b.captures[k - 1].at >= opts.burstGapMs, `frame ${k} of ${where}`);
        if (c.moved !== null && c.moved > 2)
            assert.ok(c.toShown < c.toPrevious, `frame ${k} of ${where}`);
    }
}

// The verdict for the burst of challengeId, once it came.
async function verdictFor(page, challengeId, what) {
    return waitFor(async () => {
        const d = await demo(page);
        const v = d.verdicts.find((x) => x.challengeId === challengeId);
        return v && { d, v };
    }, { timeout: 30000, what });
}

describe('action (liveness) challenges answered by the demo page in Chromium',
         { timeout: 180000 }, () => {
    before(async () => {
        state.dir = tempDir('proctord-liveness-');
        state.pageErrors = [];
        state.media = makeMedia(state.dir);
        state.redis = await new Redis().start(state.dir);
        state.daemon = await new Daemon(state.dir, `127.0.0.1:${state.redis.port}`,
                                        { ...POLICY }).start();
        state.web = await staticServer(join(SOURCE, 'web'), state.dir);

        const jpeg = readFileSync(state.media.enrol);
        const r = await state.daemon.api('PUT', `/v1/learners/${LEARNER}/enrollment?org=${ORG}`,
                                         platformToken(), jpeg, 'image/jpeg');
        assert.equal(r.status, 201, r.text);

        // No fake camera of Chromium's: the page's own, above.
        state.ctx = await launchChromium(null, join(state.dir, 'profile'));
        const page = state.ctx.pages()[0] || await state.ctx.newPage();
        page.on('pageerror', (err) => state.pageErrors.push(err.message));
        const frames = [];
        for (let i = 0; i < VIDEO_FRAMES; i++)
            frames.push(`/media/f${String(i).padStart(2, '0')}.jpg`);
        await page.addInitScript(installCamera, { windows: WINDOWS, stride: STRIDE,
                                                  photoFrame: PHOTO_FRAME,
                                                  idleFrame: ENROL_FRAME, frames });
        await page.goto(demoUrl());
        state.page = page;
    });

    after(async () => {
        if (state.ctx)
            await state.ctx.close().catch(() => {});
        if (state.web)
            state.web.close();
        const code = state.daemon ? await state.daemon.stop() : 0;
        if (state.redis)
            state.redis.stop();
        if (process.env.PROCTORD_KEEP_TEMP)
            console.log('# kept ' + state.dir);
        else if (code === 0)
            removeTree(state.dir);
        assert.equal(code, 0, 'proctord exit status; its log:\n' +
                     (state.daemon ? state.daemon.log().slice(-4000) : ''));
    });

    it('matches a real turn the asked way and credits time on the next one', async () => {
        const { page } = state;
        const first = await waitFor(async () => {
            const d = await demo(page);
            assert.equal(d.cameraError, null);
            return d.verdicts.length > 0 && d;
        }, { timeout: 60000, what: 'first verdict' });
        const ch = first.challenges[0];
        assert.match(ch.action, /^TURN_(LEFT|RIGHT)$/, 'the first challenge asks for a turn');
        assert.equal(first.verdicts[0].challengeId, ch.challengeId);
        assert.equal(first.verdicts[0].outcome, 'MATCH',
                     JSON.stringify(first) + state.daemon.log().slice(-3000));
        assert.equal(first.bursts[0].mode, 'turn');

        // The next turn commits what accrued since.
        const credited = await waitFor(async () => {
            const d = await demo(page);
            assert.ok(d.verdicts.every((v) => v.outcome === 'MATCH'),
                      JSON.stringify(d.verdicts) + state.daemon.log().slice(-3000));
            return d.status && d.status.creditedS >= 1 && d;
        }, { timeout: 60000, what: 'credited time' });
        assert.ok(credited.verdicts.length >= 2);
        assert.ok(credited.verdicts.every((v) => v.hint === ''), JSON.stringify(credited.verdicts));
        const api = await hours();
        assert.ok(api >= 1 && Math.abs(api - credited.status.creditedS) <= 1,
                  `API ${api} s, page ${credited.status.creditedS} s`);
        const flags = await state.daemon.api('GET', `/v1/flags?learner=${LEARNER}`,
                                             supervisorToken());
        assert.equal(flags.status, 200, flags.text);
        assert.deepEqual(flags.json.flags, []);
        state.sessionId = credited.welcomes[0].sessionId;
        state.turns = credited;
    });

    it('took each burst with the prompt shown, as spaced as the client says', async () => {
        const { bursts, opts, verdicts } = state.turns;
        const judged = bursts.filter((b) => verdicts.some((v) => v.challengeId === b.challengeId));
        assert.ok(judged.length >= 2, JSON.stringify(bursts));
        for (const b of judged) {
            checkBurst(b, opts);

            // The daemon judged all of them, as a turn the asked way.
            const line = livenessLine(state.sessionId, b.challengeId);
            assert.ok(line, `liveness line of ${b.challengeId}`);
            assert.equal(Number(line.frames), opts.burstFrames, JSON.stringify(line));
            assert.equal(Number(line.usable), opts.burstFrames, JSON.stringify(line));
            assert.equal(line.action, b.action === 'TURN_LEFT' ? '1' : '2');
            assert.equal(line.spoof, '-');
            assert.ok(Number(line.turn) >= 0.2, JSON.stringify(line));
        }
    });

    it('calls a photo held up and moved a SPOOF and flags it', async () => {
        const { page } = state;
        const seen = (await demo(page)).bursts.length;
        await page.evaluate(() => { window.testCamera.mode = 'photo'; });
        const b = (await waitFor(async () => {
            const d = await demo(page);
            return d.bursts.slice(seen).find((x) => x.mode === 'photo');
        }, { timeout: 30000, what: 'a challenge for the photo' }));
        // The challenge before it was answered (and its time committed)
        // seconds ago.
        const creditedBefore = await hours();
        const { d, v } = await verdictFor(page, b.challengeId, 'photo verdict');
        assert.equal(v.outcome, 'SPOOF', JSON.stringify(v) + state.daemon.log().slice(-3000));
        assert.ok(v.similarity >= 0.38, 'the face is the learner\'s: ' + JSON.stringify(v));

        await waitFor(async () => (await page.textContent('#hint')) ===
                      'Use a live camera, not a photo or a screen.', { what: 'spoof message' });
        assert.match(await page.textContent('#verdict'), /^SPOOF/);
        // Leave before the next challenge: the photo would be flagged again.
        await page.evaluate(() => window.demo.client.stop());

        const flags = await waitFor(async () => {
            const r = await state.daemon.api('GET', `/v1/flags?status=open&learner=${LEARNER}`,
                                             supervisorToken());
            assert.equal(r.status, 200, r.text);
            const f = r.json.flags.filter((x) => x.kind === 'presentation_attack');
            return f.length > 0 && f;
        }, { what: 'presentation_attack flag' });
        assert.equal(flags.length, 1, JSON.stringify(flags));
        assert.equal(flags[0].session_id, state.sessionId);
        assert.equal(flags[0].evidence.length, 1);
        // The time since the last turn is withheld with the flag.
        assert.ok(flags[0].withheld_seconds >= 1, JSON.stringify(flags[0]));
        assert.equal(await hours(), creditedBefore);

        const burst = d.bursts.find((x) => x.challengeId === b.challengeId);
        const line = livenessLine(state.sessionId, b.challengeId);
        assert.ok(line, 'liveness line');
        assert.equal(Number(line.frames), d.opts.burstFrames, JSON.stringify(line));
        assert.match(line.spoof, /^(not_turned|planar)$/, JSON.stringify(line));
        checkBurst(burst, d.opts);
        assert.deepEqual(state.pageErrors, []);
        assert.deepEqual(d.errors, []);
    });
});
