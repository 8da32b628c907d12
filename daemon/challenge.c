/* Face checks: challenges at random (exponential gaps, so a learner
 * cannot predict the next one), some of them asking for a head turn
 * (liveness), their deadlines, and the path of a snapshot or burst
 * through the vision pool, the quality gate, the replay check and the
 * policy to a Verdict. */
#include <math.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.h"
#include "log.h"
#include "metrics.h"
#include "session-internal.h"
#include "store.h"
#include "vision_pool.h"

/* How soon to ask again after a check that saw no usable face, and after
 * the vision queue was full. */
#define CHALLENGE_SOON_MS 10000
#define CHALLENGE_BUSY_MS 15000

/* A replay signature as kept in Redis: the vision signature, then the
 * image's sha256. */
#define CHALLENGE_SIG_LEN (VISION_SIG_BYTES + 32)


struct snap_ctx {
    struct core *core;
    uint64_t conn;
    uint64_t serial;
    uint64_t challenge_id;
    int64_t received_ms;
    int action;                 /* the challenge's, NONE if unsolicited */
    struct vision_job *job;
};

/* What decided an outcome beyond the face itself, for the Verdict and
 * the log. */
struct outcome_detail {
    float similarity;
    int shared;
    const char *hint;           /* LOW_QUALITY: the gate's reason */
    const char *spoof;          /* SPOOF: which liveness check failed */
};

static double uniform01(void)
{
    uint64_t r;

    if (RAND_bytes((unsigned char *)&r, sizeof(r)) != 1)
        r = (uint64_t)rand();
    return ((double)(r >> 11) + 0.5) / 9007199254740992.0;
}

void challenge_schedule(struct core *core, struct session *s, int64_t now,
                        int soon)
{
    const struct config_policy *p = &core->cfg.policy;
    double mean = (double)(s->exam ? p->exam_check_interval_ms
                                   : p->check_interval_ms);
    double gap = -log(uniform01()) * mean;

    /* Bounded on both sides: never two at once, never hours apart. */
    if (gap < (double)p->challenge_deadline_ms)
        gap = (double)p->challenge_deadline_ms;
    if (gap > 4 * mean)
        gap = 4 * mean;
    if (soon)
        gap = CHALLENGE_SOON_MS < gap ? CHALLENGE_SOON_MS : gap;
    s->next_challenge_ms = now + (int64_t)gap;
}

/* policy.liveness_share of the challenges ask for a turn, and the first
 * of a session always does unless the share is 0. Not in degraded mode:
 * the cascade gives no landmarks to see a head turn with. */
static int pick_action(struct core *core, const struct session *s)
{
    double share = core->cfg.policy.liveness_share;

    if (share <= 0 || vision_degraded(vision_pool_engine(core->vision)))
        return PROCTOR__V1__ACTION__NONE;
    if (s->challenges > 0 && uniform01() >= share)
        return PROCTOR__V1__ACTION__NONE;
    return uniform01() < 0.5 ? PROCTOR__V1__ACTION__TURN_LEFT
                             : PROCTOR__V1__ACTION__TURN_RIGHT;
}

static void send_challenge(struct core *core, struct session *s,
                           int64_t now)
{
    Proctor__V1__ServerMessage m = PROCTOR__V1__SERVER_MESSAGE__INIT;
    Proctor__V1__Challenge c = PROCTOR__V1__CHALLENGE__INIT;

    s->challenge_action = pick_action(core, s);
    /* Ids grow with the clock, so they stay unique for a session id
     * that is resumed after a restart: commits are keyed by them. */
    s->challenges++;
    s->challenge_id = (uint64_t)now * 1000 + s->challenges % 1000;
    s->challenge_deadline_ms = now + core->cfg.policy.challenge_deadline_ms;
    s->next_challenge_ms = 0;
    c.challenge_id = s->challenge_id;
    c.deadline_ms = (uint32_t)core->cfg.policy.challenge_deadline_ms;
    c.action = (Proctor__V1__Action)s->challenge_action;
    m.body_case = PROCTOR__V1__SERVER_MESSAGE__BODY_CHALLENGE;
    m.challenge = &c;
    session_send(core, s, &m);
}

