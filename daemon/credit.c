/* Carrying out what the policy decided: verdicts into the learner's
 * stream, commits through the ledger's COMMIT script (capped per day,
 * idempotent by check), flags with their evidence (each also an event in
 * pd:events), and the Verdict and Status that must wait until Redis
 * holds what they report. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "session-internal.h"
#include "store.h"

/* Travels with one asynchronous write; the session may be gone when the
 * reply comes, so it is found again by connection and serial. */
struct credit_ctx {
    struct core *core;
    uint64_t conn;
    uint64_t serial;
    char check[40];
    int64_t day;
    int64_t ms;
    struct credit_reply reply;
};

static struct credit_ctx *ctx_new(struct core *core, struct session *s)
{
    struct credit_ctx *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->core = core;
    c->conn = s->conn;
    c->serial = s->serial;
    return c;
}

static void keep_for_retry(struct session *s, const char *check,
                           int64_t day, int64_t ms)
{
    struct session_retry *r;

    if (s->nretry == SESSION_RETRY_MAX) {
        log_warning("msg=\"commit lost: retry list full\" session=%s "
                    "learner=%s check=%s ms=%lld", s->id, s->claims.sub,
                    check, (long long)ms);
        return;
    }
    r = &s->retry[s->nretry++];
    snprintf(r->check, sizeof(r->check), "%s", check);
    r->day = day;
    r->ms = ms;
}

static void on_commit(struct store *st, redisReply *r, void *arg)
{
    struct credit_ctx *c = arg;
    struct session *s = session_find(c->core, c->conn, c->serial);
    struct policy_decision d;

    (void)st;
    if (s == NULL) {
        if (r == NULL)
            log_warning("msg=\"commit reply lost, session gone\" check=%s "
                        "ms=%lld", c->check, (long long)c->ms);
        free(c);
        return;
    }
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 4) {
        keep_for_retry(s, c->check, c->day, c->ms);
        free(c);
        return;
    }
    metrics_add(credited_ms, (uint64_t)r->element[0]->integer);
    s->credited_ms = r->element[1]->integer;
    if (c->day == s->today)
        s->today_ms = r->element[2]->integer;
    if (s->today_ms >= c->core->cfg.policy.daily_cap_ms &&
        policy_reason(&s->pol) != POLICY_REASON_DAILY_CAP)
        policy_set_suspended(&s->pol, POLICY_REASON_DAILY_CAP,
                             core_now_ms(), &d);
    free(c);
}

static int send_commit(struct core *core, struct session *s,
                       const char *check, int64_t day, int64_t ms)
{
    char skey[320], ckey[320], dkey[200], stream[200];
    char day_s[16], ms_s[24], cap_s[24], now_s[24], maxlen[24];
    struct credit_ctx *c = ctx_new(core, s);
    const char *argv[15];
    char sess[64];

    if (c == NULL)
        return -1;
    snprintf(sess, sizeof(sess), "session:%s", s->id);
    snprintf(ckey, sizeof(ckey), "pd:{%s}:course:%s", s->claims.sub,
             s->claims.course);
    ledger_key(skey, sizeof(skey), s->claims.sub, sess);
    ledger_key(dkey, sizeof(dkey), s->claims.sub, "days");
    ledger_key(stream, sizeof(stream), s->claims.sub, "stream");
    policy_day_format(day, day_s, sizeof(day_s));
    snprintf(ms_s, sizeof(ms_s), "%lld", (long long)ms);
    snprintf(cap_s, sizeof(cap_s), "%lld",
             (long long)core->cfg.policy.daily_cap_ms);
    snprintf(now_s, sizeof(now_s), "%lld", (long long)core_now_ms());
    snprintf(maxlen, sizeof(maxlen), "%lld",
             (long long)core->cfg.events_maxlen);
    snprintf(c->check, sizeof(c->check), "%s", check);
    c->day = day;
    c->ms = ms;

    argv[0] = skey;
    argv[1] = ckey;
    argv[2] = dkey;
    argv[3] = stream;
    argv[4] = LEDGER_EVENTS_KEY;
    argv[5] = check;
    argv[6] = day_s;
    argv[7] = ms_s;
    argv[8] = cap_s;
    argv[9] = s->claims.course;
    argv[10] = s->id;
    argv[11] = now_s;
    argv[12] = s->claims.sub;
    argv[13] = s->claims.org;
    argv[14] = maxlen;
    if (ledger_run(core->store, LEDGER_COMMIT, on_commit, c, 5, 15, argv,
                   NULL) != LEDGER_OK) {
        free(c);
        return -1;
    }
    return 0;
}

/* The JPEG goes in with its id in the learner's evidence set, which an
 * erasure reads; the global index beside it is in another slot. */
