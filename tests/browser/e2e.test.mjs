// End to end in headless Chromium against the real daemon and a real Redis:
// the demo course page with the learner client, Chromium's fake camera
// playing a real face, and the supervisor console served by the daemon.
//
// The story, step by step (each step needs the ones before it):
// 1. The enrolled learner's face is matched and study time is credited.
// 2. Another person takes over the same session (a second Chromium whose
//    camera shows someone else, resuming the session id): MISMATCH, and a
//    face_mismatch flag withholds the time not yet confirmed. A take-over
//    of the very session keeps its unconfirmed time; a new session would
//    have none to withhold.
// 3. The console lists that flag with its evidence image.
// 4. Dismissing it in the console gives the withheld time back.
// 5. A client whose daemon restarts reconnects and resumes its session.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { Daemon, Redis, SHARED, SOURCE, ffmpeg, launchChromium, learnerToken,
         platformToken, removeTree, staticServer, supervisorToken, tempDir,
         waitFor } from './harness.mjs';

const LEARNER = 'learner-e2e';
const COURSE = 'course-e2e';
const ORG = 'org-e2e';

// As test_crediting.py's FAST, with a short check interval so a second
// challenge (whose MATCH commits the time) comes within seconds. Gaps
// between challenges are drawn from [deadline, 4 x interval] = [4 s, 20 s].
const POLICY = {
    'policy.heartbeat_interval': '500ms',
    'policy.heartbeat_grace': '2s',
    'policy.check_interval': '5s',
    'policy.challenge_deadline': '4s',
    'policy.idle_after': '2s',
    'policy.absent_after': '20s',
    'policy.resume_window': '1m',
    'policy.liveness_share': '0',
};

const FACE_Y4M = join(SHARED, 'data', 'video', 'face_640x480_15fps.y4m');
const STRANGER = join(SHARED, 'data', 'faces', 'lfw', 'Hugo_Chavez', 'Hugo_Chavez_0002.jpg');

const state = {};

// Everything the test makes goes under one temporary folder.
function makeMedia(dir) {
    const media = { enrol: join(dir, 'enrol.jpg'), learner: join(dir, 'learner.y4m'),
                    stranger: join(dir, 'stranger.y4m'), lesson: join(dir, 'lesson.webm') };

    ffmpeg('-i', FACE_Y4M, '-frames:v', '1', '-q:v', '2', media.enrol);
    // The camera: the clip's first 7 frames (0.5 s), each held for 3.5 s.
    // Only the clip's first second matches its first frame well (the man
    // turns and raises his hands after that), and Chromium loops the
    // file: held that long, the two checks of step 1, at least 4 s apart
    // and at most 20 s, never see the same frame, which would be REPLAYED.
    ffmpeg('-i', FACE_Y4M, '-frames:v', '7', join(dir, 'frame-%d.png'));
    ffmpeg('-framerate', '2/7', '-i', join(dir, 'frame-%d.png'), '-vf', 'fps=2,format=yuv420p',
           '-f', 'yuv4mpegpipe', media.learner);
    ffmpeg('-loop', '1', '-i', STRANGER, '-t', '3', '-r', '15', '-vf',
           'scale=480:480,pad=640:480:80:0:black,format=yuv420p',
           '-f', 'yuv4mpegpipe', media.stranger);
    // The lesson: long enough never to end during the test.
    ffmpeg('-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=10', '-t', '180',
           '-c:v', 'libvpx', '-b:v', '64k', '-deadline', 'realtime', '-cpu-used', '8',
           media.lesson);
    return media;
}

function demoUrl(extra = {}) {
    const hash = new URLSearchParams({ ws: state.daemon.ws, token: learnerToken(LEARNER, COURSE, ORG),
                                       video: '/media/lesson.webm', lesson: 'lesson-1', ...extra });
    return `${state.web.url}/demo/#${hash}`;
}

async function openDemo(y4m, name, extra) {
    const ctx = await launchChromium(y4m, join(state.dir, 'profile-' + name));
    state.contexts.push(ctx);
    const page = ctx.pages()[0] || await ctx.newPage();
    page.on('pageerror', (err) => state.pageErrors.push(`${name}: ${err.message}`));
    await page.goto(demoUrl(extra));
    return { ctx, page };
}

const demo = (page) => page.evaluate(() => ({
    welcomes: window.demo.welcomes, verdicts: window.demo.verdicts,
    challenges: window.demo.challenges, closes: window.demo.closes, errors: window.demo.errors,
    status: window.demo.statuses.at(-1) || null,
}));

