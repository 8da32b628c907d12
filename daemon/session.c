/* Live sessions on the core thread: Hello and Welcome (new or resumed
 * session ids, kept in Redis so a resume works across restarts), the
 * take-over of an older connection of the same learner, and the replies
 * every message gets. Only this thread touches a session. */
#include "session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ledger.h"
#include "log.h"
#include "metrics.h"
#include "session-internal.h"
#include "store.h"
#include "vision_pool.h"

#define SESSION_BUCKETS 65536
#define ORG_CACHE_MAX 5000
#define HELLO_DEADLINE_MS 2000
#define PARKED_MAX 100000
#define LEASE_CHANNEL "pd:takeover"
#define LEASE_MIN_TTL_MS 10000

struct session;
static void lease_listen(struct core *core);
static void lease_take(struct core *core, struct session *s);

/* An organisation's enrolled embeddings, for the shared_face check. */
struct org_entry {
    char learner[AUTH_IDLEN];
    float *emb;                 /* owned */
    int dim;
};

struct org_cache {
    struct org_cache *next;
    char org[AUTH_IDLEN];
    struct org_entry *entries;  /* owned array */
    int n;
    int cap;
};

struct session_table {
    struct core *core;
    struct session *by_conn[SESSION_BUCKETS];
    struct session *by_learner[SESSION_BUCKETS];
    size_t count;
    uint64_t next_serial;
    struct org_cache *orgs;
    /* Closed sessions with unconfirmed time, kept for resume_window so a
     * learner whose network dropped keeps that time if the next check
     * matches (chained by next_conn, newest first). */
    struct session *parked;
    size_t nparked;
    int32_t offset_s;           /* policy.timezone's offset, cached */
    int64_t offset_until_ms;
    char daemon_id[33];         /* names this process in learner leases */
    int64_t refreshed_ms;       /* the last keep-alive round */
};

/* Names a session across an asynchronous Redis call: the session may
 * be gone when the reply comes, so the callback looks it up again. */
struct session_ref {
    struct core *core;
    uint64_t conn;
    uint64_t serial;
};

/* ---------------------------------------------------------------------
 * The table
 * ------------------------------------------------------------------ */

static size_t hash_conn(uint64_t conn)
{
    conn ^= conn >> 33;
    conn *= 0xff51afd7ed558ccdULL;
    conn ^= conn >> 33;
    return (size_t)(conn & (SESSION_BUCKETS - 1));
}

static size_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;

    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
    return (size_t)(h & (SESSION_BUCKETS - 1));
}

struct session_table *session_table_new(struct core *core)
{
    struct session_table *t = calloc(1, sizeof(*t));

    if (t == NULL)
        return NULL;
    t->core = core;
    ledger_random_id(t->daemon_id);
    lease_listen(core);
    return t;
}

static struct session *find_conn(struct session_table *t, uint64_t conn)
{
    struct session *s = t->by_conn[hash_conn(conn)];

    while (s != NULL && s->conn != conn)
        s = s->next_conn;
    return s;
}

static struct session *find_learner(struct session_table *t,
                                    const char *learner)
{
    struct session *s = t->by_learner[hash_str(learner)];

    while (s != NULL && strcmp(s->claims.sub, learner) != 0)
        s = s->next_learner;
    return s;
}

static void insert(struct session_table *t, struct session *s)
{
    size_t c = hash_conn(s->conn), l = hash_str(s->claims.sub);

    s->next_conn = t->by_conn[c];
    t->by_conn[c] = s;
    s->next_learner = t->by_learner[l];
    t->by_learner[l] = s;
    t->count++;
    metrics_set(sessions_live, t->count);
}

static void unlink_session(struct session_table *t, struct session *s)
{
    struct session **p = &t->by_conn[hash_conn(s->conn)];

    while (*p != s)
        p = &(*p)->next_conn;
    *p = s->next_conn;
    p = &t->by_learner[hash_str(s->claims.sub)];
    while (*p != s)
        p = &(*p)->next_learner;
    *p = s->next_learner;
    t->count--;
    metrics_set(sessions_live, t->count);
}

static void free_session(struct session *s)
{
    free(s->emb);
    free(s);
}

static void free_orgs(struct org_cache *o)
{
    while (o != NULL) {
        struct org_cache *next = o->next;
        for (int i = 0; i < o->n; i++)
            free(o->entries[i].emb);
        free(o->entries);
        free(o);
        o = next;
    }
}

void session_table_free(struct session_table *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < SESSION_BUCKETS; i++) {
        struct session *s = t->by_conn[i];
        while (s != NULL) {
            struct session *next = s->next_conn;
            free_session(s);
            s = next;
        }
    }
    while (t->parked != NULL) {
        struct session *next = t->parked->next_conn;
        free_session(t->parked);
        t->parked = next;
    }
    free_orgs(t->orgs);
    free(t);
}

struct session *session_find(struct core *core, uint64_t conn,
                             uint64_t serial)
{
    struct session *s = find_conn(core->sessions, conn);

    return s != NULL && s->serial == serial ? s : NULL;
}

size_t session_count(const struct session_table *t)
{
    return t->count;
}

/* ---------------------------------------------------------------------
 * Sending
 * ------------------------------------------------------------------ */

