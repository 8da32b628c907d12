/* Live sessions on the core thread: Hello and Welcome (new or resumed
 * session ids, kept in Redis so a resume works across restarts), the
 * take-over of an older connection of the same learner, and the replies
 * every message gets. Only this thread touches a session. */
#include "session.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "store.h"

#define SESSION_BUCKETS 65536

struct session {
    struct session *next_conn;
    struct session *next_learner;
    uint64_t conn;
    uint64_t serial;
    char id[33];
    struct auth_claims claims;
    uint64_t ack_seq;
    uint64_t credited_s;
    int64_t started_ms;
    int64_t last_seen_ms;
    int64_t resume_touched_ms;
    unsigned welcomed : 1;
};

struct session_table {
    struct core *core;
    struct session *by_conn[SESSION_BUCKETS];
    struct session *by_learner[SESSION_BUCKETS];
    size_t count;
    uint64_t next_serial;
};

/* Names a session across an asynchronous Redis call: the session may
 * be gone when the reply comes, so the callback looks it up again. */
struct session_ref {
    struct core *core;
    uint64_t conn;
    uint64_t serial;
};

static const char HELLO_SCRIPT[] =
    "local sid = ARGV[1]\n"
    "if ARGV[2] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then\n"
    "  sid = ARGV[2]\n"
    "end\n"
    "redis.call('SET', 'pd:{' .. ARGV[4] .. '}:resume:' .. sid, ARGV[5],\n"
    "           'PX', ARGV[3])\n"
    "local credited = redis.call('HGET', KEYS[2], 'credited_s')\n"
    "return {sid, tonumber(credited or '0')}\n";

static int hello_script = -1;

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

void session_table_free(struct session_table *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < SESSION_BUCKETS; i++) {
        struct session *s = t->by_conn[i];
        while (s != NULL) {
            struct session *next = s->next_conn;
            free(s);
            s = next;
        }
    }
    free(t);
}

size_t session_count(const struct session_table *t)
{
    return t->count;
}

/* ---------------------------------------------------------------------
 * Sending
 * ------------------------------------------------------------------ */

static void send_message(struct core *core, struct session *s,
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

static void send_status(struct core *core, struct session *s)
{
    Proctor__V1__ServerMessage m = PROCTOR__V1__SERVER_MESSAGE__INIT;
    Proctor__V1__Status st = PROCTOR__V1__STATUS__INIT;

    st.credited_s = s->credited_s;
    st.provisional_s = 0;
    st.state = PROCTOR__V1__STATE__UNVERIFIED;
    if (!store_is_up(core->store)) {
        st.state = PROCTOR__V1__STATE__SUSPENDED;
        st.reason = "store_unavailable";
    } else {
        st.reason = "not_verified";
    }
    m.body_case = PROCTOR__V1__SERVER_MESSAGE__BODY_STATUS;
    m.status = &st;
    send_message(core, s, &m);
}

static void send_welcome(struct core *core, struct session *s)
{
    Proctor__V1__ServerMessage m = PROCTOR__V1__SERVER_MESSAGE__INIT;
    Proctor__V1__Welcome w = PROCTOR__V1__WELCOME__INIT;

    w.session_id = s->id;
    w.heartbeat_interval_ms =
        (uint32_t)core->cfg.policy.heartbeat_interval_ms;
    w.credited_s = s->credited_s;
    m.body_case = PROCTOR__V1__SERVER_MESSAGE__BODY_WELCOME;
    m.welcome = &w;
    send_message(core, s, &m);
    s->welcomed = 1;
    log_verbose("msg=\"session started\" session=%s learner=%s course=%s "
                "conn=%llx", s->id, s->claims.sub, s->claims.course,
                (unsigned long long)s->conn);
}

/* ---------------------------------------------------------------------
 * Hello, resume and take-over
 * ------------------------------------------------------------------ */

static void new_session_id(char out[33])
{
    unsigned char raw[16];

    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        /* OpenSSL's generator failing is a broken invariant. */
        log_warning("msg=\"RAND_bytes failed\"");
        abort();
    }
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

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

static void on_hello_reply(struct store *st, redisReply *r, void *arg)
{
    struct session_ref *ref = arg;
    struct core *core = ref->core;
    struct session *s = find_conn(core->sessions, ref->conn);

    (void)st;
    if (s != NULL && s->serial == ref->serial && !s->welcomed) {
        if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_STRING &&
            r->element[0]->len == 32) {
            memcpy(s->id, r->element[0]->str, 32);
            s->id[32] = '\0';
            if (r->element[1]->type == REDIS_REPLY_INTEGER)
                s->credited_s = (uint64_t)r->element[1]->integer;
        }
        send_welcome(core, s);
    }
    free(ref);
}

