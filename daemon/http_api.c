/* The /v1 routes of the platform and supervisor API: the router, the
 * deferred replies shared with http_flags.c, enrolment through the vision
 * pool, credited hours and session timelines. Everything runs on the
 * core thread and reaches Redis only through store_*, never blocking;
 * the flag, review and evidence routes live in http_flags.c, reports,
 * learner events and erasure in http_reports.c. */
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "http-internal.h"
#include "ledger.h"
#include "log.h"
#include "policy.h"
#include "session.h"
#include "store.h"
#include "vision_pool.h"

#define API_SEGMENTS 4
#define API_KEYLEN (2 * HTTP_ID_MAX + 64)
#define SESSION_EVENTS_MAX 1000
/* Stream ids come from Redis's clock, started_ms from ours: read from a
 * little before the start so a skewed clock loses no event. */
#define SESSION_CLOCK_SLACK_MS 60000

/* ---------------------------------------------------------------------
 * Deferred replies
 * ------------------------------------------------------------------ */

/* A client hang-up detaches the request from its connection and leaves
 * it to us: a later reply goes nowhere and frees it. When the server
 * itself drops the connection (shutdown) the request is freed right
 * after this callback, so it must be forgotten. */
static void on_call_conn_closed(struct evhttp_connection *conn, void *arg)
{
    struct http_call *c = arg;

    (void)conn;
    if (c->req != NULL && evhttp_request_get_connection(c->req) != NULL)
        c->req = NULL;
}

void http_call_start(struct http_call *c, struct core *core,
                     struct evhttp_request *req,
                     const struct auth_claims *claims)
{
    c->core = core;
    c->req = req;
    if (claims != NULL)
        c->claims = *claims;
    c->pending = 0;
    c->failed = 0;
    evhttp_connection_set_closecb(evhttp_request_get_connection(req),
                                  on_call_conn_closed, c);
}

/* 1 once the client has gone: nothing it asked for should start. */
static int call_gone(const struct http_call *c)
{
    return c->req == NULL || evhttp_request_get_connection(c->req) == NULL;
}

/* Takes the request from c, the close callback off its connection. */
static struct evhttp_request *call_take(struct http_call *c)
{
    struct evhttp_request *req = c->req;
    struct evhttp_connection *conn;

    if (req == NULL)
        return NULL;
    conn = evhttp_request_get_connection(req);
    if (conn != NULL)
        evhttp_connection_set_closecb(conn, NULL, NULL);
    c->req = NULL;
    return req;
}

void http_call_reply(struct http_call *c, int code, json_t *body)
{
    struct evhttp_request *req = call_take(c);

    if (req == NULL) {
        json_decref(body);
        return;
    }
    http_reply_json(req, code, body);
}

void http_call_error(struct http_call *c, int code, const char *why)
{
    http_call_reply(c, code, json_pack("{ss}", "error", why));
}

void http_call_reply_bytes(struct http_call *c, const char *type,
                           const void *data, size_t len)
{
    struct evhttp_request *req = call_take(c);
    struct evkeyvalq *h;
    struct evbuffer *out;

    if (req == NULL)
        return;
    h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", type);
    evhttp_add_header(h, "Cache-Control", "private, no-store");
    out = evbuffer_new();
    evbuffer_add(out, data, len);
    evhttp_send_reply(req, 200, NULL, out);
    evbuffer_free(out);
}

int http_call_command(struct http_call *c, store_reply_cb cb, void *arg,
                      int argc, const char **argv, const size_t *lens)
{
    if (store_command_argv(c->core->store, cb, arg, argc, argv, lens) !=
        STORE_OK) {
        c->failed = 1;
        return STORE_ERR;
    }
    c->pending++;
    return STORE_OK;
}

/* ---------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------ */

int http_id_valid(const char *s, size_t len)
{
    if (s == NULL || len == 0 || len > HTTP_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' ||
              ch == '@' || ch == '-'))
            return 0;
    }
    return 1;
}

const char *http_query_get(const struct evkeyvalq *q, const char *name)
{
    return evhttp_find_header(q, name);
}

const redisReply *http_hash_get(const redisReply *r, const char *field)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i];

        if (k->type == REDIS_REPLY_STRING && strcmp(k->str, field) == 0)
            return r->element[i + 1];
    }
    return NULL;
}

