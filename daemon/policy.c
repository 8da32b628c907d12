/* Crediting rules: heartbeats accrue provisional time, face verdicts
 * commit or discard it, time passing ends stretches and opens absence and
 * idle flags. Pure functions over a session held by the caller; the
 * contracts are in policy.h, the reasons for each rule here. */
#include "policy.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

_Static_assert(POLICY_DAYS >= 2, "folding a day needs a next one");

/* Absence: none, only poor images so far (crediting goes on), or a
 * NO_FACE seen (crediting stops). */
#define ABSENT_NONE 0
#define ABSENT_POOR 1
#define ABSENT_NO_FACE 2

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* Rounds toward minus infinity, so instants before 1970 or a negative
 * offset still fall into the right day. */
static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;

    if (a % b != 0 && ((a < 0) != (b < 0)))
        q--;
    return q;
}

/* ======================================================================
 * Provisional time per day
 * ====================================================================== */

static void prov_add(struct policy_session *s, int64_t day, int64_t ms)
{
    int i;

    for (i = 0; i < s->nprov; i++) {
        if (s->prov[i].day == day) {
            s->prov[i].ms += ms;
            return;
        }
    }

    /* Only a session unmatched across three midnights gets here: moving
     * the oldest day's time one day later can only lose it to a cap,
     * never credit more than was studied. */
    if (s->nprov == POLICY_DAYS) {
        s->prov[1].ms += s->prov[0].ms;
        memmove(&s->prov[0], &s->prov[1],
                (POLICY_DAYS - 1) * sizeof(s->prov[0]));
        s->nprov--;
    }

    /* Keep days in order, oldest first, as the commit lists them. */
    i = s->nprov;
    while (i > 0 && s->prov[i - 1].day > day) {
        s->prov[i] = s->prov[i - 1];
        i--;
    }
    s->prov[i].day = day;
    s->prov[i].ms = ms;
    s->nprov++;
}

/* Adds [a, b) to the days it covers, split at each local midnight. */
static void prov_accrue(struct policy_session *s, int64_t a, int64_t b,
                        int32_t utc_offset_s)
{
    while (a < b) {
        int64_t day = policy_day_index(a, utc_offset_s);
        int64_t next = (day + 1) * POLICY_MS_PER_DAY
                       - (int64_t)utc_offset_s * 1000;
        int64_t part = min64(b, next) - a;

        prov_add(s, day, part);
        a += part;
    }
}

/* Moves all provisional time into parts[] and returns its sum. */
static int64_t prov_take(struct policy_session *s, struct policy_day_ms *parts,
                         int *n)
{
    int64_t sum = 0;
    int i;

    for (i = 0; i < s->nprov; i++) {
        parts[i] = s->prov[i];
        sum += s->prov[i].ms;
    }
    *n = s->nprov;
    s->nprov = 0;
    return sum;
}

/* ======================================================================
 * Idle window
 * ====================================================================== */

static int64_t ring_width(const struct config_policy *cfg)
{
    int64_t w = (cfg->idle_window_ms + POLICY_IDLE_BUCKETS - 1)
                / POLICY_IDLE_BUCKETS;

    if (w < 1)
        w = 1;
    if (w > (int64_t)UINT32_MAX)
        w = UINT32_MAX;
    return w;
}

/* A new window length (SIGHUP) cannot reuse buckets of the old width:
 * start over, which also waits a full window before judging again. */
static void ring_reset(struct policy_session *s, int64_t width, int64_t origin)
{
    memset(s->ring, 0, sizeof(s->ring));
    s->ring_sum = 0;
    s->ring_head = 0;
    s->ring_origin_ms = origin;
    s->bucket_ms = width;
    s->idle_flagged = 0;
}

/* Makes the newest bucket the one holding t - 1, emptying the buckets
 * that fall out of the window on the way. */
static void ring_advance(struct policy_session *s, int64_t t)
{
    int64_t head, k;

    if (t <= s->ring_origin_ms)
        return;
    head = (t - 1 - s->ring_origin_ms) / s->bucket_ms;
    if (head <= s->ring_head)
        return;

    if (head - s->ring_head >= POLICY_IDLE_BUCKETS) {
        memset(s->ring, 0, sizeof(s->ring));
        s->ring_sum = 0;
    } else {
        for (k = s->ring_head + 1; k <= head; k++) {
            s->ring_sum -= s->ring[k % POLICY_IDLE_BUCKETS];
            s->ring[k % POLICY_IDLE_BUCKETS] = 0;
        }
    }
    s->ring_head = head;
}