void session_send(struct core *core, struct session *s,
                  Proctor__V1__ServerMessage *m)
{
    size_t len;
    unsigned char *buf;

    m->ack_seq = s->ack_seq;
    len = proctor__v1__server_message__get_packed_size(m);
    buf = net_frame_new(len);
    if (buf == NULL) {
        log_warning("msg=\"out of memory for a reply\" session=%s", s->id);
        return;
    }
    proctor__v1__server_message__pack(m, buf);
    net_send(core->net, s->conn, buf, len, 0);
}

void session_send_status(struct core *core, struct session *s)
{
    Proctor__V1__ServerMessage m = PROCTOR__V1__SERVER_MESSAGE__INIT;
    Proctor__V1__Status st = PROCTOR__V1__STATUS__INIT;

    /* Nothing may precede the Welcome; a heartbeat that came before it
     * is answered right after. */
    if (!s->welcomed) {
        if (s->status_pending < UINT8_MAX)
            s->status_pending++;
        return;
    }
    st.credited_s = (uint64_t)(s->credited_ms / 1000);
    st.provisional_s = (uint64_t)(policy_provisional_ms(&s->pol) / 1000);
    st.pending_s = (uint64_t)(s->pending_ms / 1000);
    st.state = (Proctor__V1__State)policy_state(&s->pol);
    st.reason = (char *)policy_reason_name(policy_reason(&s->pol));
    if (policy_reason(&s->pol) == POLICY_REASON_PAUSED)
        st.reason = (char *)credit_pause_reason(core);
    if (s->emb == NULL && st.state == PROCTOR__V1__STATE__UNVERIFIED)
        st.reason = "not_enrolled";
    m.body_case = PROCTOR__V1__SERVER_MESSAGE__BODY_STATUS;
    m.status = &st;
    session_send(core, s, &m);
}

void session_send_verdict(struct core *core, struct session *s,
                          uint64_t challenge_id, int outcome,
                          float similarity, uint32_t faces)
{
    struct credit_reply r = {
        .has_verdict = 1, .challenge_id = challenge_id, .outcome = outcome,
        .similarity = similarity, .faces = faces,
    };

    session_send_reply(core, s, &r);
}

void session_send_reply(struct core *core, struct session *s,
                        const struct credit_reply *reply)
{
    Proctor__V1__ServerMessage m = PROCTOR__V1__SERVER_MESSAGE__INIT;
    Proctor__V1__Verdict v = PROCTOR__V1__VERDICT__INIT;

    v.challenge_id = reply->challenge_id;
    v.outcome = (Proctor__V1__Outcome)reply->outcome;
    v.similarity = reply->similarity;
    v.faces = reply->faces;
    v.hint = (char *)(reply->hint != NULL ? reply->hint : "");
    m.body_case = PROCTOR__V1__SERVER_MESSAGE__BODY_VERDICT;
    m.verdict = &v;
    session_send(core, s, &m);
}

static void send_welcome(struct core *core, struct session *s)
{
    Proctor__V1__ServerMessage m = PROCTOR__V1__SERVER_MESSAGE__INIT;
    Proctor__V1__Welcome w = PROCTOR__V1__WELCOME__INIT;
    int64_t now = core_now_ms();

    w.session_id = s->id;
    w.heartbeat_interval_ms =
        (uint32_t)core->cfg.policy.heartbeat_interval_ms;
    w.credited_s = (uint64_t)(s->credited_ms / 1000);
    m.body_case = PROCTOR__V1__SERVER_MESSAGE__BODY_WELCOME;
    m.welcome = &w;
    session_send(core, s, &m);
    s->welcomed = 1;
    while (s->status_pending > 0) {
        s->status_pending--;
        session_send_status(core, s);
    }
    log_verbose("msg=\"session started\" session=%s learner=%s course=%s "
                "conn=%llx enrolled=%d", s->id, s->claims.sub,
                s->claims.course, (unsigned long long)s->conn,
                s->emb != NULL);

    /* The first check comes right away: nothing accrues before it. */
    s->next_challenge_ms = now;
    challenge_tick(core, s, now);
}

int32_t session_utc_offset(int64_t now_ms)
{
    time_t secs = (time_t)(now_ms / 1000);
    struct tm tm;

    localtime_r(&secs, &tm);
    return (int32_t)tm.tm_gmtoff;
}

/* The offset changes at most at a DST switch, so it is looked up once a
 * minute rather than for every heartbeat. */
static int32_t cached_offset(struct session_table *t, int64_t now)
{
    if (now >= t->offset_until_ms) {
        t->offset_s = session_utc_offset(now);
        t->offset_until_ms = now - now % 60000 + 60000;
    }
    return t->offset_s;
}

/* ---------------------------------------------------------------------
 * Organisations' embeddings (shared_face)
 * ------------------------------------------------------------------ */

static struct org_cache *find_org(struct session_table *t, const char *org,
                                  int create)
{
    struct org_cache *o;

    for (o = t->orgs; o != NULL; o = o->next) {
        if (strcmp(o->org, org) == 0)
            return o;
    }
    if (!create || (o = calloc(1, sizeof(*o))) == NULL)
        return NULL;
    snprintf(o->org, sizeof(o->org), "%s", org);
    o->next = t->orgs;
    t->orgs = o;
    return o;
}