void challenge_tick(struct core *core, struct session *s, int64_t now)
{
    struct policy_decision d;
    char check[40];

    if (!s->welcomed || s->analysing)
        return;
    if (s->challenge_id != 0 && now > s->challenge_deadline_ms) {
        snprintf(check, sizeof(check), "m%llu",
                 (unsigned long long)s->challenge_id);
        log_verbose("msg=\"challenge missed\" session=%s learner=%s "
                    "challenge=%llu", s->id, s->claims.sub,
                    (unsigned long long)s->challenge_id);
        s->challenge_id = 0;
        policy_on_challenge_missed(&core->cfg.policy, &s->pol, now, &d);
        credit_apply(core, s, &d, check, NULL, 0, NULL);
        challenge_schedule(core, s, now, 0);
        return;
    }
    if (s->challenge_id == 0 && s->next_challenge_ms != 0 &&
        now >= s->next_challenge_ms)
        send_challenge(core, s, now);
}

/* ---------------------------------------------------------------------
 * From the vision result to the outcome
 * ------------------------------------------------------------------ */

static float match_threshold(struct core *core)
{
    float threshold = (float)core->cfg.policy.match_threshold;

    if (threshold < 0)
        threshold = vision_default_threshold(vision_pool_engine(core->vision));
    return threshold;
}

/* The quality gate comes before any face verdict: a frame too poor to
 * judge (a dark room, a blurred or tiny face) is LOW_QUALITY, never
 * MISMATCH or MULTIPLE_FACES. */
static int face_outcome(struct core *core, struct session *s,
                        const struct vision_result *r,
                        struct outcome_detail *od)
{
    float threshold = match_threshold(core);
    float other;

    if (r->status != VISION_OK)
        return POLICY_BAD_IMAGE;
    if (r->quality != VISION_QUALITY_OK) {
        od->hint = vision_quality_hint(r->quality);
        return POLICY_LOW_QUALITY;
    }
    if (r->faces == 0 || r->dim == 0)
        return POLICY_NO_FACE;
    if (r->faces > 1)
        return POLICY_MULTIPLE_FACES;
    od->similarity = vision_similarity(r->embedding, s->emb, r->dim);
    if (od->similarity >= threshold)
        return POLICY_MATCH;
    /* A head turned far aside often fails against a frontal enrolment
     * even for the learner: asked again soon rather than flagged. An
     * impostor gains nothing: poor frames past absent_after are absence,
     * and nothing is committed meanwhile. */
    if (fabsf(r->yaw) >= VISION_POSE_MAX) {
        od->hint = "turned_away";
        return POLICY_LOW_QUALITY;
    }
    other = session_best_other(core, s, r->embedding, r->dim);
    od->shared = other >= threshold && other > od->similarity;
    return POLICY_MISMATCH;
}

/* Every frame of the burst must be one to judge on; the first that is not
 * gives the outcome (POLICY_MATCH when all are). */
static int burst_frames_outcome(const struct vision_burst *b,
                                struct outcome_detail *od)
{
    for (int i = 0; i < b->n; i++) {
        const struct vision_result *r = &b->frame[i];

        if (r->status != VISION_OK)
            return POLICY_BAD_IMAGE;
        if (r->quality != VISION_QUALITY_OK) {
            od->hint = vision_quality_hint(r->quality);
            return POLICY_LOW_QUALITY;
        }
        if (r->faces > 1)
            return POLICY_MULTIPLE_FACES;
    }
    return POLICY_MATCH;
}

/* The same person throughout: no frame far from the enrolled face, none
 * far from the frame before it, the first none far from the evidence (a
 * face swapped in mid-burst, or a photo of the learner as the evidence of
 * someone else's turn). */
static int burst_same_person(const struct session *s,
                             const struct vision_result *evidence,
                             const struct vision_burst *b)
{
    const struct vision_result *prev = evidence;

    for (int i = 0; i < b->n; i++) {
        const struct vision_result *r = &b->frame[i];

        if (r->dim == 0)
            continue;
        if (vision_similarity(r->embedding, s->emb, r->dim) <
            VISION_BURST_FLOOR_ENROLLED)
            return 0;
        if (prev != NULL &&
            vision_similarity(r->embedding, prev->embedding, r->dim) <
            VISION_BURST_FLOOR_ADJACENT)
            return 0;
        prev = r;
    }
    return 1;
}

/* An action challenge: the evidence frame judged as any snapshot, then
 * the burst. Too few frames, another person within it, no turn the asked
 * way or the motion of a flat picture is SPOOF. */