static int64_t ring_window_start(const struct policy_session *s)
{
    return max64(s->ring_origin_ms,
                 s->ring_origin_ms + (s->ring_head - POLICY_IDLE_BUCKETS + 1)
                                     * s->bucket_ms);
}

/* Counts [a, b) as bad time; what lies before the window is gone. */
static void ring_add_bad(struct policy_session *s, int64_t a, int64_t b)
{
    a = max64(a, ring_window_start(s));
    while (a < b) {
        int64_t k = (a - s->ring_origin_ms) / s->bucket_ms;
        int64_t end = s->ring_origin_ms + (k + 1) * s->bucket_ms;
        int64_t part = min64(b, end) - a;

        s->ring[k % POLICY_IDLE_BUCKETS] += (uint32_t)part;
        s->ring_sum += part;
        a += part;
    }
}

/* Classifies the wall time from acct_ms to now: [good_lo, good_hi) was
 * attentive and verified, the rest is bad. Every ms of the session is
 * classified once, so the share is of wall time, not of heartbeats. */
static void account(const struct config_policy *cfg, struct policy_session *s,
                    int64_t now, int64_t good_lo, int64_t good_hi)
{
    int64_t from = s->acct_ms;

    if (now <= from)
        return;
    s->acct_ms = now;
    if (cfg->idle_window_ms <= 0)
        return;

    if (s->bucket_ms != ring_width(cfg))
        ring_reset(s, ring_width(cfg), from);
    ring_advance(s, now);

    good_lo = max64(good_lo, from);
    good_hi = min64(good_hi, now);
    if (good_hi > good_lo) {
        ring_add_bad(s, from, good_lo);
        ring_add_bad(s, good_hi, now);
    } else {
        ring_add_bad(s, from, now);
    }
}

/* ======================================================================
 * Decisions
 * ====================================================================== */

static void decision_begin(struct policy_decision *d)
{
    memset(d, 0, sizeof(*d));
}

static void flag_open(struct policy_decision *d, enum policy_flag kind,
                      int64_t withheld_ms)
{
    if (d->nflags == POLICY_MAX_FLAGS)
        return;
    d->flags[d->nflags].kind = kind;
    d->flags[d->nflags].withheld_ms = withheld_ms;
    d->nflags++;
}

/* Discards the provisional time into d and opens kind with it withheld.
 * The session is unverified until the next MATCH: who sits there now is
 * in doubt. */
static void discard_flag(struct policy_session *s, struct policy_decision *d,
                         enum policy_flag kind)
{
    int64_t ms = prov_take(s, d->discard, &d->ndiscard);

    d->discard_ms = ms;
    flag_open(d, kind, ms);
    s->verified = 0;
}

static void idle_check(const struct config_policy *cfg,
                       struct policy_session *s, struct policy_decision *d)
{
    int64_t covered;

    if (cfg->idle_window_ms <= 0 || s->bucket_ms == 0)
        return;
    if (s->acct_ms - s->ring_origin_ms < cfg->idle_window_ms)
        return;
    if (s->idle_flagged
        && s->acct_ms - s->idle_flag_at_ms < cfg->idle_window_ms)
        return;

    covered = s->acct_ms - ring_window_start(s);
    if (covered <= 0)
        return;
    if ((double)s->ring_sum >= cfg->idle_share * (double)covered) {
        flag_open(d, POLICY_FLAG_IDLE, 0);
        s->idle_flagged = 1;
        s->idle_flag_at_ms = s->acct_ms;
    }
}

static enum policy_reason attention(const struct config_policy *cfg,
                                    const struct policy_session *s, int64_t now)
{
    if (!s->in_stretch)
        return POLICY_REASON_NO_HEARTBEAT;
    if (!s->visible)
        return POLICY_REASON_HIDDEN;
    if (!s->focused)
        return POLICY_REASON_UNFOCUSED;
    if (now - s->last_activity_ms > cfg->idle_after_ms) {
        if (s->media_playing && s->media_rate > POLICY_MEDIA_MAX_RATE)
            return POLICY_REASON_MEDIA_RATE;
        return POLICY_REASON_IDLE;
    }
    return POLICY_REASON_NONE;
}

/* Pause first (nothing can be credited), then the face (nothing accrues
 * whatever the page does), then the page. */