static void store_evidence(struct core *core, struct session *s,
                           const char *eid, const unsigned char *jpeg,
                           size_t len)
{
    char key[320], set[200], idx[64], ttl[24];
    const char *argv[5];
    size_t lens[5];

    snprintf(idx, sizeof(idx), "evidence:%s", eid);
    ledger_key(key, sizeof(key), s->claims.sub, idx);
    ledger_key(set, sizeof(set), s->claims.sub, "evidence");
    snprintf(ttl, sizeof(ttl), "%lld",
             (long long)core->cfg.policy.evidence_ttl_ms);
    argv[0] = key;
    argv[1] = set;
    argv[2] = (const char *)jpeg;
    argv[3] = ttl;
    argv[4] = eid;
    for (int i = 0; i < 5; i++)
        lens[i] = strlen(argv[i]);
    lens[2] = len;
    ledger_run(core->store, LEDGER_EVIDENCE, NULL, NULL, 2, 5, argv, lens);
    store_command(core->store, NULL, NULL, "SET pd:evidx:%s %s PX %s", eid,
                  s->claims.sub, ttl);
}

/* Every verdict the policy acted on goes to the learner's stream and
 * counts towards the session's exam result. */
static void record_verdict(struct core *core, struct session *s,
                           const char *check,
                           const struct credit_reply *reply)
{
    char skey[320], stream[200], sess[64], cid[24], sim[16], faces[16];
    char now[24];
    const char *argv[10];

    snprintf(sess, sizeof(sess), "session:%s", s->id);
    ledger_key(skey, sizeof(skey), s->claims.sub, sess);
    ledger_key(stream, sizeof(stream), s->claims.sub, "stream");
    snprintf(cid, sizeof(cid), "%llu",
             (unsigned long long)reply->challenge_id);
    snprintf(sim, sizeof(sim), "%.3f", (double)reply->similarity);
    snprintf(faces, sizeof(faces), "%u", (unsigned)reply->faces);
    snprintf(now, sizeof(now), "%lld", (long long)core_now_ms());
    argv[0] = skey;
    argv[1] = stream;
    argv[2] = s->id;
    argv[3] = s->claims.course;
    argv[4] = cid;
    argv[5] = policy_outcome_name((enum policy_outcome)reply->outcome);
    argv[6] = sim;
    argv[7] = faces;
    argv[8] = now;
    argv[9] = check;
    ledger_run(core->store, LEDGER_VERDICT, NULL, NULL, 2, 10, argv, NULL);
}

static void send_flag(struct core *core, struct session *s,
                      enum policy_flag kind, int64_t withheld_ms,
                      int64_t day, const char *check, const char *evidence,
                      int64_t now)
{
    char skey[320], fkey[320], zkey[200], stream[200], sess[64], fsuf[64];
    char ckey[320], fid[33], fcheck[64], opened[24], withheld[24];
    char day_s[16], maxlen[24];
    const char *argv[21];

    ledger_random_id(fid);
    snprintf(sess, sizeof(sess), "session:%s", s->id);
    snprintf(fsuf, sizeof(fsuf), "flag:%s", fid);
    ledger_key(skey, sizeof(skey), s->claims.sub, sess);
    ledger_key(fkey, sizeof(fkey), s->claims.sub, fsuf);
    ledger_key(zkey, sizeof(zkey), s->claims.sub, "flags");
    ledger_key(stream, sizeof(stream), s->claims.sub, "stream");
    snprintf(ckey, sizeof(ckey), "pd:{%s}:course:%s", s->claims.sub,
             s->claims.course);
    snprintf(maxlen, sizeof(maxlen), "%lld",
             (long long)core->cfg.events_maxlen);
    snprintf(fcheck, sizeof(fcheck), "%s:%s", check, policy_flag_name(kind));
    snprintf(opened, sizeof(opened), "%lld", (long long)now);
    snprintf(withheld, sizeof(withheld), "%lld", (long long)withheld_ms);
    policy_day_format(day, day_s, sizeof(day_s));

    argv[0] = skey;
    argv[1] = fkey;
    argv[2] = zkey;
    argv[3] = stream;
    argv[4] = ckey;
    argv[5] = LEDGER_EVENTS_KEY;
    argv[6] = "pd:flagindex";
    argv[7] = "pd:flags:all";
    argv[8] = "pd:flags:open";
    argv[9] = fcheck;
    argv[10] = fid;
    argv[11] = policy_flag_name(kind);
    argv[12] = s->claims.sub;
    argv[13] = s->claims.org;
    argv[14] = s->claims.course;
    argv[15] = s->id;
    argv[16] = opened;
    argv[17] = evidence;
    argv[18] = withheld;
    argv[19] = day_s;
    argv[20] = maxlen;
    if (ledger_run(core->store, LEDGER_FLAG, NULL, NULL, 9, 21, argv,
                   NULL) != LEDGER_OK) {
        log_warning("msg=\"flag not written: Redis down\" session=%s "
                    "learner=%s kind=%s", s->id, s->claims.sub,
                    policy_flag_name(kind));
        return;
    }
    metrics_add(flags_opened, 1);
    log_notice("msg=\"flag opened\" flag=%s kind=%s learner=%s session=%s "
               "withheld_ms=%lld", fid, policy_flag_name(kind),
               s->claims.sub, s->id, (long long)withheld_ms);
}