static void org_put(struct org_cache *o, const char *learner,
                    const float *emb, int dim)
{
    struct org_entry *e = NULL;

    for (int i = 0; i < o->n; i++) {
        if (strcmp(o->entries[i].learner, learner) == 0)
            e = &o->entries[i];
    }
    if (e == NULL) {
        if (o->n == ORG_CACHE_MAX)
            return;
        if (o->n == o->cap) {
            int cap = o->cap ? o->cap * 2 : 16;
            struct org_entry *grown = realloc(o->entries,
                                              sizeof(*grown) * (size_t)cap);
            if (grown == NULL)
                return;
            o->entries = grown;
            o->cap = cap;
        }
        e = &o->entries[o->n++];
        memset(e, 0, sizeof(*e));
        snprintf(e->learner, sizeof(e->learner), "%s", learner);
    }
    free(e->emb);
    e->emb = malloc(sizeof(float) * (size_t)dim);
    e->dim = e->emb != NULL ? dim : 0;
    if (e->emb != NULL)
        memcpy(e->emb, emb, sizeof(float) * (size_t)dim);
}

float session_best_other(struct core *core, const struct session *s,
                         const float *emb, int dim)
{
    struct org_cache *o = find_org(core->sessions, s->claims.org, 0);
    float best = -1;

    for (int i = 0; o != NULL && i < o->n; i++) {
        float sim;

        if (o->entries[i].dim != dim ||
            strcmp(o->entries[i].learner, s->claims.sub) == 0)
            continue;
        sim = vision_similarity(emb, o->entries[i].emb, dim);
        if (sim > best)
            best = sim;
    }
    return best;
}

/* Reads an embedding stored by the ledger, if it is of the engine's
 * model. Returns the number of floats, 0 when unusable. */
static int parse_embedding(struct core *core, const redisReply *model,
                           const redisReply *emb, float *out)
{
    const struct vision_engine *e = vision_pool_engine(core->vision);
    int dim = vision_embedding_dim(e);

    if (model == NULL || emb == NULL || model->type != REDIS_REPLY_STRING ||
        emb->type != REDIS_REPLY_STRING ||
        strcmp(model->str, vision_model_id(e)) != 0 ||
        emb->len != (size_t)dim * sizeof(float) || dim > VISION_MAX_DIM)
        return 0;
    memcpy(out, emb->str, emb->len);
    return dim;
}

struct org_load {
    struct core *core;
    char org[AUTH_IDLEN];
    char learner[AUTH_IDLEN];
};

static void on_org_member(struct store *st, redisReply *r, void *arg)
{
    struct org_load *l = arg;
    float emb[VISION_MAX_DIM];
    struct org_cache *o;
    int dim;

    (void)st;
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
        dim = parse_embedding(l->core, r->element[0], r->element[1], emb);
        o = find_org(l->core->sessions, l->org, 1);
        if (dim > 0 && o != NULL)
            org_put(o, l->learner, emb, dim);
    }
    free(l);
}

static void on_org_members(struct store *st, redisReply *r, void *arg)
{
    struct org_load *l = arg;

    if (r != NULL && r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->elements && i < ORG_CACHE_MAX; i++) {
            struct org_load *m;

            if (r->element[i]->type != REDIS_REPLY_STRING ||
                (m = malloc(sizeof(*m))) == NULL)
                continue;
            *m = *l;
            snprintf(m->learner, sizeof(m->learner), "%s",
                     r->element[i]->str);
            if (store_command(st, on_org_member, m,
                              "HMGET pd:{%s}:enrol model emb",
                              m->learner) != STORE_OK)
                free(m);
        }
    }
    free(l);
}

static void load_org(struct core *core, const char *org)
{
    struct org_load *l;

    if (org[0] == '\0' || find_org(core->sessions, org, 0) != NULL)
        return;
    if (find_org(core->sessions, org, 1) == NULL ||
        (l = calloc(1, sizeof(*l))) == NULL)
        return;
    l->core = core;
    snprintf(l->org, sizeof(l->org), "%s", org);
    if (store_command(core->store, on_org_members, l,
                      "SMEMBERS pd:org:{%s}:learners", org) != STORE_OK)
        free(l);
}

void session_enrolled(struct core *core, const char *learner,
                      const char *org, const char *model, const float *emb,
                      int dim)
{
    struct session *s = find_learner(core->sessions, learner);
    struct org_cache *o;

    (void)model;
    if (s != NULL) {
        float *copy = malloc(sizeof(float) * (size_t)dim);
        if (copy != NULL) {
            memcpy(copy, emb, sizeof(float) * (size_t)dim);
            free(s->emb);
            s->emb = copy;
            s->dim = dim;
        }
    }
    if (org != NULL && org[0] != '\0' &&
        (o = find_org(core->sessions, org, 0)) != NULL)
        org_put(o, learner, emb, dim);
}

void session_erased(struct core *core, const char *learner)
{
    struct session_table *t = core->sessions;
    struct session *s = find_learner(t, learner);
    struct policy_decision d;
    int64_t now = core_now_ms();
    char check[40];

    for (struct org_cache *o = t->orgs; o != NULL; o = o->next) {
        for (int i = 0; i < o->n; i++) {
            if (strcmp(o->entries[i].learner, learner) != 0)
                continue;
            free(o->entries[i].emb);
            o->entries[i] = o->entries[--o->n];
            break;
        }
    }
    if (s == NULL)
        return;
    free(s->emb);
    s->emb = NULL;
    s->dim = 0;

    /* A check being analysed would compare against the embedding just
     * freed: a new serial makes its reply (and any other reply in
     * flight for the session) find no session, the snapshot is answered
     * NOT_ENROLLED now, and a new challenge follows at once, answered
     * NOT_ENROLLED like the next ones. */
    if (s->analysing) {
        session_send_verdict(core, s, s->analysing_id,
                             PROCTOR__V1__OUTCOME__NOT_ENROLLED, 0, 0);
        s->serial = ++t->next_serial;
        s->analysing = 0;
        s->challenge_id = 0;
        s->next_challenge_ms = now;
    }

    /* Crediting waits for a match against a new enrolment, as after a
     * resume; the provisional time stays for that match to commit. */
    policy_on_resume(&core->cfg.policy, &s->pol, now, &d);
    snprintf(check, sizeof(check), "e%lld", (long long)now);
    credit_apply(core, s, &d, check, NULL, 0, NULL);
}