static int burst_outcome(struct core *core, struct session *s,
                         const struct vision_job *job,
                         struct outcome_detail *od)
{
    const struct vision_burst *b = job->burst;
    int outcome;

    if (job->nframes < VISION_BURST_MIN || b == NULL) {
        od->spoof = "missing_frames";
        return POLICY_SPOOF;
    }
    if (b->status != VISION_OK)
        return POLICY_BAD_IMAGE;
    outcome = face_outcome(core, s, &job->result, od);
    if (outcome != POLICY_MATCH && outcome != POLICY_MISMATCH)
        return outcome;
    if ((outcome = burst_frames_outcome(b, od)) != POLICY_MATCH)
        return outcome;
    if (od->similarity < match_threshold(core))
        return POLICY_MISMATCH;
    if (!burst_same_person(s, &job->result, b))
        od->spoof = "identity";
    else if (b->usable < 2)
        od->spoof = "too_few_faces";
    else if (!b->turned)
        od->spoof = "not_turned";
    else if (b->planar)
        od->spoof = "planar";
    return od->spoof != NULL ? POLICY_SPOOF : POLICY_MATCH;
}

static int is_replay(const struct vision_result *r, redisReply *sigs)
{
    if (sigs == NULL || sigs->type != REDIS_REPLY_ARRAY)
        return 0;
    for (size_t i = 0; i < sigs->elements; i++) {
        redisReply *e = sigs->element[i];

        if (e->type != REDIS_REPLY_STRING || e->len != CHALLENGE_SIG_LEN)
            continue;
        if (memcmp(e->str + VISION_SIG_BYTES, r->sha256, 32) == 0)
            return 1;
        if (vision_signature_distance((const uint8_t *)e->str,
                                      r->signature) <
            VISION_REPLAY_DISTANCE)
            return 1;
    }
    return 0;
}

/* A burst recorded earlier and sent again, with a new evidence frame:
 * its frames meet the signatures of earlier evidence frames. */
static int burst_replayed(const struct vision_burst *b, redisReply *sigs)
{
    for (int i = 0; b != NULL && i < b->n; i++)
        if (b->frame[i].status == VISION_OK && b->frame[i].dim > 0 &&
            is_replay(&b->frame[i], sigs))
            return 1;
    return 0;
}

static void remember_signature(struct core *core, struct session *s,
                               const struct vision_result *r)
{
    unsigned char sig[CHALLENGE_SIG_LEN];
    char key[320], keep[16];
    const char *argv[3];
    size_t lens[3];

    memcpy(sig, r->signature, VISION_SIG_BYTES);
    memcpy(sig + VISION_SIG_BYTES, r->sha256, 32);
    ledger_key(key, sizeof(key), s->claims.sub, "sigs");
    argv[0] = "LPUSH";
    argv[1] = key;
    argv[2] = (const char *)sig;
    lens[0] = 5;
    lens[1] = strlen(key);
    lens[2] = sizeof(sig);
    store_command_argv(core->store, NULL, NULL, 3, argv, lens);
    snprintf(keep, sizeof(keep), "%d", LEDGER_SIG_KEEP - 1);
    store_command(core->store, NULL, NULL, "LTRIM %s 0 %s", key, keep);
}

static void log_verdict(const struct session *s, const struct snap_ctx *ctx,
                        int outcome, const struct outcome_detail *od)
{
    const struct vision_result *r = &ctx->job->result;
    const struct vision_burst *b = ctx->job->burst;

    log_verbose("msg=\"verdict\" session=%s learner=%s challenge=%llu "
                "outcome=%s similarity=%.3f faces=%d shared=%d hint=%s "
                "quality=%d brightness=%.1f contrast=%.1f sharpness=%.1f "
                "brisque=%.1f yaw=%.2f", s->id, s->claims.sub,
                (unsigned long long)ctx->challenge_id,
                policy_outcome_name(outcome), od->similarity, r->faces,
                od->shared, od->hint ? od->hint : "-", r->quality,
                r->brightness, r->contrast, r->sharpness, r->brisque,
                r->yaw);
    if (ctx->action != PROCTOR__V1__ACTION__NONE)
        log_verbose("msg=\"liveness\" session=%s challenge=%llu action=%d "
                    "frames=%d usable=%d turn=%.3f residual=%.3f "
                    "yaw_min=%.3f yaw_max=%.3f spoof=%s us=%u", s->id,
                    (unsigned long long)ctx->challenge_id, ctx->action,
                    ctx->job->nframes, b ? b->usable : 0, b ? b->turn : 0,
                    b ? b->residual : 0, b ? b->yaw_min : 0,
                    b ? b->yaw_max : 0, od->spoof ? od->spoof : "-",
                    b ? b->us_total : 0);
}

