// The supervisor console: open flags with their evidence, reviews, and the
// learner's credited hours. It talks only to this daemon's /v1 API on the
// same origin, with the pasted tokens as "Authorization: Bearer"; they are
// kept in sessionStorage, so they last as long as the tab. No framework:
// the page is a template cloned per flag.
//
// Evidence JPEGs are fetched with the token and shown through blob: URLs,
// because an <img src> cannot send an Authorization header (and the
// Content-Security-Policy allows images from 'self' and blob: only).

const KEY_SUPERVISOR = 'proctord.console.supervisor';
const KEY_PLATFORM = 'proctord.console.platform';
const FLAG_LIMIT = 100;

const $ = (id) => document.getElementById(id);
let objectUrls = []; // of the evidence shown, revoked on each redraw
let listing = 0; // the latest list request; older answers are dropped

/* ----------------------------------------------------------------------
 * Tokens and the API
 * -------------------------------------------------------------------- */

function token(key) {
    return sessionStorage.getItem(key) || '';
}

class ApiError extends Error {
    constructor(status, message) {
        super(message);
        this.status = status;
    }
}

// fetch() against the daemon's API. Returns the parsed JSON, or the Blob
// when asked; throws ApiError with the daemon's {"error"} text otherwise.
async function api(path, { key = KEY_SUPERVISOR, method = 'GET', body, blob = false } = {}) {
    const headers = { Authorization: 'Bearer ' + token(key) };
    if (body !== undefined)
        headers['Content-Type'] = 'application/json';
    const res = await fetch(path, {
        method, headers, cache: 'no-store', credentials: 'omit',
        body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!res.ok) {
        let why = res.statusText;
        try {
            why = (await res.json()).error || why;
        } catch {
            // Not JSON: keep the status text.
        }
        throw new ApiError(res.status, why);
    }
    return blob ? res.blob() : res.json();
}

function say(text, kind = 'bad') {
    const el = $('message');
    el.textContent = text;
    el.className = 'message ' + kind;
    el.hidden = !text;
}

// A refused supervisor token sends the supervisor back to sign in.
function failed(err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
        say(`The supervisor token was refused (${err.message}). Sign in again.`);
        signOut(false);
        return;
    }
    say(err.message || String(err));
}

/* ----------------------------------------------------------------------
 * Signing in and out
 * -------------------------------------------------------------------- */

function showSignedIn(signedIn) {
    $('signin').hidden = signedIn;
    $('review').hidden = !signedIn;
    $('signout').hidden = !signedIn;
}

function signIn(ev) {
    ev.preventDefault();
    const sup = $('supervisor-token').value.trim();
    const plat = $('platform-token').value.trim();
    if (!sup)
        return;
    sessionStorage.setItem(KEY_SUPERVISOR, sup);
    if (plat)
        sessionStorage.setItem(KEY_PLATFORM, plat);
    else
        sessionStorage.removeItem(KEY_PLATFORM);
    $('supervisor-token').value = '';
    $('platform-token').value = '';
    say('');
    showSignedIn(true);
    loadFlags();
}

function signOut(clearMessage = true) {
    sessionStorage.removeItem(KEY_SUPERVISOR);
    sessionStorage.removeItem(KEY_PLATFORM);
    clearFlags();
    if (clearMessage)
        say('');
    showSignedIn(false);
}

/* ----------------------------------------------------------------------
 * The flag list
 * -------------------------------------------------------------------- */

function clearFlags() {
    for (const url of objectUrls)
        URL.revokeObjectURL(url);
    objectUrls = [];
    $('flags').replaceChildren();
    $('count').textContent = '';
}

function query() {
    const q = new URLSearchParams({ status: $('f-status').value, limit: String(FLAG_LIMIT) });
    for (const [name, id] of [['kind', 'f-kind'], ['org', 'f-org'], ['course', 'f-course'],
                              ['learner', 'f-learner']]) {
        const v = $(id).value.trim();
        if (v)
            q.set(name, v);
    }
    return q;
}

async function loadFlags() {
    const mine = ++listing;
    let body;

    try {
        body = await api('/v1/flags?' + query());
    } catch (err) {
        if (mine === listing)
            failed(err);
        return;
    }
    if (mine !== listing)
        return;
    clearFlags();
    const flags = body.flags || [];
    $('count').textContent = flags.length === FLAG_LIMIT
        ? `the newest ${flags.length} flags` : `${flags.length} flag${flags.length === 1 ? '' : 's'}`;
    if (flags.length === 0) {
        const p = document.createElement('p');
        p.className = 'empty';
        p.textContent = 'No flags match.';
        $('flags').append(p);
    }
    for (const flag of flags)
        $('flags').append(flagCard(flag));
}