async function hours() {
    const r = await state.daemon.api('GET', `/v1/learners/${LEARNER}/hours?course=${COURSE}`,
                                     platformToken());
    assert.equal(r.status, 200, r.text);
    return r.json.credited_seconds;
}

async function openFlags() {
    const r = await state.daemon.api('GET', `/v1/flags?status=open&learner=${LEARNER}`,
                                     supervisorToken());
    assert.equal(r.status, 200, r.text);
    return r.json.flags;
}

describe('learner client and supervisor console in Chromium', { timeout: 240000 }, () => {
    before(async () => {
        state.dir = tempDir('proctord-browser-');
        state.contexts = [];
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
    });

    after(async () => {
        for (const ctx of state.contexts)
            await ctx.close().catch(() => {});
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

    it('credits the enrolled learner after two matching face checks', async () => {
        const { page } = await openDemo(state.media.learner, 'learner');
        state.learnerPage = page;

        // The challenge right after Welcome verifies the session ...
        const first = await waitFor(async () => {
            const d = await demo(page);
            return d.verdicts.length > 0 && d;
        }, { timeout: 60000, what: 'first verdict' });
        assert.equal(first.verdicts[0].outcome, 'MATCH', JSON.stringify(first));
        assert.equal(first.welcomes.length, 1);
        assert.ok(first.challenges[0].challengeId > 1e15, 'challenge id as a number');
        assert.equal(first.challenges[0].challengeId, first.verdicts[0].challengeId);

        // ... and the next one commits what accrued since. The gap to it
        // was drawn (4 s at least) as the first was answered; the gap after
        // it is drawn with the reloaded interval, an hour, so that nothing
        // commits behind step 2's back.
        await state.daemon.reload({ 'policy.check_interval': '1h' });
        const credited = await waitFor(async () => {
            const d = await demo(page);
            assert.ok(d.verdicts.every((v) => v.outcome === 'MATCH'), JSON.stringify(d.verdicts));
            return d.status && d.status.creditedS >= 2 && d;
        }, { timeout: 60000, what: 'credited time' });
        assert.equal(credited.status.state, 'ACTIVE');
        assert.ok(credited.verdicts.length >= 2);
        const api = await hours();
        assert.ok(Math.abs(api - credited.status.creditedS) <= 1,
                  `API ${api} s, page ${credited.status.creditedS} s`);
        assert.notEqual(await page.textContent('#credited'), '0:00:00');
        assert.equal(await page.textContent('#state'), 'ACTIVE');
        assert.match(await page.textContent('#verdict'), /^MATCH/);
        state.sessionId = credited.welcomes[0].sessionId;
        await page.screenshot({ path: join(state.dir, 'demo.png') });
    });

    it('flags another face on the same session and withholds its time', async () => {
        // Time accrues unconfirmed until the next check ...
        await waitFor(async () => (await demo(state.learnerPage)).status.provisionalS >= 3,
                      { timeout: 20000, what: 'provisional time' });
        const creditedBefore = await hours();

        // ... which someone else answers, on the same session.
        const { page } = await openDemo(state.media.stranger, 'stranger',
                                        { resume: state.sessionId });
        const d = await waitFor(async () => {
            const x = await demo(page);
            return x.verdicts.length > 0 && x;
        }, { timeout: 60000, what: 'stranger verdict' });
        assert.equal(d.welcomes[0].sessionId, state.sessionId);
        assert.equal(d.welcomes[0].resumed, true);
        assert.equal(d.verdicts[0].outcome, 'MISMATCH', JSON.stringify(d.verdicts));
        await waitFor(async () => (await page.textContent('#hint')).includes('someone other'),
                      { what: 'mismatch hint' });

        // The first window was taken over and does not fight back.
        const first = await demo(state.learnerPage);
        assert.deepEqual(first.closes.map((c) => [c.code, c.reconnecting]), [[4409, false]]);

        const flags = await waitFor(async () => {
            const f = (await openFlags()).filter((x) => x.kind === 'face_mismatch');
            return f.length > 0 && f;
        }, { what: 'face_mismatch flag' });
        const flag = flags.at(-1); // the oldest: the take-over's
        assert.equal(flag.session_id, state.sessionId);
        assert.ok(flag.withheld_seconds >= 2, JSON.stringify(flag));
        assert.equal(flag.evidence.length, 1);
        assert.equal(await hours(), creditedBefore, 'withheld time is not credited');
        state.flag = flag;
        state.creditedBefore = creditedBefore;

        // Leave: no more checks of the stranger muddle the flag list.
        await page.evaluate(() => window.demo.client.stop());
    });

    it('lists the flag in the console with its evidence image', async () => {
        const ctx = state.contexts[0];
        const page = await ctx.newPage();
        const csp = [];
        page.on('console', (m) => {
            if (/Content.Security.Policy|Refused to/i.test(m.text()))
                csp.push(m.text());
        });
        page.on('pageerror', (err) => state.pageErrors.push(`console: ${err.message}`));
        const res = await page.goto(`${state.daemon.http}/console`);
        assert.equal(res.status(), 200);
        assert.equal(new URL(page.url()).pathname, '/console/');
        assert.match(res.headers()['content-security-policy'], /default-src 'self'/);

        await page.fill('#supervisor-token', supervisorToken());
        await page.fill('#platform-token', platformToken());
        await page.click('#signin button[type=submit]');
        const card = page.locator(`article.flag[data-flag-id="${state.flag.id}"]`);
        await card.waitFor({ timeout: 15000 });
        assert.match(await card.locator('.kind').textContent(), /face mismatch/);
        assert.equal(await card.locator('.learner').textContent(), LEARNER);
        assert.equal(await card.locator('.course').textContent(), COURSE);

        const img = card.locator('img.evidence-img');
        await img.waitFor({ timeout: 15000 });
        await page.waitForFunction((el) => el.complete && el.naturalWidth > 0,
                                   await img.elementHandle(), { timeout: 15000 });
        const { src, width, height } = await img.evaluate(
            (el) => ({ src: el.src, width: el.naturalWidth, height: el.naturalHeight }));
        assert.match(src, /^blob:/);
        assert.deepEqual([width, height], [640, 480]);

        const shown = card.locator('.hours');
        await page.waitForFunction((el) => el.dataset.creditedSeconds !== undefined,
                                   await shown.elementHandle(), { timeout: 15000 });
        assert.equal(Number(await shown.getAttribute('data-credited-seconds')),
                     state.creditedBefore);
        assert.deepEqual(csp, []);
        state.consolePage = page;
        state.card = card;
        await page.screenshot({ path: join(state.dir, 'console.png'), fullPage: true });
    });

    it('gives the withheld time back when the console dismisses the flag', async () => {
        const { consolePage: page, card, flag } = state;
        await card.locator('textarea.note').fill('same learner, camera angle');
        await card.locator('button.dismiss').click();
        await page.waitForFunction((el) => el.dataset.status === 'dismissed',
                                   await card.elementHandle(), { timeout: 15000 });
        assert.match(await card.locator('.result').textContent(), /dismissed/);

        const r = await state.daemon.api('GET', `/v1/flags/${flag.id}`, supervisorToken());
        assert.equal(r.json.status, 'dismissed');
        assert.equal(r.json.note, 'same learner, camera angle');
        assert.equal(r.json.reviewed_by, 'supervisor-1');
        // Whole seconds on both sides, each rounded down: the sum may come
        // out one more.
        const after = await hours();
        const gained = after - state.creditedBefore;
        assert.ok(gained === flag.withheld_seconds || gained === flag.withheld_seconds + 1,
                  `credited ${state.creditedBefore} s -> ${after} s, withheld ${flag.withheld_seconds} s`);
        // The card's hours follow.
        await page.waitForFunction(
            ([el, want]) => Number(el.dataset.creditedSeconds) === want,
            [await card.locator('.hours').elementHandle(), after], { timeout: 15000 });
        assert.deepEqual(state.pageErrors, []);
    });

    it('reconnects with back-off and resumes its session after a restart', async () => {
        const page = await state.contexts[0].newPage();
        await page.goto(demoUrl());
        const first = await waitFor(async () => {
            const d = await demo(page);
            return d.welcomes.length === 1 && d.status && d;
        }, { what: 'welcome' });
        const sid = first.welcomes[0].sessionId;
        assert.equal(first.welcomes[0].resumed, false);

        assert.equal(await state.daemon.stop(), 0, 'drained and exited 0');
        await waitFor(async () => (await demo(page)).closes.length > 0, { what: 'close' });
        await state.daemon.start();
        const d = await waitFor(async () => {
            const x = await demo(page);
            return x.welcomes.length === 2 && x;
        }, { timeout: 60000, what: 'second welcome' });
        assert.equal(d.welcomes[1].sessionId, sid);
        assert.equal(d.welcomes[1].resumed, true);
        assert.ok(d.closes.length >= 1 && d.closes.every((c) => c.reconnecting && c.retryInMs > 0),
                  JSON.stringify(d.closes));
        // Crediting waits for a fresh check, which comes right away.
        await waitFor(async () => (await demo(page)).challenges.length >= 2,
                      { what: 'challenge after the resume' });
        await page.close();
        assert.deepEqual(state.pageErrors, []);
    });
});