/* ---------------------------------------------------------------------
 * Sessions parked after a close, for a resume
 * ------------------------------------------------------------------ */

/* Keeps a closed session's policy state for a resume, or frees it. */
static void park(struct session_table *t, struct session *s, int64_t now)
{
    if (policy_provisional_ms(&s->pol) <= 0 || t->nparked >= PARKED_MAX) {
        free_session(s);
        return;
    }
    free(s->emb);
    s->emb = NULL;
    s->last_seen_ms = now;
    s->next_conn = t->parked;
    t->parked = s;
    t->nparked++;
}

/* Takes the parked session id of learner out of the list, or NULL. */
static struct session *unpark(struct session_table *t, const char *id,
                              const char *learner)
{
    struct session **p = &t->parked;

    for (; *p != NULL; p = &(*p)->next_conn) {
        struct session *s = *p;
        if (strcmp(s->id, id) == 0 && strcmp(s->claims.sub, learner) == 0) {
            *p = s->next_conn;
            t->nparked--;
            return s;
        }
    }
    return NULL;
}

static void expire_parked(struct session_table *t, int64_t now,
                          int64_t window)
{
    struct session **p = &t->parked;

    while (*p != NULL) {
        struct session *s = *p;
        if (now - s->last_seen_ms > window) {
            *p = s->next_conn;
            t->nparked--;
            free_session(s);
        } else {
            p = &s->next_conn;
        }
    }
}

/* ---------------------------------------------------------------------
 * Hello, resume and take-over
 * ------------------------------------------------------------------ */

static int session_id_valid(const char *sid)
{
    size_t n = strlen(sid);

    if (n != 32)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = sid[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return 0;
    }
    return 1;
}

static void apply_hello_reply(struct core *core, struct session *s,
                              redisReply *r)
{
    float emb[VISION_MAX_DIM];
    int dim;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 6 ||
        r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[0]->len != 32)
        return;
    memcpy(s->id, r->element[0]->str, 32);
    s->id[32] = '\0';
    if (r->element[1]->type == REDIS_REPLY_INTEGER)
        s->credited_ms = r->element[1]->integer;
    if (r->element[2]->type == REDIS_REPLY_INTEGER)
        s->today_ms = r->element[2]->integer;
    dim = parse_embedding(core, r->element[3], r->element[4], emb);
    if (dim > 0 && (s->emb = malloc(sizeof(float) * (size_t)dim)) != NULL) {
        memcpy(s->emb, emb, sizeof(float) * (size_t)dim);
        s->dim = dim;
    }
    store_command(core->store, NULL, NULL, "SET pd:sid:%s %s", s->id,
                  s->claims.sub);
    /* Reports list every learner of the organisation, enrolled or not. */
    if (s->claims.org[0] != '\0')
        store_command(core->store, NULL, NULL,
                      "SADD pd:org:{%s}:learners %s", s->claims.org,
                      s->claims.sub);
}

static void on_hello_reply(struct store *st, redisReply *r, void *arg)
{
    struct session_ref *ref = arg;
    struct core *core = ref->core;
    struct session *s = session_find(core, ref->conn, ref->serial);
    struct policy_decision d;

    (void)st;
    if (s != NULL && !s->welcomed) {
        apply_hello_reply(core, s, r);
        if (r != NULL && r->type == REDIS_REPLY_ARRAY)
            lease_take(core, s);
        if (s->today_ms >= core->cfg.policy.daily_cap_ms)
            policy_set_suspended(&s->pol, POLICY_REASON_DAILY_CAP,
                                 core_now_ms(), &d);
        send_welcome(core, s);
    }
    free(ref);
}

static void take_over(struct core *core, struct session *old,
                      struct session *s, int64_t now, int same_session)
{
    struct policy_decision d;
    char check[40];

    log_notice("msg=\"session taken over by a newer login\" session=%s "
               "learner=%s resumed=%d", old->id, old->claims.sub,
               same_session);
    net_send(core->net, old->conn, NULL, 0, 4409);

    /* The same browser coming back (it resumes the very session) keeps
     * its provisional time; a second login elsewhere while the first was
     * active within the minute is a concurrent session. */
    if (same_session) {
        s->pol = old->pol;
        policy_on_resume(&core->cfg.policy, &s->pol, now, &d);
    } else if (now - old->last_active_ms <= 60000 &&
               old->last_active_ms != 0) {
        snprintf(check, sizeof(check), "t%lld", (long long)now);
        credit_flag(core, old, POLICY_FLAG_CONCURRENT_SESSION,
                    policy_provisional_ms(&old->pol), check, now);
    }
    if (old->exam && !same_session)
        ledger_exam_result(core->store, old->claims.sub, old->id, now,
                           core->cfg.events_maxlen);
    unlink_session(core->sessions, old);
    free_session(old);
}