static void decide(struct core *core, struct session *s,
                   struct snap_ctx *ctx, redisReply *sigs)
{
    const struct vision_result *r = &ctx->job->result;
    struct outcome_detail od = {0};
    struct credit_reply reply;
    struct policy_decision d;
    int outcome;
    char check[40];
    int64_t now = core_now_ms();

    if (ctx->action != PROCTOR__V1__ACTION__NONE)
        outcome = burst_outcome(core, s, ctx->job, &od);
    else
        outcome = face_outcome(core, s, r, &od);
    if ((outcome == POLICY_MATCH || outcome == POLICY_MISMATCH) &&
        (is_replay(r, sigs) || burst_replayed(ctx->job->burst, sigs)))
        outcome = POLICY_REPLAYED;
    if (r->status == VISION_OK && r->dim > 0)
        remember_signature(core, s, r);

    memset(&reply, 0, sizeof(reply));
    reply.has_verdict = 1;
    reply.challenge_id = ctx->challenge_id;
    reply.outcome = outcome;
    reply.similarity = od.similarity;
    reply.faces = (uint32_t)(r->faces > 0 ? r->faces : 0);
    reply.hint = od.hint;
    log_verdict(s, ctx, outcome, &od);
    snprintf(check, sizeof(check), "%llu",
             (unsigned long long)(ctx->challenge_id != 0
                                      ? ctx->challenge_id
                                      : (uint64_t)now * 1000));

    challenge_schedule(core, s, now, outcome != POLICY_MATCH);
    if (!credit_can_defer(core)) {
        /* Redis is down and the commit buffer is full: nothing can be
         * committed or discarded now; the provisional time waits for
         * the next check. */
        session_send_reply(core, s, &reply);
        session_send_status(core, s);
        return;
    }
    policy_on_verdict(&core->cfg.policy, &s->pol, outcome, od.shared, now,
                      &d);
    if (outcome == POLICY_MATCH)
        s->absent_evidence[0] = '\0';
    else if (outcome == POLICY_NO_FACE && d.nflags == 0)
        credit_keep_absence(core, s, ctx->job->jpeg, ctx->job->len);
    credit_apply(core, s, &d, check, ctx->job->jpeg, ctx->job->len, &reply);
}

static void on_sigs(struct store *st, redisReply *r, void *arg)
{
    struct snap_ctx *ctx = arg;
    struct session *s = session_find(ctx->core, ctx->conn, ctx->serial);

    (void)st;
    if (s != NULL) {
        s->analysing = 0;
        decide(ctx->core, s, ctx, r);
    }
    vision_job_free(ctx->job);
    free(ctx);
}

static void on_analysed(struct core *core, struct vision_job *job)
{
    struct snap_ctx *ctx = job->arg;
    struct session *s = session_find(core, ctx->conn, ctx->serial);
    char key[320];

    if (s == NULL) {
        vision_job_free(job);
        free(ctx);
        return;
    }
    /* Known shortcoming: with Redis down the replay signatures cannot
     * be read, so a photo sent again passes as a MATCH and its commit
     * waits in the commit buffer like any other (a later check against
     * the stored signatures does not undo it). A per-session copy of the
     * last signatures would close this for replays within a session. */
    ledger_key(key, sizeof(key), s->claims.sub, "sigs");
    if (store_command(core->store, on_sigs, ctx, "LRANGE %s 0 %d", key,
                      LEDGER_SIG_KEEP - 1) != STORE_OK) {
        s->analysing = 0;
        decide(core, s, ctx, NULL);
        vision_job_free(job);
        free(ctx);
    }
}

/* ---------------------------------------------------------------------
 * Snapshots
 * ------------------------------------------------------------------ */

/* Owned copies of an action challenge's burst (at most VISION_BURST_MAX
 * frames) on job. Returns -1 when out of memory (the job is untouched). */