long long http_reply_ll(const redisReply *v, long long fallback)
{
    char *end;
    long long n;

    if (v == NULL)
        return fallback;
    if (v->type == REDIS_REPLY_INTEGER)
        return v->integer;
    if (v->type != REDIS_REPLY_STRING || v->len == 0)
        return fallback;
    n = strtoll(v->str, &end, 10);
    return *end == '\0' ? n : fallback;
}

/* Copies a reply string into buf; "" for nil or anything else. */
static void reply_copy(const redisReply *v, char *buf, size_t buflen)
{
    if (v != NULL && v->type == REDIS_REPLY_STRING)
        snprintf(buf, buflen, "%s", v->str);
    else if (buflen > 0)
        buf[0] = '\0';
}

/* Parses the query string into q (cleared by the caller either way).
 * Returns -1 when it is malformed. */
static int query_parse(struct evhttp_request *req, struct evkeyvalq *q)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *s = uri != NULL ? evhttp_uri_get_query(uri) : NULL;

    TAILQ_INIT(q);
    if (s == NULL || *s == '\0')
        return 0;
    return evhttp_parse_query_str(s, q);
}

static json_t *json_time(long long ms)
{
    char buf[40];

    if (ms <= 0)
        return json_null();
    ledger_rfc3339(ms, buf, sizeof(buf));
    return json_string(buf);
}

/* ---------------------------------------------------------------------
 * PUT /v1/learners/{id}/enrollment
 * ------------------------------------------------------------------ */

struct enrol_call {
    struct http_call call;
    char learner[HTTP_ID_MAX + 1];
    char org[HTTP_ID_MAX + 1];
    const char *model;          /* the engine's; lives as long as it */
    int dim;
    float emb[VISION_MAX_DIM];
    float box[4];
    float score;
    int replaced;
};

static int is_jpeg_type(const char *ct)
{
    size_t n;

    if (ct == NULL)
        return 0;
    ct += strspn(ct, " \t");
    n = strcspn(ct, "; \t");
    return n == 10 && strncasecmp(ct, "image/jpeg", 10) == 0;
}

static void enrol_reply(struct enrol_call *e)
{
    json_t *face = json_pack("{si si si si sf}", "x", (int)(e->box[0] + 0.5f),
                             "y", (int)(e->box[1] + 0.5f), "w",
                             (int)(e->box[2] + 0.5f), "h",
                             (int)(e->box[3] + 0.5f), "score",
                             (double)(int)(e->score * 1000.0f + 0.5f) /
                                 1000.0);

    http_call_reply(&e->call, 201,
                    json_pack("{ss ss ss so sb}", "learner_id", e->learner,
                              "org", e->org, "model", e->model, "face", face,
                              "replaced", e->replaced));
    free(e);
}

static void on_enrol_indexed(struct store *st, redisReply *r, void *arg)
{
    struct enrol_call *e = arg;

    (void)st;
    if (r == NULL || r->type == REDIS_REPLY_ERROR)
        log_warning("msg=\"enrolment not added to its organisation\" "
                    "learner=%s org=%s", e->learner, e->org);
    enrol_reply(e);
}

/* Adds the learner to its organisation's set, which the organisation's
 * embedding cache and reports read. */
static void enrol_index(struct enrol_call *e)
{
    char key[API_KEYLEN];
    const char *argv[3];

    snprintf(key, sizeof(key), "pd:org:{%s}:learners", e->org);
    argv[0] = "SADD";
    argv[1] = key;
    argv[2] = e->learner;
    if (store_command_argv(e->call.core->store, on_enrol_indexed, e, 3, argv,
                           NULL) != STORE_OK)
        on_enrol_indexed(NULL, NULL, e);
}

static void on_enrol_written(struct store *st, redisReply *r, void *arg)
{
    struct enrol_call *e = arg;

    (void)st;
    if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
        log_warning("msg=\"enrolment not written\" learner=%s error=\"%s\"",
                    e->learner, r == NULL ? "redis unavailable"
                                          : r->type == REDIS_REPLY_ERROR
                                                ? r->str : "bad reply");
        http_call_error(&e->call, r == NULL ? 503 : 500,
                        r == NULL ? "redis unavailable"
                                  : "enrolment not written");
        free(e);
        return;
    }
    e->replaced = r->integer != 0;
    log_notice("msg=\"learner enrolled\" learner=%s org=%s model=%s "
               "replaced=%d", e->learner, e->org, e->model, e->replaced);
    session_enrolled(e->call.core, e->learner, e->org, e->model, e->emb,
                     e->dim);
    if (e->org[0] != '\0')
        enrol_index(e);
    else
        enrol_reply(e);
}