/* ---------------------------------------------------------------------
 * Leases: one daemon credits a learner at a time
 * ------------------------------------------------------------------ */

/* Long enough that a refresh each heartbeat_grace keeps it through a
 * missed round trip or two; short enough that a daemon gone dark lets
 * go of its learners soon. */
static int64_t lease_ttl_ms(const struct core *core)
{
    int64_t ttl = 3 * core->cfg.policy.heartbeat_grace_ms;

    return ttl < LEASE_MIN_TTL_MS ? LEASE_MIN_TTL_MS : ttl;
}

static void lease_holder(const struct core *core, const struct session *s,
                         char *buf, size_t len)
{
    snprintf(buf, len, "%s %s", core->sessions->daemon_id, s->id);
}

/* A login on another daemon holds the learner now: the session here
 * ends as in a take-over on this daemon (4409, a concurrent_session flag
 * when it was active within the minute, the exam result). Unlike one
 * here, a session resumed elsewhere leaves its provisional time behind:
 * policy state is not handed across daemons. */
static void let_go(struct core *core, struct session *old, int same_session,
                   const char *via)
{
    int64_t now = core_now_ms();
    char check[40];

    log_notice("msg=\"session taken over on another daemon\" session=%s "
               "learner=%s resumed=%d via=%s", old->id, old->claims.sub,
               same_session, via);
    metrics_add(takeovers_remote, 1);
    net_send(core->net, old->conn, NULL, 0, 4409);
    if (!same_session && old->last_active_ms != 0 &&
        now - old->last_active_ms <= 60000) {
        snprintf(check, sizeof(check), "t%lld", (long long)now);
        credit_flag(core, old, POLICY_FLAG_CONCURRENT_SESSION,
                    policy_provisional_ms(&old->pol), check, now);
    }
    if (old->exam && !same_session)
        ledger_exam_result(core->store, old->claims.sub, old->id, now,
                           core->cfg.events_maxlen);
    unlink_session(core->sessions, old);
    free_session(old);
}

/* "<old daemon> <old sid> <new sid> <learner>" on LEASE_CHANNEL. */
static void on_takeover_message(struct store *st, const char *msg,
                                size_t len, void *arg)
{
    struct core *core = arg;
    char buf[48 + 33 + 33 + AUTH_IDLEN], daemon[33], old_sid[33],
        new_sid[33];
    struct session *s;
    int used = 0;

    (void)st;
    if (core->sessions == NULL || len >= sizeof(buf))
        return;
    memcpy(buf, msg, len);
    buf[len] = '\0';
    if (sscanf(buf, "%32s %32s %32s %n", daemon, old_sid, new_sid,
               &used) != 3 || used == 0 || buf[used] == '\0') {
        log_warning("msg=\"bad take-over message\" len=%zu", len);
        return;
    }
    if (strcmp(daemon, core->sessions->daemon_id) != 0)
        return;
    s = find_learner(core->sessions, buf + used);
    if (s != NULL && strcmp(s->id, old_sid) == 0)
        let_go(core, s, strcmp(old_sid, new_sid) == 0, "message");
}

static void lease_listen(struct core *core)
{
    if (store_subscribe(core->store, LEASE_CHANNEL, on_takeover_message,
                        core) != STORE_OK)
        log_warning("msg=\"cannot subscribe to take-overs\" channel=%s",
                    LEASE_CHANNEL);
}

struct lease_ctx {
    struct core *core;
    char learner[AUTH_IDLEN];
    char sid[33];
};

/* The lease's previous holder, if another daemon, is told to let go. */
static void on_lease_taken(struct store *st, redisReply *r, void *arg)
{
    struct lease_ctx *l = arg;
    char daemon[33], sid[33], msg[48 + 33 + 33 + AUTH_IDLEN];

    if (r != NULL && r->type == REDIS_REPLY_STRING &&
        sscanf(r->str, "%32s %32s", daemon, sid) == 2 &&
        strcmp(daemon, l->core->sessions->daemon_id) != 0) {
        snprintf(msg, sizeof(msg), "%s %s %s %s", daemon, sid, l->sid,
                 l->learner);
        log_verbose("msg=\"lease taken from another daemon\" learner=%s "
                    "daemon=%s session=%s", l->learner, daemon, sid);
        store_command(st, NULL, NULL, "PUBLISH %s %s", LEASE_CHANNEL, msg);
    }
    free(l);
}

/* Takes the learner's lease for session s at its Hello. */
static void lease_take(struct core *core, struct session *s)
{
    struct lease_ctx *l = malloc(sizeof(*l));
    char holder[80];

    if (l == NULL)
        return;
    l->core = core;
    snprintf(l->learner, sizeof(l->learner), "%s", s->claims.sub);
    snprintf(l->sid, sizeof(l->sid), "%s", s->id);
    lease_holder(core, s, holder, sizeof(holder));
    s->alive_ms = core_now_ms();
    if (store_command(core->store, on_lease_taken, l,
                      "SET pd:{%s}:lease %s PX %lld GET", s->claims.sub,
                      holder, (long long)lease_ttl_ms(core)) != STORE_OK)
        free(l);
}