static void decision_end(struct policy_session *s, struct policy_decision *d)
{
    enum policy_state state;
    enum policy_reason reason;

    if (s->suspended != POLICY_REASON_NONE) {
        state = POLICY_SUSPENDED;
        reason = s->suspended;
    } else if (s->absent == ABSENT_NO_FACE) {
        state = POLICY_UNVERIFIED;
        reason = POLICY_REASON_NO_FACE;
    } else if (!s->verified) {
        state = POLICY_UNVERIFIED;
        reason = POLICY_REASON_NOT_VERIFIED;
    } else if (s->attn != POLICY_REASON_NONE) {
        state = POLICY_IDLE;
        reason = s->attn;
    } else {
        state = POLICY_ACTIVE;
        reason = POLICY_REASON_NONE;
    }

    d->state = state;
    d->reason = reason;
    d->state_changed = state != s->state || reason != s->reason;
    s->state = state;
    s->reason = reason;
}

/* ======================================================================
 * Session lifecycle
 * ====================================================================== */

void policy_session_init(struct policy_session *s, int64_t now_ms, int exam)
{
    memset(s, 0, sizeof(*s));
    s->started_ms = now_ms;
    s->exam = exam != 0;
    s->last_activity_ms = now_ms;
    s->acct_ms = now_ms;
    s->ring_origin_ms = now_ms;
    s->suspended = POLICY_REASON_NONE;
    s->attn = POLICY_REASON_NO_HEARTBEAT;
    s->state = POLICY_UNVERIFIED;
    s->reason = POLICY_REASON_NOT_VERIFIED;
}

void policy_on_resume(const struct config_policy *cfg, struct policy_session *s,
                      int64_t now_ms, struct policy_decision *d)
{
    decision_begin(d);

    /* The time away had no heartbeats: bad for the idle window. */
    s->in_stretch = 0;
    account(cfg, s, now_ms, 0, 0);

    s->verified = 0;
    s->last_activity_ms = max64(s->last_activity_ms, now_ms);
    s->attn = POLICY_REASON_NO_HEARTBEAT;
    idle_check(cfg, s, d);
    decision_end(s, d);
}

void policy_set_suspended(struct policy_session *s, enum policy_reason reason,
                          int64_t now_ms, struct policy_decision *d)
{
    /* The pause is a flag the next heartbeat reads; no time to settle. */
    (void)now_ms;
    decision_begin(d);
    s->suspended = reason;
    decision_end(s, d);
}

/* ======================================================================
 * Heartbeats
 * ====================================================================== */

static int rate_ok(double rate)
{
    /* Written so that NaN fails. */
    return rate > 0.0 && rate <= POLICY_MEDIA_MAX_RATE;
}

/* Playing at a sane rate at both ends, and the position moved as the
 * wall clock says it should at those rates, give or take the slack. */
static int media_in_step(const struct policy_session *s,
                         const struct policy_heartbeat *hb, int64_t dt_ms)
{
    double lo_rate, hi_rate, moved_ms, slack_ms;

    if (!s->media_playing || !hb->media_playing)
        return 0;
    if (!rate_ok(s->media_rate) || !rate_ok(hb->playback_rate))
        return 0;

    lo_rate = fmin(s->media_rate, hb->playback_rate);
    hi_rate = fmax(s->media_rate, hb->playback_rate);
    moved_ms = (hb->media_position_s - s->media_position_s) * 1000.0;
    slack_ms = POLICY_MEDIA_SLACK_MS
               + (double)dt_ms * hi_rate * POLICY_MEDIA_SLACK_PCT / 100.0;
    return moved_ms >= (double)dt_ms * lo_rate - slack_ms
           && moved_ms <= (double)dt_ms * hi_rate + slack_ms;
}

/* A heartbeat at or before the last one credits nothing. What it says
 * can only make the next interval stricter: a hidden or unfocused page
 * sticks, its input counts as of the last heartbeat (the client will not
 * count it again), its media is ignored. Calling this twice with the same
 * heartbeat is the same as once. */
static void heartbeat_stale(const struct config_policy *cfg,
                            struct policy_session *s,
                            const struct policy_heartbeat *hb)
{
    s->visible = s->visible && hb->page_visible;
    s->focused = s->focused && hb->window_focused;
    if (hb->input_events > 0)
        s->last_activity_ms = max64(s->last_activity_ms, s->last_hb_ms);
    s->attn = attention(cfg, s, s->last_hb_ms);
}