/* Runs LEDGER_ENROL with what the analysis found. */
static int enrol_write(struct enrol_call *e, const struct vision_result *vr)
{
    unsigned char emb[VISION_MAX_DIM * 4];
    char ekey[API_KEYLEN], skey[API_KEYLEN], sha[65], now[24], box[160];
    const char *argv[8];
    size_t lens[8];

    for (int i = 0; i < vr->dim; i++) {
        uint32_t u;

        /* Stored little-endian whatever this machine is. */
        memcpy(&u, &vr->embedding[i], 4);
        emb[4 * i] = (unsigned char)u;
        emb[4 * i + 1] = (unsigned char)(u >> 8);
        emb[4 * i + 2] = (unsigned char)(u >> 16);
        emb[4 * i + 3] = (unsigned char)(u >> 24);
    }
    for (int i = 0; i < 32; i++)
        snprintf(sha + 2 * i, 3, "%02x", vr->sha256[i]);
    ledger_key(ekey, sizeof(ekey), e->learner, "enrol");
    ledger_key(skey, sizeof(skey), e->learner, "stream");
    snprintf(now, sizeof(now), "%lld", (long long)core_now_ms());
    snprintf(box, sizeof(box),
             "{\"x\":%.1f,\"y\":%.1f,\"w\":%.1f,\"h\":%.1f,\"score\":%.3f}",
             vr->box[0], vr->box[1], vr->box[2], vr->box[3], vr->score);

    argv[0] = ekey;
    argv[1] = skey;
    argv[2] = e->model;
    argv[3] = (const char *)emb;
    argv[4] = sha;
    argv[5] = now;
    argv[6] = e->org;
    argv[7] = box;
    for (int i = 0; i < 8; i++)
        lens[i] = strlen(argv[i]);
    lens[3] = (size_t)vr->dim * 4;
    return ledger_run(e->call.core->store, LEDGER_ENROL, on_enrol_written, e,
                      2, 8, argv, lens);
}

/* Back on the core thread with the photo analysed. */
static void on_enrol_analyzed(struct core *core, struct vision_job *job)
{
    struct enrol_call *e = job->arg;
    const struct vision_result *vr = &job->result;
    char why[VISION_ERRLEN + 40];

    /* A client that hung up never learns the outcome, so nothing is
     * written for it: it will send the photo again. */
    if (call_gone(&e->call)) {
        log_verbose("msg=\"enrolment dropped: client gone\" learner=%s",
                    e->learner);
        http_call_error(&e->call, 503, "client gone");
        goto done;
    }
    if (vr->status == VISION_BAD_IMAGE) {
        snprintf(why, sizeof(why), "not a decodable JPEG: %s", vr->error);
        http_call_error(&e->call, 422, why);
        goto done;
    }
    if (vr->status != VISION_OK || (vr->faces > 0 && vr->dim <= 0)) {
        log_warning("msg=\"enrolment analysis failed\" learner=%s "
                    "error=\"%s\"", e->learner, vr->error);
        http_call_error(&e->call, 500, "face analysis failed");
        goto done;
    }
    if (vr->faces == 0) {
        http_call_error(&e->call, 422, "no face found");
        goto done;
    }
    if (vr->faces > 1) {
        http_call_reply(&e->call, 422,
                        json_pack("{ss si}", "error", "more than one face",
                                  "faces", vr->faces));
        goto done;
    }
    if (vr->quality != VISION_QUALITY_OK) {
        /* Every later check is compared with this photo: one too poor to
         * judge a face on would make each of them a coin toss. */
        http_call_reply(&e->call, 422,
                        json_pack("{ss ss}", "error",
                                  "photo too poor to enrol", "hint",
                                  vision_quality_hint(vr->quality)));
        goto done;
    }

    e->model = vision_model_id(vision_pool_engine(core->vision));
    e->dim = vr->dim;
    memcpy(e->emb, vr->embedding, (size_t)vr->dim * sizeof(float));
    memcpy(e->box, vr->box, sizeof(e->box));
    e->score = vr->score;
    if (enrol_write(e, vr) != LEDGER_OK) {
        http_call_error(&e->call, 503, "redis unavailable");
        goto done;
    }
    vision_job_free(job);
    return;

done:
    free(e);
    vision_job_free(job);
}