static void on_written(struct store *st, redisReply *r, void *arg)
{
    struct credit_ctx *c = arg;
    struct session *s = session_find(c->core, c->conn, c->serial);

    (void)st;
    (void)r;
    if (s != NULL) {
        if (c->reply.has_verdict)
            session_send_reply(c->core, s, &c->reply);
        session_send_status(c->core, s);
    }
    free(c);
}

static void reply_now(struct core *core, struct session *s,
                      const struct credit_reply *reply)
{
    if (reply != NULL && reply->has_verdict)
        session_send_reply(core, s, reply);
    session_send_status(core, s);
}

void credit_apply(struct core *core, struct session *s,
                  const struct policy_decision *d, const char *check,
                  const unsigned char *jpeg, size_t jpeg_len,
                  const struct credit_reply *reply)
{
    char evidence[33] = "", cpart[48];
    struct credit_ctx *done;
    int64_t now = core_now_ms();
    int64_t flag_day;

    if (reply != NULL && reply->has_verdict && store_is_up(core->store))
        record_verdict(core, s, check, reply);
    if (d->ncommit == 0 && d->nflags == 0) {
        reply_now(core, s, reply);
        return;
    }
    if (!store_is_up(core->store)) {
        for (int i = 0; i < d->ncommit; i++) {
            snprintf(cpart, sizeof(cpart), "%s:%lld", check,
                     (long long)d->commit[i].day);
            keep_for_retry(s, cpart, d->commit[i].day, d->commit[i].ms);
        }
        for (int i = 0; i < d->nflags; i++)
            log_warning("msg=\"flag not written: Redis down\" session=%s "
                        "learner=%s kind=%s", s->id, s->claims.sub,
                        policy_flag_name(d->flags[i].kind));
        reply_now(core, s, reply);
        return;
    }

    for (int i = 0; i < d->ncommit; i++) {
        snprintf(cpart, sizeof(cpart), "%s:%lld", check,
                 (long long)d->commit[i].day);
        if (send_commit(core, s, cpart, d->commit[i].day,
                        d->commit[i].ms) != 0)
            keep_for_retry(s, cpart, d->commit[i].day, d->commit[i].ms);
    }
    if (d->nflags > 0 && jpeg != NULL && jpeg_len > 0) {
        ledger_random_id(evidence);
        store_evidence(core, s, evidence, jpeg, jpeg_len);
    } else if (d->nflags > 0 && s->absent_evidence[0] != '\0') {
        /* A no_face flag opened by time passing: its evidence is the
         * face-less frame that began the stretch. */
        memcpy(evidence, s->absent_evidence, sizeof(evidence));
    }
    flag_day = d->ndiscard > 0 ? d->discard[d->ndiscard - 1].day
                               : policy_day_index(now,
                                                  session_utc_offset(now));
    for (int i = 0; i < d->nflags; i++)
        send_flag(core, s, d->flags[i].kind, d->flags[i].withheld_ms,
                  flag_day, check, evidence, now);

    /* Redis answers in order: this reply comes after every write above. */
    done = ctx_new(core, s);
    if (done != NULL && reply != NULL)
        done->reply = *reply;
    if (done == NULL ||
        store_command(core->store, on_written, done, "PING") != STORE_OK) {
        free(done);
        reply_now(core, s, reply);
    }
}

void credit_keep_absence(struct core *core, struct session *s,
                         const unsigned char *jpeg, size_t len)
{
    if (s->absent_evidence[0] != '\0' || !store_is_up(core->store))
        return;
    ledger_random_id(s->absent_evidence);
    store_evidence(core, s, s->absent_evidence, jpeg, len);
}

void credit_flag(struct core *core, struct session *s,
                 enum policy_flag kind, int64_t withheld_ms,
                 const char *check, int64_t now)
{
    send_flag(core, s, kind, withheld_ms,
              policy_day_index(now, session_utc_offset(now)), check, "",
              now);
}

void credit_retry(struct core *core, struct session *s)
{
    int n = s->nretry;
    struct session_retry copy[SESSION_RETRY_MAX];

    if (n == 0 || !store_is_up(core->store))
        return;
    memcpy(copy, s->retry, sizeof(copy));
    s->nretry = 0;
    for (int i = 0; i < n; i++) {
        if (send_commit(core, s, copy[i].check, copy[i].day, copy[i].ms))
            keep_for_retry(s, copy[i].check, copy[i].day, copy[i].ms);
    }
}