static void heartbeat_remember(struct policy_session *s,
                               const struct policy_heartbeat *hb, int64_t now)
{
    s->have_hb = 1;
    s->in_stretch = 1;
    s->last_hb_ms = now;
    s->last_client_ms = hb->client_time_ms;
    s->visible = hb->page_visible != 0;
    s->focused = hb->window_focused != 0;
    s->media_playing = hb->media_playing != 0;
    s->media_rate = hb->playback_rate;
    s->media_position_s = hb->media_position_s;
}

void policy_on_heartbeat(const struct config_policy *cfg,
                         struct policy_session *s,
                         const struct policy_heartbeat *hb, int64_t now_ms,
                         int32_t utc_offset_s, struct policy_decision *d)
{
    int64_t prev = s->last_hb_ms, lo = 0, hi = 0, active_end;
    int counts, attentive, busy;

    decision_begin(d);
    if (s->have_hb && now_ms <= prev) {
        heartbeat_stale(cfg, s, hb);
        decision_end(s, d);
        return;
    }

    /* Whether the interval since the last heartbeat is study at all. */
    counts = s->have_hb && s->in_stretch
             && now_ms - prev <= cfg->heartbeat_grace_ms
             && hb->client_time_ms >= s->last_client_ms;
    attentive = counts && s->visible && s->focused && hb->page_visible
                && hb->window_focused;
    busy = hb->input_events > 0
           || (attentive && media_in_step(s, hb, now_ms - prev));

    /* Without activity in the interval, the learner is still counted
     * present up to idle_after past the last activity, not beyond. */
    if (busy || now_ms - s->last_activity_ms <= cfg->idle_after_ms)
        active_end = now_ms;
    else
        active_end = s->last_activity_ms + cfg->idle_after_ms;

    /* Only time after the verifying MATCH and before a NO_FACE. */
    if (attentive && s->verified) {
        lo = max64(prev, s->verified_at_ms);
        hi = active_end;
        if (s->absent == ABSENT_NO_FACE)
            hi = min64(hi, s->absent_since_ms);
        if (hi <= lo)
            lo = hi = 0;
    }
    if (hi > lo && s->suspended == POLICY_REASON_NONE) {
        prov_accrue(s, lo, hi, utc_offset_s);
        d->accrued_ms = hi - lo;
    }
    account(cfg, s, now_ms, lo, hi);

    if (busy)
        s->last_activity_ms = now_ms;
    heartbeat_remember(s, hb, now_ms);
    s->attn = attention(cfg, s, now_ms);
    idle_check(cfg, s, d);
    decision_end(s, d);
}

/* ======================================================================
 * Face verdicts
 * ====================================================================== */

static void absence_flag(struct policy_session *s, struct policy_decision *d)
{
    discard_flag(s, d, POLICY_FLAG_NO_FACE);
    s->absent = ABSENT_NO_FACE;
    s->absent_flagged = 1;
}

static int absence_expired(const struct config_policy *cfg,
                           const struct policy_session *s, int64_t now)
{
    return !s->absent_flagged
           && now - s->absent_since_ms > cfg->absent_after_ms;
}

static void on_match(struct policy_session *s, int64_t now,
                     struct policy_decision *d)
{
    d->commit_ms = prov_take(s, d->commit, &d->ncommit);

    /* Crediting restarts at the match, not at the last heartbeat: the
     * time before it was unverified or face-less. */
    if (!s->verified || s->absent == ABSENT_NO_FACE)
        s->verified_at_ms = now;
    s->verified = 1;
    s->absent = ABSENT_NONE;
    s->absent_flagged = 0;
}

static void on_no_face(const struct config_policy *cfg,
                       struct policy_session *s, int64_t now,
                       struct policy_decision *d)
{
    /* Poor images before it belong to the same face-less stretch. */
    if (s->absent == ABSENT_NONE)
        s->absent_since_ms = now;
    s->absent = ABSENT_NO_FACE;
    if (!s->absent_flagged && (s->exam || absence_expired(cfg, s, now)))
        absence_flag(s, d);
}

/* One poor image is a bad frame; poor images for longer than
 * absent_after are a camera kept from showing the face. */
static void on_poor_image(const struct config_policy *cfg,
                          struct policy_session *s, int64_t now,
                          struct policy_decision *d)
{
    if (s->absent == ABSENT_NONE) {
        s->absent = ABSENT_POOR;
        s->absent_since_ms = now;
        return;
    }
    if (absence_expired(cfg, s, now))
        absence_flag(s, d);
}