static void take_over(struct core *core, struct session *old)
{
    log_notice("msg=\"session taken over by a newer login\" session=%s "
               "learner=%s", old->id, old->claims.sub);
    net_send(core->net, old->conn, NULL, 0, 4409);
    unlink_session(core->sessions, old);
    free(old);
}

static void start_hello(struct core *core, struct session *s,
                        const char *resume)
{
    char resume_key[320], course_key[320], ttl[32];
    struct session_ref *ref;
    const char *argv[7];

    ref = malloc(sizeof(*ref));
    if (ref != NULL) {
        ref->core = core;
        ref->conn = s->conn;
        ref->serial = s->serial;
    }
    if (!session_id_valid(resume))
        resume = "";
    snprintf(resume_key, sizeof(resume_key), "pd:{%s}:resume:%s",
             s->claims.sub, resume);
    snprintf(course_key, sizeof(course_key), "pd:{%s}:course:%s",
             s->claims.sub, s->claims.course);
    snprintf(ttl, sizeof(ttl), "%lld",
             (long long)core->cfg.policy.resume_window_ms);
    argv[0] = resume_key;
    argv[1] = course_key;
    argv[2] = s->id;
    argv[3] = resume;
    argv[4] = ttl;
    argv[5] = s->claims.sub;
    argv[6] = s->claims.course;

    /* With Redis down the learner still gets a session; crediting is
     * suspended until the store is back, and Status says so. */
    if (ref == NULL || store_script(core->store, hello_script,
                                    on_hello_reply, ref, 2, 7, argv,
                                    NULL) != STORE_OK) {
        free(ref);
        send_welcome(core, s);
    }
}

static void on_hello(struct core *core, struct net_event *ev)
{
    struct session_table *t = core->sessions;
    struct session *s, *old;

    old = find_learner(t, ev->claims->sub);
    if (old != NULL)
        take_over(core, old);

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
    s->resume_touched_ms = ev->received_ms;
    new_session_id(s->id);
    insert(t, s);

    if (hello_script < 0)
        hello_script = store_script_add(core->store, HELLO_SCRIPT);
    start_hello(core, s, ev->msg->hello->resume_session_id);
}

/* ---------------------------------------------------------------------
 * Messages after Hello
 * ------------------------------------------------------------------ */

static void touch_resume(struct core *core, struct session *s)
{
    int64_t window = core->cfg.policy.resume_window_ms;

    /* Refreshing at a quarter of the window keeps the key alive with a
     * write every few heartbeats instead of one per heartbeat. */
    if (s->last_seen_ms - s->resume_touched_ms < window / 4)
        return;
    s->resume_touched_ms = s->last_seen_ms;
    store_command(core->store, NULL, NULL, "SET pd:{%s}:resume:%s %s PX %lld",
                  s->claims.sub, s->id, s->claims.course, (long long)window);
}

static void on_message(struct core *core, struct session *s,
                       Proctor__V1__ClientMessage *m, int64_t now)
{
    s->ack_seq = m->seq;
    s->last_seen_ms = now;

    switch (m->body_case) {
    case PROCTOR__V1__CLIENT_MESSAGE__BODY_HEARTBEAT:
        touch_resume(core, s);
        send_status(core, s);
        break;
    case PROCTOR__V1__CLIENT_MESSAGE__BODY_SNAPSHOT:
        send_status(core, s);
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
    log_verbose("msg=\"session closed\" session=%s learner=%s", s->id,
                s->claims.sub);
    unlink_session(core->sessions, s);
    free(s);
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

void session_tick(struct core *core)
{
    (void)core;
}
