/* Carrying out what the policy decided: verdicts into the learner's
 * stream, commits through the ledger's COMMIT script (capped per day,
 * idempotent by check), flags with their evidence (each also an event in
 * pd:events), and the Verdict and Status that must wait until Redis
 * holds what they report. While Redis is down these writes wait in the
 * bounded commit buffer (redis.commit_buffer) and go out when it is
 * back; past the buffer, crediting pauses. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backlog.h"
#include "ledger.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "session-internal.h"
#include "store.h"

/* Travels with the PING that follows a decision's writes; the session
 * may be gone when the reply comes, so it is found again by connection
 * and serial. */
struct credit_ctx {
    struct core *core;
    uint64_t conn;
    uint64_t serial;
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

/* ---------------------------------------------------------------------
 * The commit buffer
 *
 * Every write of the credit path (commits, verdict records, flags and
 * their evidence) goes to Redis at once while it is up and nothing waits
 * before it; otherwise it joins the buffer, in order, to be sent when
 * Redis answers again. A write whose reply is lost joins it too. The
 * ledger's scripts are idempotent by check id, so a write that reached
 * Redis before its reply was lost adds nothing when sent again.
 * ------------------------------------------------------------------ */

/* Writes one decision may need: its verdict record, a commit per day
 * touched, the evidence JPEG (two writes) and its flags. */
#define CREDIT_DECISION_ENTRIES 8
/* Error replies after which a write is given up (and counted). */
#define CREDIT_ERROR_ATTEMPTS 3

static struct backlog buffer;
static int buffer_ready;

static struct backlog *buffer_of(struct core *core)
{
    if (!buffer_ready) {
        size_t n = core->cfg.commit_buffer > 0
                       ? (size_t)core->cfg.commit_buffer : 0;

        if (backlog_init(&buffer, n, BACKLOG_MAX_BYTES) != BACKLOG_OK) {
            log_warning("msg=\"commit buffer: out of memory\" "
                        "entries=%zu", n);
            backlog_init(&buffer, 0, 0);
        }
        buffer_ready = 1;
    }
    return &buffer;
}

static void buffer_gauges(const struct backlog *b)
{
    metrics_set(commit_buffer_depth, b->depth);
    metrics_set(commit_buffer_bytes, b->bytes);
}

/* Writes go to the buffer while Redis is down and while anything older
 * waits there, so they reach Redis in the order they were decided. */
static int deferring(struct core *core)
{
    return !store_is_up(core->store) || buffer_of(core)->depth > 0;
}

int credit_can_defer(struct core *core)
{
    return !deferring(core) ||
           backlog_room(buffer_of(core), CREDIT_DECISION_ENTRIES,
                        core->cfg.max_frame + 4096);
}

int credit_paused(struct core *core)
{
    /* A reserve of one decision stays free past the pause, for what
     * is decided while paused (the pending check, a missed challenge). */
    return deferring(core) &&
           !backlog_room(buffer_of(core), 2 * CREDIT_DECISION_ENTRIES,
                         2 * (core->cfg.max_frame + 4096));
}

const char *credit_pause_reason(struct core *core)
{
    return buffer_of(core)->cap > 0 ? "commit_buffer_full" : "paused";
}

static void drop(struct backlog_entry *e, const char *why)
{
    metrics_add(commit_buffer_dropped, 1);
    log_warning("msg=\"ledger write dropped\" why=\"%s\" script=%d "
                "check=%s commit=%d ms=%lld", why, e->script, e->check,
                e->commit, (long long)e->ms);
    backlog_entry_free(e);
}

static void defer(struct core *core, struct backlog_entry *e)
{
    struct backlog *b = buffer_of(core);

    e->buffered = 1;
    if (backlog_push(b, e) != BACKLOG_OK) {
        drop(e, "commit buffer full");
        return;
    }
    metrics_add(commit_buffer_buffered, 1);
    buffer_gauges(b);
}

static int retryable(const redisReply *r)
{
    static const char *const transient[] = {
        "LOADING", "NOSCRIPT", "BUSY", "TRYAGAIN", "MASTERDOWN",
        "CLUSTERDOWN",
    };

    if (r == NULL)
        return 1;
    if (r->type != REDIS_REPLY_ERROR || r->str == NULL)
        return 0;
    for (size_t i = 0; i < sizeof(transient) / sizeof(*transient); i++) {
        if (strncmp(r->str, transient[i], strlen(transient[i])) == 0)
            return 1;
    }
    return 0;
}

/* What Redis says after a commit: the session's totals, and the daily
 * cap reached. Time still waiting in the buffer counts towards today,
 * so a learner buffered up to the cap stays paused. */
static void commit_applied(struct backlog_entry *e, redisReply *r)
{
    struct core *core = e->core;
    struct session *s = session_find(core, e->conn, e->serial);
    struct policy_decision d;

    metrics_add(credited_ms, (uint64_t)r->element[0]->integer);
    if (s == NULL)
        return;
    if (e->pending && s->pending_ms >= e->ms)
        s->pending_ms -= e->ms;
    s->credited_ms = r->element[1]->integer;
    if (e->day == s->today)
        s->today_ms = r->element[2]->integer + s->pending_ms;
    if (s->today_ms >= core->cfg.policy.daily_cap_ms &&
        policy_reason(&s->pol) != POLICY_REASON_DAILY_CAP)
        policy_set_suspended(&s->pol, POLICY_REASON_DAILY_CAP,
                             core_now_ms(), &d);
}

static int commit_reply_ok(const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 4)
        return 0;
    for (size_t i = 0; i < 4; i++) {
        if (r->element[i]->type != REDIS_REPLY_INTEGER)
            return 0;
    }
    return 1;
}