/* The organisation: ?org= when given, else the token's. Returns -1 when
 * it is not an id. */
static int enrol_org(struct evhttp_request *req,
                     const struct auth_claims *claims, char *org,
                     size_t orglen)
{
    struct evkeyvalq q;
    const char *v;
    int rc = 0;

    if (query_parse(req, &q) != 0) {
        evhttp_clear_headers(&q);
        return -1;
    }
    v = http_query_get(&q, "org");
    snprintf(org, orglen, "%s", v != NULL ? v : claims->org);
    evhttp_clear_headers(&q);
    if (org[0] != '\0' && !http_id_valid(org, strlen(org)))
        rc = -1;
    return rc;
}

static void on_enrol(struct core *core, struct evhttp_request *req,
                     const struct auth_claims *claims, const char *learner)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req),
                                        "Content-Type");
    struct vision_job *job;
    struct enrol_call *e;
    unsigned char *jpeg;

    if (!is_jpeg_type(ct)) {
        http_reply_error(req, 415, "body must be image/jpeg");
        return;
    }
    if (len == 0) {
        http_reply_error(req, 400, "empty body");
        return;
    }
    e = calloc(1, sizeof(*e));
    jpeg = malloc(len);
    if (e == NULL || jpeg == NULL) {
        free(e);
        free(jpeg);
        http_reply_error(req, 500, "out of memory");
        return;
    }
    snprintf(e->learner, sizeof(e->learner), "%s", learner);
    if (enrol_org(req, claims, e->org, sizeof(e->org)) != 0) {
        free(e);
        free(jpeg);
        http_reply_error(req, 400, "bad org");
        return;
    }
    evbuffer_copyout(in, jpeg, len);

    job = vision_job_new(jpeg, len, on_enrol_analyzed);
    if (job == NULL) {
        free(e);
        free(jpeg);
        http_reply_error(req, 500, "out of memory");
        return;
    }
    job->arg = e;
    job->drop_arg = free;
    job->submitted_ms = core_now_ms();
    if (vision_pool_submit(core->vision, job) != VISION_POOL_OK) {
        vision_job_free(job);
        free(e);
        evhttp_add_header(evhttp_request_get_output_headers(req),
                          "Retry-After", "1");
        http_reply_error(req, 503, "busy");
        return;
    }
    http_call_start(&e->call, core, req, claims);
}

/* ---------------------------------------------------------------------
 * GET /v1/learners/{id}/hours?course=C
 * ------------------------------------------------------------------ */

struct day_ms {
    char date[16];
    long long ms;
};

struct hours_call {
    struct http_call call;
    char learner[HTTP_ID_MAX + 1];
    char course[HTTP_ID_MAX + 1];
    long long total_ms;
    struct day_ms *days;
    size_t ndays;
    char role[32];
};

const struct config_role *http_role_need(const struct config *cfg,
                                         const char *role)
{
    if (strcmp(role, "manager") == 0)
        return &cfg->manager;
    if (strcmp(role, "safety_officer") == 0)
        return &cfg->safety_officer;
    if (strcmp(role, "team_leader") == 0)
        return &cfg->team_leader;
    return NULL;
}

static int day_cmp(const void *a, const void *b)
{
    return strcmp(((const struct day_ms *)a)->date,
                  ((const struct day_ms *)b)->date);
}

static json_t *centi_real(long long centi)
{
    return json_real((double)centi / 100.0);
}

