// The demo course page's script: how a platform's page uses the learner
// client. A real page gets the WebSocket URL and the learner's token from
// its own server (which signs the JWT); this demo reads them from the
// fragment, which never reaches a server or its logs:
//
//   demo/index.html#ws=ws://127.0.0.1:8765/v1/learn&token=JWT
//                   &video=lesson.webm&lesson=lesson-1&resume=SESSION_ID
//
// Everything the client reports is also kept in window.demo, for tests.
import { ProctorClient } from '../client/proctor-client.js';

const params = new URLSearchParams(location.hash.slice(1));
const $ = (id) => document.getElementById(id);
const lesson = $('lesson');

// What each Status.reason means for the learner, and what to do about it.
const REASONS = {
    not_verified: ['warn', 'Look at the camera: a face check is on its way.'],
    not_enrolled: ['bad', 'You are not enrolled yet: ask your training administrator.'],
    no_face: ['warn', 'Face the camera, please.'],
    no_heartbeat: ['warn', 'Reconnecting...'],
    hidden: ['warn', 'Keep this page in view: hidden time is not credited.'],
    unfocused: ['warn', 'Keep this window in front: time in other windows is not credited.'],
    idle: ['warn', 'Still there? Play the lesson or use the page.'],
    media_rate: ['warn', 'Play the lesson at normal speed (2x at most).'],
    daily_cap: ['warn', "Today's online study limit is reached; come back tomorrow."],
    paused: ['warn', 'Crediting is paused for a moment.'],
};

// What a face check's outcome asks of the learner.
const OUTCOMES = {
    MATCH: null,
    LOW_QUALITY: ['warn', 'More light, please: the camera picture is too dark or blurred.'],
    NO_FACE: ['warn', 'Face the camera, please.'],
    BAD_IMAGE: ['warn', 'The camera picture could not be read.'],
    MULTIPLE_FACES: ['bad', 'Only you should be in view of the camera.'],
    MISMATCH: ['bad', 'The camera shows someone other than the enrolled learner.'],
    SPOOF: ['bad', 'Use a live camera, not a photo or a screen.'],
    REPLAYED: ['bad', 'The camera picture repeats an earlier one.'],
    LATE: ['warn', 'The face check was answered too late.'],
    NOT_ENROLLED: ['bad', 'You are not enrolled yet: ask your training administrator.'],
};

// LOW_QUALITY says what to fix in Verdict.hint; an unknown hint falls back
// to the outcome's general message.
const QUALITY_HINTS = {
    too_dark: 'More light, please: the camera picture is too dark.',
    low_contrast: 'More light on your face, please: the picture is flat.',
    blurry: 'Hold still, please: the camera picture is blurred.',
    face_too_small: 'Come closer to the camera, please.',
    turned_away: 'Look at the screen, please: your face was turned aside.',
};

const demo = { welcomes: [], challenges: [], verdicts: [], statuses: [], errors: [],
               closes: [], client: null };
window.demo = demo;

function hms(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const mm = String(Math.floor(s / 60) % 60).padStart(2, '0');
    const ss = String(s % 60).padStart(2, '0');
    return `${Math.floor(s / 3600)}:${mm}:${ss}`;
}

// What the client itself reports (no camera, taken over) comes first; the
// last face check's hint stays until a check matches; the state's own
// reason shows when neither has anything to say.
const hints = { client: null, verdict: null, reason: null };

function hint(entry, from = 'verdict') {
    hints[from] = entry;
    const shown = hints.client || hints.verdict || hints.reason;
    const el = $('hint');
    el.className = 'hint' + (shown ? ' ' + shown[0] : '');
    el.textContent = shown ? shown[1] : '';
}

function start() {
    const url = params.get('ws');
    const token = params.get('token');

    if (params.get('video'))
        lesson.src = params.get('video');
    if (params.get('lesson'))
        lesson.dataset.lessonId = params.get('lesson');
    if (!url || !token) {
        hint(['bad', 'This demo needs #ws=...&token=... in its address.'], 'client');
        return;
    }

    const client = new ProctorClient({
        url, token, media: lesson, preview: $('camera'),
        resumeSessionId: params.get('resume') || undefined,
    });
    demo.client = client;

    client.addEventListener('welcome', (e) => {
        demo.welcomes.push(e.detail);
        $('session').textContent = e.detail.sessionId;
    });
    client.addEventListener('challenge', (e) => {
        demo.challenges.push(e.detail);
        if (e.detail.action !== 'NONE')
            hint(['warn', `Face check: ${e.detail.action.toLowerCase().replace('_', ' ')}, please.`]);
    });
    client.addEventListener('verdict', (e) => {
        const v = e.detail;
        demo.verdicts.push(v);
        $('verdict').textContent = `${v.outcome} at ${new Date().toLocaleTimeString()}`;
        const fix = v.outcome === 'LOW_QUALITY' && QUALITY_HINTS[v.hint];
        hint(fix ? ['warn', fix] : OUTCOMES[v.outcome] || null);
    });
    client.addEventListener('status', (e) => {
        const s = e.detail;
        demo.statuses.push(s);
        $('state').textContent = s.state;
        $('state').className = 'state-' + s.state;
        $('credited').textContent = hms(s.creditedS);
        $('provisional').textContent = hms(s.provisionalS);
        hint(s.reason ? REASONS[s.reason] || ['warn', s.reason] : null, 'reason');
    });
    client.addEventListener('error', (e) => {
        demo.errors.push(e.detail);
        if (e.detail.code === 'camera')
            hint(['bad', `No camera: ${e.detail.message}`], 'client');
    });
    client.addEventListener('close', (e) => {
        demo.closes.push(e.detail);
        if (e.detail.code === 4409)
            hint(['bad', 'This session continues in another window.'], 'client');
        else if (!e.detail.reconnecting)
            $('state').textContent = 'closed';
        else
            $('state').textContent = 'reconnecting';
    });
    client.start();
}

start();