static void start_hello(struct core *core, struct session *s,
                        const char *resume)
{
    char resume_key[320], course_key[320], days_key[200], enrol_key[200];
    char new_resume[200], new_session[200], asked_session[200];
    char profile_key[200], ttl[32], now_s[32], day_s[16], rsuf[64];
    struct session_ref *ref;
    const char *argv[17];
    int64_t now = core_now_ms();

    ref = malloc(sizeof(*ref));
    if (ref != NULL) {
        ref->core = core;
        ref->conn = s->conn;
        ref->serial = s->serial;
    }
    snprintf(rsuf, sizeof(rsuf), "resume:%s", resume);
    ledger_key(resume_key, sizeof(resume_key), s->claims.sub, rsuf);
    snprintf(course_key, sizeof(course_key), "pd:{%s}:course:%s",
             s->claims.sub, s->claims.course);
    ledger_key(days_key, sizeof(days_key), s->claims.sub, "days");
    ledger_key(enrol_key, sizeof(enrol_key), s->claims.sub, "enrol");
    snprintf(rsuf, sizeof(rsuf), "resume:%s", s->id);
    ledger_key(new_resume, sizeof(new_resume), s->claims.sub, rsuf);
    snprintf(rsuf, sizeof(rsuf), "session:%s", s->id);
    ledger_key(new_session, sizeof(new_session), s->claims.sub, rsuf);
    snprintf(rsuf, sizeof(rsuf), "session:%s",
             resume[0] != '\0' ? resume : s->id);
    ledger_key(asked_session, sizeof(asked_session), s->claims.sub, rsuf);
    ledger_key(profile_key, sizeof(profile_key), s->claims.sub, "profile");
    snprintf(ttl, sizeof(ttl), "%lld",
             (long long)core->cfg.policy.resume_window_ms);
    snprintf(now_s, sizeof(now_s), "%lld", (long long)now);
    policy_day_format(policy_day_index(now, session_utc_offset(now)), day_s,
                      sizeof(day_s));
    s->today = policy_day_index(now, session_utc_offset(now));
    argv[0] = resume_key;
    argv[1] = course_key;
    argv[2] = days_key;
    argv[3] = enrol_key;
    argv[4] = new_resume;
    argv[5] = new_session;
    argv[6] = asked_session;
    argv[7] = profile_key;
    argv[8] = s->id;
    argv[9] = resume;
    argv[10] = ttl;
    argv[11] = s->claims.sub;
    argv[12] = s->claims.course;
    argv[13] = day_s;
    argv[14] = s->claims.org;
    argv[15] = now_s;
    argv[16] = auth_role_name(s->claims.role);

    /* With Redis down the learner still gets a session; crediting is
     * suspended until the store is back, and Status says so. */
    if (ref == NULL || ledger_run(core->store, LEDGER_HELLO, on_hello_reply,
                                  ref, 8, 17, argv, NULL) != LEDGER_OK) {
        free(ref);
        send_welcome(core, s);
    }
}

static void on_hello(struct core *core, struct net_event *ev)
{
    struct session_table *t = core->sessions;
    const char *resume = ev->msg->hello->resume_session_id;
    struct session *s, *old;
    struct policy_decision d;

    if (!session_id_valid(resume))
        resume = "";
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        net_send(core->net, ev->conn, NULL, 0, 1011);
        return;
    }
    s->conn = ev->conn;
    s->serial = ++t->next_serial;
    s->claims = *ev->claims;
    s->ack_seq = ev->msg->seq;
    s->started_ms = ev->received_ms;
    s->last_seen_ms = ev->received_ms;
    s->exam = strcmp(s->claims.mode, "exam") == 0;
    ledger_random_id(s->id);
    policy_session_init(&s->pol, ev->received_ms, s->exam);
    if (credit_paused(core))
        policy_set_suspended(&s->pol, POLICY_REASON_PAUSED, ev->received_ms,
                             &d);

    old = find_learner(t, s->claims.sub);
    if (old != NULL) {
        take_over(core, old, s, ev->received_ms,
                  strcmp(old->id, resume) == 0);
    } else if (resume[0] != '\0' &&
               (old = unpark(t, resume, s->claims.sub)) != NULL) {
        /* The same session back after a drop: its unconfirmed time
         * waits for the fresh match, as in a take-over by itself. */
        s->pol = old->pol;
        policy_on_resume(&core->cfg.policy, &s->pol, ev->received_ms, &d);
        free_session(old);
    }
    insert(t, s);
    load_org(core, s->claims.org);
    start_hello(core, s, resume);
}

/* ---------------------------------------------------------------------
 * Messages after Hello
 * ------------------------------------------------------------------ */

static void on_heartbeat(struct core *core, struct session *s,
                         Proctor__V1__Heartbeat *hb, int64_t now)
{
    struct policy_heartbeat ph;
    struct policy_decision d;
    char check[40];

    ph.client_time_ms = hb->client_time_ms;
    ph.page_visible = hb->page_visible;
    ph.window_focused = hb->window_focused;
    ph.input_events = hb->input_events;
    ph.media_playing = hb->media_playing;
    ph.playback_rate = hb->playback_rate;
    ph.media_position_s = hb->media_position_s;
    policy_on_heartbeat(&core->cfg.policy, &s->pol, &ph, now,
                        cached_offset(core->sessions, now), &d);
    if (d.accrued_ms > 0)
        s->last_active_ms = now;
    snprintf(check, sizeof(check), "h%lld", (long long)now);
    credit_apply(core, s, &d, check, NULL, 0, NULL);
}