static void on_entry_reply(struct store *st, redisReply *r, void *arg)
{
    struct backlog_entry *e = arg;
    int bad = r != NULL && (r->type == REDIS_REPLY_ERROR ||
                            (e->commit && !commit_reply_ok(r)));

    (void)st;
    if (retryable(r)) {
        defer(e->core, e);
        return;
    }
    if (bad && ++e->attempts < CREDIT_ERROR_ATTEMPTS) {
        defer(e->core, e);
        return;
    }
    if (bad) {
        drop(e, r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
        return;
    }
    if (e->buffered)
        metrics_add(commit_buffer_applied, 1);
    if (e->commit)
        commit_applied(e, r);
    backlog_entry_free(e);
}

static int send_entry(struct core *core, struct backlog_entry *e)
{
    if (e->script >= 0)
        return ledger_run(core->store, (enum ledger_script)e->script,
                          on_entry_reply, e, e->nkeys, e->argc, e->argv,
                          e->lens) == LEDGER_OK ? 0 : -1;
    return store_command_argv(core->store, on_entry_reply, e, e->argc,
                              e->argv, e->lens) == STORE_OK ? 0 : -1;
}

/* Sends e now, or buffers it; either way it is no longer the caller's.
 * Returns 1 when it was buffered. */
static int write_entry(struct core *core, struct backlog_entry *e)
{
    if (e == NULL) {
        metrics_add(commit_buffer_dropped, 1);
        log_warning("msg=\"ledger write dropped\" why=\"out of memory\"");
        return 0;
    }
    e->core = core;
    if (!deferring(core) && send_entry(core, e) == 0)
        return 0;
    defer(core, e);
    return 1;
}

void credit_drain(struct core *core)
{
    struct backlog *b = buffer_of(core);
    struct backlog_entry *e;
    size_t sent = 0;

    while (b->depth > 0 && store_is_up(core->store)) {
        e = backlog_pop(b);
        if (send_entry(core, e) != 0) {
            backlog_unpop(b, e);
            break;
        }
        sent++;
    }
    buffer_gauges(b);
    if (sent > 0)
        log_notice("msg=\"commit buffer sent\" writes=%zu left=%zu", sent,
                   b->depth);
}

void session_commits_flush(struct core *core)
{
    credit_drain(core);
}

void session_commits_free(struct core *core)
{
    struct backlog *b = buffer_of(core);
    struct backlog_entry *e;
    int64_t ms = 0;

    if (b->depth > 0) {
        for (size_t i = 0; i < b->depth; i++) {
            e = b->ring[(b->head + i) % b->cap];
            if (e->commit)
                ms += e->ms;
        }
        log_warning("msg=\"stopped with ledger writes unsent: Redis "
                    "down\" writes=%zu commit_ms=%lld", b->depth,
                    (long long)ms);
        metrics_add(commit_buffer_dropped, b->depth);
    }
    backlog_free(b);
    buffer_ready = 0;
}

static void send_commit(struct core *core, struct session *s,
                        const char *check, int64_t day, int64_t ms)
{
    char skey[320], ckey[320], dkey[200], stream[200];
    char day_s[16], ms_s[24], cap_s[24], now_s[24], maxlen[24];
    struct backlog_entry *e;
    const char *argv[15];
    char sess[64];

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
    e = backlog_entry_new(LEDGER_COMMIT, 5, 15, argv, NULL);
    if (e != NULL) {
        e->commit = 1;
        e->conn = s->conn;
        e->serial = s->serial;
        e->day = day;
        e->ms = ms;
        snprintf(e->check, sizeof(e->check), "%s", check);
    }
    if (write_entry(core, e)) {
        /* Buffered: not committed yet, but it counts towards today so
         * that the daily cap holds while Redis is away. */
        e->pending = 1;
        s->pending_ms += ms;
        if (day == s->today)
            s->today_ms += ms;
    }
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
        lens[i] = i == 2 ? len : strlen(argv[i]);
    write_entry(core, backlog_entry_new(LEDGER_EVIDENCE, 2, 5, argv, lens));

    snprintf(idx, sizeof(idx), "pd:evidx:%s", eid);
    argv[0] = "SET";
    argv[1] = idx;
    argv[2] = s->claims.sub;
    argv[3] = "PX";
    argv[4] = ttl;
    write_entry(core, backlog_entry_new(-1, 0, 5, argv, NULL));
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
    write_entry(core, backlog_entry_new(LEDGER_VERDICT, 2, 10, argv, NULL));
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
    int buffered;

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
    buffered = write_entry(core, backlog_entry_new(LEDGER_FLAG, 9, 21, argv,
                                                   NULL));
    metrics_add(flags_opened, 1);
    log_notice("msg=\"flag opened\" flag=%s kind=%s learner=%s session=%s "
               "withheld_ms=%lld buffered=%d", fid, policy_flag_name(kind),
               s->claims.sub, s->id, (long long)withheld_ms, buffered);
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
    char evidence[33] = "", cpart[48], lkey[320];
    struct credit_ctx *done;
    int64_t now = core_now_ms();
    int64_t flag_day;
    int buffered = deferring(core);

    if (reply != NULL && reply->has_verdict)
        record_verdict(core, s, check, reply);
    if (d->ncommit == 0 && d->nflags == 0) {
        reply_now(core, s, reply);
        return;
    }

    for (int i = 0; i < d->ncommit; i++) {
        snprintf(cpart, sizeof(cpart), "%s:%lld", check,
                 (long long)d->commit[i].day);
        send_commit(core, s, cpart, d->commit[i].day, d->commit[i].ms);
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

    /* Buffered writes cannot be waited for: the Verdict goes now, and
     * its Status shows the buffered time as pending_s, not credited_s.
     * Otherwise Redis answers in order on one connection: a read of a
     * key of the learner's (so that on a cluster it goes to the master
     * that took the writes above, where a keyless PING would not)
     * answers after every one of them. */
    done = buffered ? NULL : ctx_new(core, s);
    if (done != NULL && reply != NULL)
        done->reply = *reply;
    if (done != NULL)
        ledger_key(lkey, sizeof(lkey), s->claims.sub, "enrol");
    if (done == NULL ||
        store_command(core->store, on_written, done, "EXISTS %s", lkey) !=
            STORE_OK) {
        free(done);
        reply_now(core, s, reply);
    }
}

void credit_keep_absence(struct core *core, struct session *s,
                         const unsigned char *jpeg, size_t len)
{
    if (s->absent_evidence[0] != '\0' || !credit_can_defer(core))
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