static void hours_finish(struct hours_call *h)
{
    const struct config *cfg = &h->call.core->cfg;
    const struct config_role *need = http_role_need(cfg, h->role);
    long long secs = h->total_ms / 1000;
    long long centi = policy_credit_hours_centi(
        secs, cfg->policy.minutes_per_credit_hour);
    json_t *days = json_array();
    json_t *body;

    if (h->call.failed) {
        http_call_error(&h->call, 503, "redis unavailable");
        goto done;
    }
    qsort(h->days, h->ndays, sizeof(*h->days), day_cmp);
    for (size_t i = 0; i < h->ndays; i++)
        json_array_append_new(days, json_pack("{ss sI}", "date",
                                              h->days[i].date,
                                              "credited_seconds",
                                              (json_int_t)(h->days[i].ms /
                                                           1000)));
    body = json_pack("{ss ss sI so so}", "learner_id", h->learner, "course",
                     h->course, "credited_seconds", (json_int_t)secs,
                     "credit_hours", centi_real(centi), "days", days);
    days = NULL;
    json_object_set_new(body, "role", h->role[0] != '\0'
                                          ? json_string(h->role)
                                          : json_null());
    if (need != NULL) {
        long long cap = policy_online_cap_centi(need->min_hours,
                                                cfg->online_share);

        json_object_set_new(body, "required_hours",
                            json_real(need->min_hours));
        json_object_set_new(body, "max_hours", json_real(need->max_hours));
        json_object_set_new(body, "online_cap_hours", centi_real(cap));
        json_object_set_new(body, "online_used_hours",
                            centi_real(policy_online_credit_centi(centi,
                                                                  cap)));
    } else {
        /* Without a known role there is no requirement to cap against. */
        json_object_set_new(body, "required_hours", json_null());
        json_object_set_new(body, "max_hours", json_null());
        json_object_set_new(body, "online_cap_hours", json_null());
        json_object_set_new(body, "online_used_hours", centi_real(centi));
    }
    http_call_reply(&h->call, 200, body);

done:
    json_decref(days);
    free(h->days);
    free(h);
}

static void on_hours_course(struct store *st, redisReply *r, void *arg)
{
    struct hours_call *h = arg;

    (void)st;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        h->call.failed = 1;
    } else {
        h->days = calloc(r->elements / 2 + 1, sizeof(*h->days));
        for (size_t i = 0; h->days != NULL && i + 1 < r->elements; i += 2) {
            const char *f = r->element[i]->str;
            long long v = http_reply_ll(r->element[i + 1], 0);

            if (f == NULL)
                continue;
            if (strcmp(f, "total_ms") == 0) {
                h->total_ms = v;
            } else if (strncmp(f, "d:", 2) == 0 && strlen(f + 2) < 16) {
                snprintf(h->days[h->ndays].date, 16, "%s", f + 2);
                h->days[h->ndays++].ms = v;
            }
        }
    }
    if (--h->call.pending == 0)
        hours_finish(h);
}

static void on_hours_role(struct store *st, redisReply *r, void *arg)
{
    struct hours_call *h = arg;

    (void)st;
    if (r == NULL || r->type == REDIS_REPLY_ERROR)
        h->call.failed = 1;
    else
        reply_copy(r, h->role, sizeof(h->role));
    if (--h->call.pending == 0)
        hours_finish(h);
}