static void on_message(struct core *core, struct session *s,
                       Proctor__V1__ClientMessage *m, int64_t now)
{
    s->ack_seq = m->seq;
    s->last_seen_ms = now;

    switch (m->body_case) {
    case PROCTOR__V1__CLIENT_MESSAGE__BODY_HEARTBEAT:
        on_heartbeat(core, s, m->heartbeat, now);
        break;
    case PROCTOR__V1__CLIENT_MESSAGE__BODY_SNAPSHOT:
        challenge_on_snapshot(core, s, m->snapshot, now);
        break;
    case PROCTOR__V1__CLIENT_MESSAGE__BODY_BYE:
        net_send(core->net, s->conn, NULL, 0, 1000);
        break;
    default:
        break;
    }
}

static void on_closed(struct core *core, struct session *s)
{
    int64_t window = core->cfg.policy.resume_window_ms;

    /* The resume window counts from the moment the learner left. */
    store_command(core->store, NULL, NULL, "SET pd:{%s}:resume:%s %s PX %lld",
                  s->claims.sub, s->id, s->claims.course, (long long)window);
    if (policy_provisional_ms(&s->pol) > 0)
        log_verbose("msg=\"session closed with unverified time\" session=%s "
                    "learner=%s provisional_ms=%lld", s->id, s->claims.sub,
                    (long long)policy_provisional_ms(&s->pol));
    log_verbose("msg=\"session closed\" session=%s learner=%s", s->id,
                s->claims.sub);
    /* A resumed exam writes another result later; the last one stands. */
    if (s->exam)
        ledger_exam_result(core->store, s->claims.sub, s->id, core_now_ms(),
                           core->cfg.events_maxlen);
    unlink_session(core->sessions, s);
    park(core->sessions, s, core_now_ms());
}

void session_handle(struct core *core, struct net_event *ev)
{
    struct session *s;

    switch (ev->type) {
    case NET_EV_HELLO:
        on_hello(core, ev);
        break;
    case NET_EV_MESSAGE:
        s = find_conn(core->sessions, ev->conn);
        if (s != NULL)
            on_message(core, s, ev->msg, ev->received_ms);
        break;
    case NET_EV_CLOSED:
        s = find_conn(core->sessions, ev->conn);
        if (s != NULL)
            on_closed(core, s);
        break;
    default:
        break;
    }
    if (ev->msg != NULL)
        proctor__v1__client_message__free_unpacked(ev->msg, NULL);
    free(ev->claims);
}

/* ---------------------------------------------------------------------
 * Time
 * ------------------------------------------------------------------ */

/* Crediting pauses while Redis is down and the commit buffer is full
 * (nothing more could be kept for it), and at the daily cap until local
 * midnight. Time in the buffer counts towards the cap. */
static void update_suspension(struct core *core, struct session *s,
                              int64_t now, int32_t offset)
{
    enum policy_reason want = POLICY_REASON_NONE;
    enum policy_reason have = policy_reason(&s->pol);
    int64_t today = policy_day_index(now, offset);
    struct policy_decision d;

    if (today != s->today) {
        s->today = today;
        s->today_ms = 0;
    }
    if (credit_paused(core))
        want = POLICY_REASON_PAUSED;
    else if (s->today_ms >= core->cfg.policy.daily_cap_ms)
        want = POLICY_REASON_DAILY_CAP;
    if (want == POLICY_REASON_NONE &&
        (have == POLICY_REASON_PAUSED || have == POLICY_REASON_DAILY_CAP)) {
        policy_set_suspended(&s->pol, POLICY_REASON_NONE, now, &d);
        session_send_status(core, s);
    } else if (want != POLICY_REASON_NONE && want != have) {
        policy_set_suspended(&s->pol, want, now, &d);
        session_send_status(core, s);
    }
}

/* Keeps live sessions leased and resumable (after a crash too), a batch
 * of them per round trip: every heartbeat_grace, or a quarter of the
 * resume window when that is shorter, each session's lease is extended
 * and its resume key rewritten. The sessions come due one by one, so
 * they are gathered in rounds a sixth of that apart, which fills the
 * batches at a few hundred learners already; being up to a sixth late
 * is well inside both keys' lifetimes (three periods, four). */
struct refresh_batch {
    char keys[2 * LEDGER_REFRESH_BATCH][320];
    char holders[LEDGER_REFRESH_BATCH][80];
    const char *courses[LEDGER_REFRESH_BATCH];
    struct { uint64_t conn, serial; } refs[LEDGER_REFRESH_BATCH];
    char lease_ttl[24];
    char resume_ttl[24];
    int n;
};

struct refresh_ctx {
    struct core *core;
    int n;
    struct { uint64_t conn, serial; } refs[];
};

static int64_t refresh_every_ms(const struct core *core)
{
    int64_t every = core->cfg.policy.heartbeat_grace_ms;
    int64_t window = core->cfg.policy.resume_window_ms;

    return window > 0 && window / 4 < every ? window / 4 : every;
}

/* A lease held by another daemon whose take-over message never came (the
 * subscriber was down): the lease says it, and the session here ends. */