function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60)
        return `${s} s`;
    const m = Math.floor(s / 60);
    return m < 60 ? `${m} min ${s % 60} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function when(rfc3339) {
    if (!rfc3339)
        return '';
    const d = new Date(rfc3339);
    return Number.isNaN(d.getTime()) ? rfc3339 : d.toLocaleString();
}

function flagCard(flag) {
    const card = $('flag-template').content.firstElementChild.cloneNode(true);
    const set = (cls, text) => { card.querySelector('.' + cls).textContent = text; };

    card.dataset.flagId = flag.id;
    card.dataset.status = flag.status;
    set('kind', flag.kind.replace(/_/g, ' '));
    set('status', flag.status);
    card.querySelector('.status').classList.add('status-' + flag.status);
    set('learner', flag.learner_id);
    set('org', flag.org || '(none)');
    set('course', flag.course || '(none)');
    set('opened', when(flag.opened_at));
    set('withheld', duration(flag.withheld_seconds));
    set('session', flag.session_id);
    if (flag.status === 'open') {
        for (const el of card.querySelectorAll('.reviewed-row'))
            el.remove();
        card.querySelector('.decide').addEventListener('submit', (ev) => review(ev, flag, card));
    } else {
        set('reviewed', `${flag.status} by ${flag.reviewed_by} at ${when(flag.reviewed_at)}` +
            (flag.note ? `: "${flag.note}"` : ''));
        card.querySelector('.decide').remove();
    }
    showEvidence(card.querySelector('.evidence'), flag.evidence || []);
    showHours(card.querySelector('.hours'), flag);
    return card;
}

// The enrolled photo is not kept (only its hash), so the evidence is
// judged on its own, beside the flag's data.
async function showEvidence(box, ids) {
    if (ids.length === 0) {
        box.textContent = 'No evidence image for this flag.';
        return;
    }
    for (const id of ids) {
        const fig = document.createElement('figure');
        const cap = document.createElement('figcaption');
        cap.textContent = 'loading evidence...';
        fig.append(cap);
        box.append(fig);
        try {
            const url = URL.createObjectURL(await api('/v1/evidence/' + encodeURIComponent(id),
                                                      { blob: true }));
            objectUrls.push(url);
            const img = document.createElement('img');
            img.className = 'evidence-img';
            img.alt = 'Evidence snapshot ' + id;
            img.dataset.evidenceId = id;
            img.src = url;
            fig.prepend(img);
            cap.textContent = 'Snapshot ' + id.slice(0, 8);
        } catch (err) {
            cap.textContent = err.status === 404 ? 'Evidence expired or missing.'
                : `Evidence not loaded: ${err.message}`;
            if (err.status === 401 || err.status === 403)
                failed(err);
        }
    }
}

async function showHours(dd, flag) {
    if (!token(KEY_PLATFORM) || !flag.course)
        return;
    dd.textContent = 'loading...';
    try {
        const h = await api(`/v1/learners/${encodeURIComponent(flag.learner_id)}/hours?course=` +
                            encodeURIComponent(flag.course), { key: KEY_PLATFORM });
        dd.dataset.creditedSeconds = String(h.credited_seconds);
        dd.textContent = `${h.credit_hours} h (${duration(h.credited_seconds)})` +
            (h.required_hours != null ? ` of ${h.required_hours} h required` : '');
    } catch (err) {
        dd.textContent = `not available: ${err.message}`;
    }
}

async function review(ev, flag, card) {
    ev.preventDefault();
    const decision = ev.submitter && ev.submitter.dataset.decision;
    const result = card.querySelector('.result');
    const buttons = card.querySelectorAll('.decide button');
    if (decision !== 'confirm' && decision !== 'dismiss')
        return;

    for (const b of buttons)
        b.disabled = true;
    result.textContent = 'saving...';
    try {
        const note = card.querySelector('.note').value.trim();
        const done = await api(`/v1/flags/${encodeURIComponent(flag.id)}/review`,
                               { method: 'POST', body: { decision, note } });
        card.dataset.status = done.status;
        const credited = done.credited_seconds
            ? `; ${duration(done.credited_seconds)} credited back` : '';
        result.textContent = `${done.status}${credited}`;
        say(`Flag ${flag.id} ${done.status}${credited}.`, 'good');
        showHours(card.querySelector('.hours'), flag);
        // Out of the open list at the next refresh; left in place now so
        // the supervisor sees what was done.
        const status = card.querySelector('.status');
        status.textContent = done.status;
        status.className = 'status status-' + done.status;
    } catch (err) {
        result.textContent = `not saved: ${err.message}`;
        for (const b of buttons)
            b.disabled = false;
        if (err.status === 401 || err.status === 403)
            failed(err);
    }
}

/* ----------------------------------------------------------------------
 * Start
 * -------------------------------------------------------------------- */

$('signin').addEventListener('submit', signIn);
$('signout').addEventListener('click', () => signOut());
$('filters').addEventListener('submit', (ev) => {
    ev.preventDefault();
    loadFlags();
});
for (const id of ['f-status', 'f-kind'])
    $(id).addEventListener('change', loadFlags);

if (token(KEY_SUPERVISOR)) {
    showSignedIn(true);
    loadFlags();
} else {
    showSignedIn(false);
}