int http_text_valid(const char *s)
{
    size_t len = strlen(s);
    json_t *probe;

    if (len == 0 || len > HTTP_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    probe = json_stringn(s, len);
    json_decref(probe);
    return probe != NULL;
}

static void on_hours(struct core *core, struct evhttp_request *req,
                     const struct auth_claims *claims, const char *learner)
{
    char ckey[API_KEYLEN + HTTP_ID_MAX], pkey[API_KEYLEN];
    const char *argv[3];
    struct hours_call *h;
    struct evkeyvalq q;
    const char *course;

    if (query_parse(req, &q) != 0 ||
        (course = http_query_get(&q, "course")) == NULL ||
        !http_text_valid(course)) {
        evhttp_clear_headers(&q);
        http_reply_error(req, 400, "course missing or not valid");
        return;
    }
    h = calloc(1, sizeof(*h));
    if (h == NULL) {
        evhttp_clear_headers(&q);
        http_reply_error(req, 500, "out of memory");
        return;
    }
    snprintf(h->learner, sizeof(h->learner), "%s", learner);
    snprintf(h->course, sizeof(h->course), "%s", course);
    evhttp_clear_headers(&q);
    http_call_start(&h->call, core, req, claims);

    /* Both go out at once; Redis answers in order. */
    snprintf(ckey, sizeof(ckey), "pd:{%s}:course:%s", h->learner,
             h->course);
    ledger_key(pkey, sizeof(pkey), h->learner, "profile");
    argv[0] = "HGETALL";
    argv[1] = ckey;
    http_call_command(&h->call, on_hours_course, h, 2, argv, NULL);
    argv[0] = "HGET";
    argv[1] = pkey;
    argv[2] = "role";
    http_call_command(&h->call, on_hours_role, h, 3, argv, NULL);
    if (h->call.pending == 0)
        hours_finish(h);
}

/* ---------------------------------------------------------------------
 * GET /v1/sessions/{sid}
 * ------------------------------------------------------------------ */

struct session_call {
    struct http_call call;
    char sid[HTTP_ID_MAX + 1];
    char learner[HTTP_ID_MAX + 1];
    json_t *body;
};

static void session_free(struct session_call *s)
{
    json_decref(s->body);
    free(s);
}

static void session_fail(struct session_call *s, int code, const char *why)
{
    http_call_error(&s->call, code, why);
    session_free(s);
}

json_t *http_event_json(const redisReply *entry)
{
    const redisReply *fields = entry->element[1];
    json_t *ev = json_object();

    json_object_set_new(ev, "id", json_string(entry->element[0]->str));
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const char *k = fields->element[i]->str;
        const redisReply *v = fields->element[i + 1];
        size_t kl = strlen(k);
        long long n;

        if (v->type != REDIS_REPLY_STRING)
            continue;
        n = http_reply_ll(v, -1);
        if (kl > 3 && strcmp(k + kl - 3, "_ms") == 0 && n >= 0)
            json_object_set_new(ev, k, json_integer(n));
        else
            json_object_set_new(ev, k, json_stringn(v->str, v->len));
        if (strcmp(k, "at_ms") == 0)
            json_object_set_new(ev, "at", json_time(n));
    }
    return ev;
}

int http_event_well_formed(const redisReply *e)
{
    return e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
           e->element[0]->type == REDIS_REPLY_STRING &&
           e->element[1]->type == REDIS_REPLY_ARRAY;
}

static void on_session_events(struct store *st, redisReply *r, void *arg)
{
    struct session_call *s = arg;
    json_t *events = json_array();
    long long credited_ms = 0;

    (void)st;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        json_decref(events);
        session_fail(s, 503, "redis unavailable");
        return;
    }
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        const redisReply *sid;

        if (!http_event_well_formed(e))
            continue;
        sid = http_hash_get(e->element[1], "session");
        if (sid == NULL || sid->type != REDIS_REPLY_STRING ||
            strcmp(sid->str, s->sid) != 0)
            continue;
        json_array_append_new(events, http_event_json(e));
        credited_ms += http_reply_ll(http_hash_get(e->element[1],
                                                   "credited_ms"), 0);
    }
    json_object_set_new(s->body, "credited_seconds",
                        json_integer(credited_ms / 1000));
    json_object_set_new(s->body, "events", events);
    /* Limit: a session past SESSION_EVENTS_MAX stream entries is cut
     * short; the reply says so in "truncated", and the whole record is
     * read page by page from /v1/learners/{id}/events, which has a
     * cursor. */
    json_object_set_new(s->body, "truncated",
                        json_boolean(r->elements >= SESSION_EVENTS_MAX));
    http_call_reply(&s->call, 200, s->body);
    s->body = NULL;
    session_free(s);
}

/* The session hash as the reply's head; events are added later. */
static json_t *session_head(const struct session_call *s, const redisReply *h)
{
    json_t *body = json_object();
    const redisReply *course = http_hash_get(h, "course");
    const redisReply *org = http_hash_get(h, "org");

    json_object_set_new(body, "session_id", json_string(s->sid));
    json_object_set_new(body, "learner_id", json_string(s->learner));
    json_object_set_new(body, "course",
                        json_string(course != NULL && course->str != NULL
                                        ? course->str : ""));
    json_object_set_new(body, "org",
                        json_string(org != NULL && org->str != NULL
                                        ? org->str : ""));
    json_object_set_new(body, "started_at",
                        json_time(http_reply_ll(
                            http_hash_get(h, "started_ms"), 0)));
    json_object_set_new(body, "last_at",
                        json_time(http_reply_ll(
                            http_hash_get(h, "last_ms"), 0)));
    return body;
}