static int copy_burst(struct vision_job *job, const Proctor__V1__Snapshot *snap,
                      int action)
{
    int n = snap->n_frames < VISION_BURST_MAX ? (int)snap->n_frames
                                              : VISION_BURST_MAX;
    unsigned char **frames = calloc((size_t)n + 1, sizeof(*frames));
    size_t *lens = calloc((size_t)n + 1, sizeof(*lens));

    if (frames == NULL || lens == NULL)
        goto fail;
    for (int i = 0; i < n; i++) {
        lens[i] = snap->frames[i].len;
        frames[i] = malloc(lens[i] > 0 ? lens[i] : 1);
        if (frames[i] == NULL)
            goto fail;
        if (lens[i] > 0)
            memcpy(frames[i], snap->frames[i].data, lens[i]);
    }
    return vision_job_set_burst(job, frames, lens, n, action);

fail:
    for (int i = 0; frames != NULL && i < n; i++)
        free(frames[i]);
    free(frames);
    free(lens);
    return -1;
}

/* The job for a snapshot: its evidence frame (jpeg, or frames[0] when jpeg
 * is empty) and, for an action challenge, the burst. With too few frames
 * the job is the evidence alone and the answer SPOOF. */
static struct vision_job *snapshot_job(const Proctor__V1__Snapshot *snap,
                                       int action)
{
    const ProtobufCBinaryData *ev = &snap->jpeg;
    struct vision_job *job;
    unsigned char *copy;

    if (ev->len == 0 && snap->n_frames > 0)
        ev = &snap->frames[0];
    copy = malloc(ev->len > 0 ? ev->len : 1);
    if (copy == NULL)
        return NULL;
    if (ev->len > 0)
        memcpy(copy, ev->data, ev->len);
    job = vision_job_new(copy, ev->len, on_analysed);
    if (job == NULL) {
        free(copy);
        return NULL;
    }
    if (action != PROCTOR__V1__ACTION__NONE &&
        snap->n_frames >= VISION_BURST_MIN &&
        copy_burst(job, snap, action) != 0) {
        vision_job_free(job);
        return NULL;
    }
    return job;
}

struct vision_job *challenge_snapshot_job(const Proctor__V1__Snapshot *snap,
                                          int action)
{
    return snapshot_job(snap, action);
}

void challenge_on_snapshot(struct core *core, struct session *s,
                           Proctor__V1__Snapshot *snap, int64_t now)
{
    uint64_t cid = snap->challenge_id;
    struct snap_ctx *ctx;

    if (cid != 0 && (cid != s->challenge_id ||
                     now > s->challenge_deadline_ms)) {
        session_send_verdict(core, s, cid, PROCTOR__V1__OUTCOME__LATE, 0, 0);
        return;
    }
    if (s->analysing) {
        /* One check at a time: an extra unsolicited frame waits for
         * nothing and is answered as late. */
        session_send_verdict(core, s, cid, PROCTOR__V1__OUTCOME__LATE, 0, 0);
        return;
    }
    if (s->emb == NULL) {
        if (cid != 0)
            s->challenge_id = 0;
        challenge_schedule(core, s, now, 0);
        session_send_verdict(core, s, cid,
                             PROCTOR__V1__OUTCOME__NOT_ENROLLED, 0, 0);
        return;
    }

    ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return;
    ctx->core = core;
    ctx->conn = s->conn;
    ctx->serial = s->serial;
    ctx->challenge_id = cid;
    ctx->received_ms = now;
    ctx->action = cid != 0 ? s->challenge_action : PROCTOR__V1__ACTION__NONE;
    ctx->job = snapshot_job(snap, ctx->action);
    if (ctx->job == NULL) {
        free(ctx);
        return;
    }
    ctx->job->arg = ctx;
    ctx->job->drop_arg = free;

    if (vision_pool_submit(core->vision, ctx->job) != VISION_POOL_OK) {
        /* Back-pressure: no verdict, and the check is asked again
         * later rather than queued without bound. */
        log_verbose("msg=\"vision busy; challenge re-issued later\" "
                    "session=%s", s->id);
        vision_job_free(ctx->job);
        free(ctx);
        if (cid != 0)
            s->challenge_id = 0;
        s->next_challenge_ms = now + CHALLENGE_BUSY_MS;
        return;
    }
    if (cid != 0)
        s->challenge_id = 0;
    s->analysing = 1;
    s->analysing_id = cid;
}