void policy_on_verdict(const struct config_policy *cfg,
                       struct policy_session *s, enum policy_outcome outcome,
                       int shared_face, int64_t now_ms,
                       struct policy_decision *d)
{
    decision_begin(d);
    switch (outcome) {
    case POLICY_MATCH:
        on_match(s, now_ms, d);
        break;
    case POLICY_MISMATCH:
        discard_flag(s, d, shared_face ? POLICY_FLAG_SHARED_FACE
                                       : POLICY_FLAG_FACE_MISMATCH);
        break;
    case POLICY_MULTIPLE_FACES:
        discard_flag(s, d, POLICY_FLAG_MULTIPLE_FACES);
        break;
    case POLICY_REPLAYED:
        discard_flag(s, d, POLICY_FLAG_REPLAYED_IMAGE);
        break;
    case POLICY_SPOOF:
        discard_flag(s, d, POLICY_FLAG_PRESENTATION_ATTACK);
        break;
    case POLICY_NO_FACE:
        on_no_face(cfg, s, now_ms, d);
        break;
    case POLICY_LOW_QUALITY:
    case POLICY_BAD_IMAGE:
        on_poor_image(cfg, s, now_ms, d);
        break;
    case POLICY_LATE:
    default:
        break;
    }
    decision_end(s, d);
}

void policy_on_challenge_missed(const struct config_policy *cfg,
                                struct policy_session *s, int64_t now_ms,
                                struct policy_decision *d)
{
    (void)cfg;
    (void)now_ms;
    decision_begin(d);
    discard_flag(s, d, POLICY_FLAG_CHALLENGE_MISSED);
    decision_end(s, d);
}

/* ======================================================================
 * Time passing
 * ====================================================================== */

void policy_on_tick(const struct config_policy *cfg, struct policy_session *s,
                    int64_t now_ms, struct policy_decision *d)
{
    decision_begin(d);

    /* A stretch past its grace is over: the next heartbeat starts anew,
     * and until then the time counts as missing for the idle window. */
    if (s->in_stretch && now_ms - s->last_hb_ms > cfg->heartbeat_grace_ms)
        s->in_stretch = 0;
    if (!s->in_stretch)
        account(cfg, s, now_ms, 0, 0);

    if (s->absent == ABSENT_NO_FACE && absence_expired(cfg, s, now_ms))
        absence_flag(s, d);

    s->attn = attention(cfg, s, max64(now_ms, s->last_hb_ms));
    idle_check(cfg, s, d);
    decision_end(s, d);
}

/* ======================================================================
 * Reading the session
 * ====================================================================== */

int64_t policy_provisional_ms(const struct policy_session *s)
{
    int64_t sum = 0;
    int i;

    for (i = 0; i < s->nprov; i++)
        sum += s->prov[i].ms;
    return sum;
}

enum policy_state policy_state(const struct policy_session *s)
{
    return s->state;
}

enum policy_reason policy_reason(const struct policy_session *s)
{
    return s->reason;
}

/* ======================================================================
 * Days, caps and hours
 * ====================================================================== */

int64_t policy_day_index(int64_t t_ms, int32_t utc_offset_s)
{
    return floor_div(t_ms + (int64_t)utc_offset_s * 1000, POLICY_MS_PER_DAY);
}

int64_t policy_day_start_ms(int64_t t_ms, int32_t utc_offset_s)
{
    return policy_day_index(t_ms, utc_offset_s) * POLICY_MS_PER_DAY
           - (int64_t)utc_offset_s * 1000;
}

/* Days since 1970-01-01 to a proleptic Gregorian date, the civil calendar
 * algorithm of Howard Hinnant's "chrono-compatible low-level date
 * algorithms". */
int policy_day_format(int64_t day, char *buf, size_t buflen)
{
    int64_t z = day + 719468;
    int64_t era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t mday = doy - (153 * mp + 2) / 5 + 1;
    int64_t mon = mp < 10 ? mp + 3 : mp - 9;
    int64_t year = yoe + era * 400 + (mon <= 2);

    if (buflen < 11 || year < 0 || year > 9999)
        return POLICY_ERR;
    snprintf(buf, buflen, "%04d-%02d-%02d", (int)year, (int)mon, (int)mday);
    return POLICY_OK;
}