static void on_session_hash(struct store *st, redisReply *r, void *arg)
{
    struct session_call *s = arg;
    char key[API_KEYLEN], start[32], count[16];
    long long started;
    const char *argv[6];

    (void)st;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        session_fail(s, 503, "redis unavailable");
        return;
    }
    if (r->elements == 0) {
        session_fail(s, 404, "no such session");
        return;
    }
    s->body = session_head(s, r);

    started = http_reply_ll(http_hash_get(r, "started_ms"), 0);
    ledger_key(key, sizeof(key), s->learner, "stream");
    snprintf(start, sizeof(start), "%lld",
             started > SESSION_CLOCK_SLACK_MS
                 ? started - SESSION_CLOCK_SLACK_MS : 0);
    snprintf(count, sizeof(count), "%d", SESSION_EVENTS_MAX);
    argv[0] = "XRANGE";
    argv[1] = key;
    argv[2] = start;
    argv[3] = "+";
    argv[4] = "COUNT";
    argv[5] = count;
    if (store_command_argv(s->call.core->store, on_session_events, s, 6,
                           argv, NULL) != STORE_OK)
        session_fail(s, 503, "redis unavailable");
}

static void on_session_owner(struct store *st, redisReply *r, void *arg)
{
    struct session_call *s = arg;
    char key[API_KEYLEN], suffix[HTTP_ID_MAX + 16];
    const char *argv[2];

    (void)st;
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        session_fail(s, 503, "redis unavailable");
        return;
    }
    if (r->type != REDIS_REPLY_STRING || !http_id_valid(r->str, r->len)) {
        session_fail(s, 404, "no such session");
        return;
    }
    snprintf(s->learner, sizeof(s->learner), "%s", r->str);
    snprintf(suffix, sizeof(suffix), "session:%s", s->sid);
    ledger_key(key, sizeof(key), s->learner, suffix);
    argv[0] = "HGETALL";
    argv[1] = key;
    if (store_command_argv(s->call.core->store, on_session_hash, s, 2, argv,
                           NULL) != STORE_OK)
        session_fail(s, 503, "redis unavailable");
}

static void on_session(struct core *core, struct evhttp_request *req,
                       const struct auth_claims *claims, const char *sid)
{
    struct session_call *s = calloc(1, sizeof(*s));
    char key[HTTP_ID_MAX + 16];
    const char *argv[2];

    if (s == NULL) {
        http_reply_error(req, 500, "out of memory");
        return;
    }
    snprintf(s->sid, sizeof(s->sid), "%s", sid);
    snprintf(key, sizeof(key), "pd:sid:%s", sid);
    argv[0] = "GET";
    argv[1] = key;
    if (store_command_argv(core->store, on_session_owner, s, 2, argv,
                           NULL) != STORE_OK) {
        free(s);
        http_reply_error(req, 503, "redis unavailable");
        return;
    }
    http_call_start(&s->call, core, req, claims);
}

/* ---------------------------------------------------------------------
 * Routing
 * ------------------------------------------------------------------ */

typedef void (*api_route_cb)(struct core *core, struct evhttp_request *req,
                             const struct auth_claims *claims,
                             const char *id);

/* A path of literal segments and at most one "*", the id. */
struct api_route {
    const char *seg[API_SEGMENTS];
    enum evhttp_cmd_type method;
    const char *method_name;
    enum auth_scope want, also;
    int bad_id;                 /* the status for an id out of syntax */
    api_route_cb cb;
};

