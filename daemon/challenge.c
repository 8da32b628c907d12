/* Face checks: challenges at random (exponential gaps, so a learner
 * cannot predict the next one), their deadlines, and the path of a
 * snapshot through the vision pool, the replay check and the policy to
 * a Verdict. */
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
    struct vision_job *job;
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

static void send_challenge(struct core *core, struct session *s,
                           int64_t now)
{
    Proctor__V1__ServerMessage m = PROCTOR__V1__SERVER_MESSAGE__INIT;
    Proctor__V1__Challenge c = PROCTOR__V1__CHALLENGE__INIT;

    /* Ids grow with the clock, so they stay unique for a session id
     * that is resumed after a restart: commits are keyed by them. */
    s->challenges++;
    s->challenge_id = (uint64_t)now * 1000 + s->challenges % 1000;
    s->challenge_deadline_ms = now + core->cfg.policy.challenge_deadline_ms;
    s->next_challenge_ms = 0;
    c.challenge_id = s->challenge_id;
    c.deadline_ms = (uint32_t)core->cfg.policy.challenge_deadline_ms;
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

static int face_outcome(struct core *core, struct session *s,
                        const struct vision_result *r, float *similarity,
                        int *shared)
{
    float threshold = (float)core->cfg.policy.match_threshold;
    float other;

    *similarity = 0;
    *shared = 0;
    if (threshold < 0)
        threshold = vision_default_threshold(vision_pool_engine(core->vision));
    if (r->status != VISION_OK)
        return POLICY_BAD_IMAGE;
    if (r->faces == 0 || r->dim == 0)
        return POLICY_NO_FACE;
    if (r->faces > 1)
        return POLICY_MULTIPLE_FACES;
    *similarity = vision_similarity(r->embedding, s->emb, r->dim);
    if (*similarity >= threshold)
        return POLICY_MATCH;
    other = session_best_other(core, s, r->embedding, r->dim);
    *shared = other >= threshold && other > *similarity;
    return POLICY_MISMATCH;
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

static void decide(struct core *core, struct session *s,
                   struct snap_ctx *ctx, redisReply *sigs)
{
    const struct vision_result *r = &ctx->job->result;
    struct credit_reply reply;
    struct policy_decision d;
    int outcome, shared;
    float similarity;
    char check[40];
    int64_t now = core_now_ms();

    outcome = face_outcome(core, s, r, &similarity, &shared);
    if ((outcome == POLICY_MATCH || outcome == POLICY_MISMATCH) &&
        is_replay(r, sigs))
        outcome = POLICY_REPLAYED;
    if (r->status == VISION_OK && r->dim > 0)
        remember_signature(core, s, r);

    memset(&reply, 0, sizeof(reply));
    reply.has_verdict = 1;
    reply.challenge_id = ctx->challenge_id;
    reply.outcome = outcome;
    reply.similarity = similarity;
    reply.faces = (uint32_t)(r->faces > 0 ? r->faces : 0);
    log_verbose("msg=\"verdict\" session=%s learner=%s challenge=%llu "
                "outcome=%s similarity=%.3f faces=%d shared=%d", s->id,
                s->claims.sub, (unsigned long long)ctx->challenge_id,
                policy_outcome_name(outcome), similarity, r->faces, shared);

    challenge_schedule(core, s, now, outcome != POLICY_MATCH);
    if (!store_is_up(core->store)) {
        /* Nothing can be committed or discarded now; the provisional
         * time waits for the next check. */
        session_send_verdict(core, s, reply.challenge_id, outcome,
                             similarity, reply.faces);
        session_send_status(core, s);
        return;
    }
    policy_on_verdict(&core->cfg.policy, &s->pol, outcome, shared, now, &d);
    if (outcome == POLICY_MATCH)
        s->absent_evidence[0] = '\0';
    else if (outcome == POLICY_NO_FACE && d.nflags == 0)
        credit_keep_absence(core, s, ctx->job->jpeg, ctx->job->len);
    snprintf(check, sizeof(check), "%llu",
             (unsigned long long)(ctx->challenge_id != 0
                                      ? ctx->challenge_id
                                      : (uint64_t)now * 1000));
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

void challenge_on_snapshot(struct core *core, struct session *s,
                           Proctor__V1__Snapshot *snap, int64_t now)
{
    uint64_t cid = snap->challenge_id;
    struct snap_ctx *ctx;
    unsigned char *copy;

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
    copy = malloc(snap->jpeg.len > 0 ? snap->jpeg.len : 1);
    if (ctx == NULL || copy == NULL) {
        free(ctx);
        free(copy);
        return;
    }
    memcpy(copy, snap->jpeg.data, snap->jpeg.len);
    ctx->core = core;
    ctx->conn = s->conn;
    ctx->serial = s->serial;
    ctx->challenge_id = cid;
    ctx->received_ms = now;
    ctx->job = vision_job_new(copy, snap->jpeg.len, on_analysed);
    if (ctx->job == NULL) {
        free(copy);
        free(ctx);
        return;
    }
    ctx->job->arg = ctx;

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
}