int64_t policy_apply_cap(int64_t already_ms, int64_t add_ms, int64_t cap_ms,
                         int64_t *excess_ms)
{
    int64_t credited;

    if (add_ms <= 0) {
        credited = 0;
        add_ms = 0;
    } else if (cap_ms < 0) {
        credited = add_ms;
    } else {
        credited = min64(add_ms, max64(0, cap_ms - max64(0, already_ms)));
    }
    if (excess_ms != NULL)
        *excess_ms = add_ms - credited;
    return credited;
}

int64_t policy_review_credit(int64_t withheld_ms, int64_t already_ms,
                             int64_t cap_ms)
{
    return policy_apply_cap(already_ms, withheld_ms, cap_ms, NULL);
}

int64_t policy_credit_hours_centi(int64_t committed_s,
                                  int minutes_per_credit_hour)
{
    if (minutes_per_credit_hour <= 0 || committed_s <= 0)
        return 0;
    return committed_s * 100 / ((int64_t)minutes_per_credit_hour * 60);
}

int64_t policy_online_cap_centi(double required_hours, double online_share)
{
    double centi;

    if (!(required_hours > 0.0) || !(online_share > 0.0))
        return 0;

    /* 12 x 0.4 is 4.800000000000001 and 72 x 0.4 may land just under
     * 28.8: a micro-hundredth nudge makes floor() see the decimal value. */
    centi = required_hours * online_share * 100.0;
    if (centi > 1e15)
        return (int64_t)1e15;
    return (int64_t)floor(centi + 1e-6);
}

int64_t policy_online_credit_centi(int64_t credit_centi, int64_t cap_centi)
{
    return max64(0, min64(credit_centi, cap_centi));
}

/* ======================================================================
 * Names
 * ====================================================================== */

const char *policy_flag_name(enum policy_flag kind)
{
    switch (kind) {
    case POLICY_FLAG_FACE_MISMATCH: return "face_mismatch";
    case POLICY_FLAG_MULTIPLE_FACES: return "multiple_faces";
    case POLICY_FLAG_NO_FACE: return "no_face";
    case POLICY_FLAG_REPLAYED_IMAGE: return "replayed_image";
    case POLICY_FLAG_SHARED_FACE: return "shared_face";
    case POLICY_FLAG_CONCURRENT_SESSION: return "concurrent_session";
    case POLICY_FLAG_CHALLENGE_MISSED: return "challenge_missed";
    case POLICY_FLAG_IDLE: return "idle";
    case POLICY_FLAG_PRESENTATION_ATTACK: return "presentation_attack";
    case POLICY_FLAG_NONE:
    default: return "";
    }
}

const char *policy_reason_name(enum policy_reason reason)
{
    switch (reason) {
    case POLICY_REASON_NOT_VERIFIED: return "not_verified";
    case POLICY_REASON_NO_FACE: return "no_face";
    case POLICY_REASON_NO_HEARTBEAT: return "no_heartbeat";
    case POLICY_REASON_HIDDEN: return "hidden";
    case POLICY_REASON_UNFOCUSED: return "unfocused";
    case POLICY_REASON_IDLE: return "idle";
    case POLICY_REASON_MEDIA_RATE: return "media_rate";
    case POLICY_REASON_DAILY_CAP: return "daily_cap";
    case POLICY_REASON_PAUSED: return "paused";
    case POLICY_REASON_NONE:
    default: return "";
    }
}

const char *policy_state_name(enum policy_state state)
{
    switch (state) {
    case POLICY_ACTIVE: return "ACTIVE";
    case POLICY_IDLE: return "IDLE";
    case POLICY_UNVERIFIED: return "UNVERIFIED";
    case POLICY_SUSPENDED: return "SUSPENDED";
    default: return "UNKNOWN";
    }
}

const char *policy_outcome_name(enum policy_outcome outcome)
{
    switch (outcome) {
    case POLICY_MATCH: return "MATCH";
    case POLICY_MISMATCH: return "MISMATCH";
    case POLICY_NO_FACE: return "NO_FACE";
    case POLICY_MULTIPLE_FACES: return "MULTIPLE_FACES";
    case POLICY_BAD_IMAGE: return "BAD_IMAGE";
    case POLICY_LATE: return "LATE";
    case POLICY_REPLAYED: return "REPLAYED";
    case POLICY_SPOOF: return "SPOOF";
    case POLICY_LOW_QUALITY: return "LOW_QUALITY";
    default: return "UNKNOWN";
    }
}