static const struct api_route routes[] = {
    {{"learners", "*", "enrollment"}, EVHTTP_REQ_PUT, "PUT",
     AUTH_SCOPE_PLATFORM, AUTH_SCOPE_PLATFORM, 400, on_enrol},
    {{"learners", "*", "hours"}, EVHTTP_REQ_GET, "GET",
     AUTH_SCOPE_PLATFORM, AUTH_SCOPE_PLATFORM, 400, on_hours},
    {{"learners", "*", "events"}, EVHTTP_REQ_GET, "GET",
     AUTH_SCOPE_PLATFORM, AUTH_SCOPE_SUPERVISOR, 400, http_learner_events},
    {{"learners", "*"}, EVHTTP_REQ_DELETE, "DELETE",
     AUTH_SCOPE_PLATFORM, AUTH_SCOPE_PLATFORM, 400, http_learner_erase},
    {{"reports", "hours"}, EVHTTP_REQ_GET, "GET",
     AUTH_SCOPE_PLATFORM, AUTH_SCOPE_PLATFORM, 404, http_reports_hours},
    {{"flags"}, EVHTTP_REQ_GET, "GET",
     AUTH_SCOPE_SUPERVISOR, AUTH_SCOPE_SUPERVISOR, 404, http_flags_list},
    {{"flags", "*"}, EVHTTP_REQ_GET, "GET",
     AUTH_SCOPE_SUPERVISOR, AUTH_SCOPE_SUPERVISOR, 404, http_flag_get},
    {{"flags", "*", "review"}, EVHTTP_REQ_POST, "POST",
     AUTH_SCOPE_SUPERVISOR, AUTH_SCOPE_SUPERVISOR, 404, http_flag_review},
    {{"evidence", "*"}, EVHTTP_REQ_GET, "GET",
     AUTH_SCOPE_SUPERVISOR, AUTH_SCOPE_SUPERVISOR, 404, http_evidence_get},
    {{"sessions", "*"}, EVHTTP_REQ_GET, "GET",
     AUTH_SCOPE_PLATFORM, AUTH_SCOPE_SUPERVISOR, 404, on_session},
};

#define NROUTES (sizeof(routes) / sizeof(routes[0]))

/* Matches the split path; *id gets the "*" segment. */
static int route_match(const struct api_route *rt, char **seg, int nseg,
                       const char **id)
{
    int n = 0;

    while (n < API_SEGMENTS && rt->seg[n] != NULL)
        n++;
    if (n != nseg)
        return 0;
    *id = NULL;
    for (int i = 0; i < n; i++) {
        if (strcmp(rt->seg[i], "*") == 0)
            *id = seg[i];
        else if (strcmp(rt->seg[i], seg[i]) != 0)
            return 0;
    }
    return 1;
}

/* Checks the token and the id, then hands over to the route. */
static void route_call(struct core *core, struct evhttp_request *req,
                       const struct api_route *rt, const char *raw_id)
{
    struct auth_claims claims;
    char *id = NULL;
    size_t idlen = 0;

    if (http_require(core, req, rt->want, rt->also, &claims) !=
        HTTP_ALLOWED)
        return;
    if (raw_id != NULL) {
        id = evhttp_uridecode(raw_id, 0, &idlen);
        /* strlen catches a decoded NUL, which the charset cannot. */
        if (id == NULL || strlen(id) != idlen ||
            !http_id_valid(id, idlen)) {
            free(id);
            http_reply_error(req, rt->bad_id,
                             rt->bad_id == 400 ? "bad learner id"
                                               : "no such resource");
            return;
        }
    }
    rt->cb(core, req, &claims, id);
    free(id);
}

int http_api_route(struct core *core, struct evhttp_request *req,
                   const char *path)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    char *copy, *seg[API_SEGMENTS], *p;
    char allow[64] = "";
    int nseg = 0;

    if (strncmp(path, "/v1/", 4) != 0)
        return HTTP_UNHANDLED;
    copy = strdup(path + 4);
    if (copy == NULL) {
        http_reply_error(req, 500, "out of memory");
        return HTTP_HANDLED;
    }
    for (p = copy;;) {
        char *slash = strchr(p, '/');

        if (nseg == API_SEGMENTS)
            goto unmatched;
        seg[nseg++] = p;
        if (slash == NULL)
            break;
        *slash = '\0';
        p = slash + 1;
    }

    for (size_t i = 0; i < NROUTES; i++) {
        const char *id;

        if (!route_match(&routes[i], seg, nseg, &id))
            continue;
        if (routes[i].method == cmd) {
            route_call(core, req, &routes[i], id);
            free(copy);
            return HTTP_HANDLED;
        }
        if (allow[0] != '\0')
            strncat(allow, ", ", sizeof(allow) - strlen(allow) - 1);
        strncat(allow, routes[i].method_name,
                sizeof(allow) - strlen(allow) - 1);
    }
    if (allow[0] != '\0') {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
                          allow);
        http_reply_error(req, 405, "method not allowed");
        free(copy);
        return HTTP_HANDLED;
    }

unmatched:
    free(copy);
    return HTTP_UNHANDLED;
}