static void on_refreshed(struct store *st, redisReply *r, void *arg)
{
    struct refresh_ctx *ctx = arg;
    char holder[80], daemon[33], sid[33];

    (void)st;
    for (int i = 0; r != NULL && r->type == REDIS_REPLY_ARRAY &&
                    i < ctx->n && (size_t)i < r->elements; i++) {
        redisReply *e = r->element[i];
        struct session *s = session_find(ctx->core, ctx->refs[i].conn,
                                         ctx->refs[i].serial);

        if (s == NULL || e->type != REDIS_REPLY_STRING)
            continue;
        lease_holder(ctx->core, s, holder, sizeof(holder));
        if (strcmp(e->str, holder) != 0 &&
            sscanf(e->str, "%32s %32s", daemon, sid) == 2)
            let_go(ctx->core, s, strcmp(sid, s->id) == 0, "lease");
    }
    free(ctx);
}

static void refresh_flush(struct core *core, struct refresh_batch *b)
{
    const char *argv[4 * LEDGER_REFRESH_BATCH + 2];
    int nkeys = 2 * b->n;
    struct refresh_ctx *ctx;

    if (b->n == 0)
        return;
    ctx = malloc(sizeof(*ctx) + (size_t)b->n * sizeof(ctx->refs[0]));
    if (ctx == NULL) {
        b->n = 0;
        return;
    }
    ctx->core = core;
    ctx->n = b->n;
    argv[nkeys] = b->lease_ttl;
    argv[nkeys + 1] = b->resume_ttl;
    for (int i = 0; i < b->n; i++) {
        argv[2 * i] = b->keys[2 * i];
        argv[2 * i + 1] = b->keys[2 * i + 1];
        argv[nkeys + 2 + 2 * i] = b->holders[i];
        argv[nkeys + 3 + 2 * i] = b->courses[i];
        ctx->refs[i].conn = b->refs[i].conn;
        ctx->refs[i].serial = b->refs[i].serial;
    }
    if (ledger_run(core->store, LEDGER_REFRESH, on_refreshed, ctx, nkeys,
                   2 * nkeys + 2, argv, NULL) != LEDGER_OK) {
        log_warning("msg=\"lease and resume refresh not sent\" "
                    "sessions=%d", b->n);
        free(ctx);
    }
    b->n = 0;
}

static void refresh_session(struct core *core, struct refresh_batch *b,
                            struct session *s, int64_t now)
{
    char suffix[64], *lease = b->keys[2 * b->n];
    char *resume = b->keys[2 * b->n + 1];

    if (now - s->alive_ms < refresh_every_ms(core) ||
        !store_is_up(core->store))
        return;
    s->alive_ms = now;
    snprintf(suffix, sizeof(suffix), "resume:%s", s->id);
    if (ledger_key(lease, 320, s->claims.sub, "lease") != LEDGER_OK ||
        ledger_key(resume, 320, s->claims.sub, suffix) != LEDGER_OK)
        return;
    /* On a cluster one script may only touch one slot: a learner of
     * another slot than the batch's starts a new batch. */
    if (b->n > 0 && !store_same_slot(core->store, b->keys[0], lease)) {
        char key[2][320];

        memcpy(key[0], lease, sizeof(key[0]));
        memcpy(key[1], resume, sizeof(key[1]));
        refresh_flush(core, b);
        memcpy(b->keys[0], key[0], sizeof(key[0]));
        memcpy(b->keys[1], key[1], sizeof(key[1]));
    }
    lease_holder(core, s, b->holders[b->n], sizeof(b->holders[b->n]));
    b->courses[b->n] = s->claims.course;
    b->refs[b->n].conn = s->conn;
    b->refs[b->n].serial = s->serial;
    if (++b->n == LEDGER_REFRESH_BATCH)
        refresh_flush(core, b);
}

void session_tick(struct core *core)
{
    static struct refresh_batch batch;
    struct session_table *t = core->sessions;
    int64_t now = core_now_ms();
    int32_t offset = cached_offset(t, now);
    struct policy_decision d;
    char check[40];
    int refresh_round;

    /* What waited for Redis goes before anything decided now. */
    credit_drain(core);
    snprintf(check, sizeof(check), "t%lld", (long long)now);
    expire_parked(t, now, core->cfg.policy.resume_window_ms);
    refresh_round = now - t->refreshed_ms >= refresh_every_ms(core) / 6;
    if (refresh_round)
        t->refreshed_ms = now;
    snprintf(batch.lease_ttl, sizeof(batch.lease_ttl), "%lld",
             (long long)lease_ttl_ms(core));
    snprintf(batch.resume_ttl, sizeof(batch.resume_ttl), "%lld",
             (long long)core->cfg.policy.resume_window_ms);
    for (size_t i = 0; i < SESSION_BUCKETS; i++) {
        struct session *s = t->by_conn[i];

        while (s != NULL) {
            struct session *next = s->next_conn;

            if (!s->welcomed && now - s->started_ms > HELLO_DEADLINE_MS) {
                /* Redis is connected but not answering: the learner
                 * gets a session anyway, with crediting paused. */
                log_warning("msg=\"no answer from Redis for a Hello; "
                            "welcoming without it\" session=%s learner=%s",
                            s->id, s->claims.sub);
                send_welcome(core, s);
            }
            if (s->welcomed) {
                update_suspension(core, s, now, offset);
                policy_on_tick(&core->cfg.policy, &s->pol, now, &d);
                if (d.nflags > 0 || d.state_changed)
                    credit_apply(core, s, &d, check, NULL, 0, NULL);
                challenge_tick(core, s, now);
                if (refresh_round)
                    refresh_session(core, &batch, s, now);
            }
            s = next;
        }
    }
    refresh_flush(core, &batch);
}
