/* The supervisor's routes: flag lists and details, reviews and evidence
 * downloads. A flag lives in its learner's hash, found through the global
 * index pd:flagindex; lists walk the global zsets (or the learner's own)
 * newest first, pipelining one HGETALL per flag. */
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "http-internal.h"
#include "ledger.h"
#include "log.h"
#include "store.h"

#define FLAGS_KEYLEN (2 * HTTP_ID_MAX + 64)
#define FLAGS_LIMIT_DEFAULT 100
#define FLAGS_LIMIT_MAX 500
/* A filtered list reads the zset in pages of limit x FLAGS_PAGE_FACTOR
 * ids, and answers with what it found after FLAGS_SCAN_MAX of them, so
 * a rare filter costs a bounded amount of Redis work. */
#define FLAGS_PAGE_FACTOR 4
#define FLAGS_PAGE_MIN 100
#define FLAGS_SCAN_MAX 20000
#define REVIEW_NOTE_MAX 1000

/* ---------------------------------------------------------------------
 * A flag as JSON
 * ------------------------------------------------------------------ */

static json_t *field_string(const redisReply *h, const char *name)
{
    const redisReply *v = http_hash_get(h, name);
    json_t *s;

    if (v == NULL || v->type != REDIS_REPLY_STRING)
        return json_string("");
    s = json_stringn(v->str, v->len);
    return s != NULL ? s : json_string("");
}

static json_t *field_time(const redisReply *h, const char *name)
{
    long long ms = http_reply_ll(http_hash_get(h, name), 0);
    char buf[40];

    if (ms <= 0)
        return json_null();
    ledger_rfc3339(ms, buf, sizeof(buf));
    return json_string(buf);
}

/* "a,b,c" -> ["a","b","c"]; "" -> []. */
static json_t *evidence_list(const redisReply *h)
{
    const redisReply *v = http_hash_get(h, "evidence");
    json_t *list = json_array();
    const char *p, *end;

    if (v == NULL || v->type != REDIS_REPLY_STRING)
        return list;
    for (p = v->str; *p != '\0'; p = *end == ',' ? end + 1 : end) {
        end = p + strcspn(p, ",");
        if (end > p)
            json_array_append_new(list, json_stringn(p, (size_t)(end - p)));
    }
    return list;
}

/* The SPEC's flag object from an HGETALL reply of its hash. */
static json_t *flag_json(const redisReply *h)
{
    json_t *f = json_object();
    const redisReply *status = http_hash_get(h, "status");

    json_object_set_new(f, "id", field_string(h, "id"));
    json_object_set_new(f, "learner_id", field_string(h, "learner_id"));
    json_object_set_new(f, "org", field_string(h, "org"));
    json_object_set_new(f, "course", field_string(h, "course"));
    json_object_set_new(f, "session_id", field_string(h, "session_id"));
    json_object_set_new(f, "kind", field_string(h, "kind"));
    json_object_set_new(f, "opened_at", field_time(h, "opened_ms"));
    json_object_set_new(f, "evidence", evidence_list(h));
    json_object_set_new(f, "withheld_seconds",
                        json_integer(http_reply_ll(
                            http_hash_get(h, "withheld_ms"), 0) / 1000));
    json_object_set_new(f, "status", field_string(h, "status"));
    if (status != NULL && status->type == REDIS_REPLY_STRING &&
        strcmp(status->str, "open") != 0) {
        json_object_set_new(f, "reviewed_by", field_string(h, "reviewed_by"));
        json_object_set_new(f, "reviewed_at", field_time(h, "reviewed_ms"));
        json_object_set_new(f, "note", field_string(h, "note"));
    }
    return f;
}

static int field_is(const redisReply *h, const char *name, const char *want)
{
    const redisReply *v = http_hash_get(h, name);

    return v != NULL && v->type == REDIS_REPLY_STRING &&
           strcmp(v->str, want) == 0;
}

/* ---------------------------------------------------------------------
 * GET /v1/flags
 * ------------------------------------------------------------------ */

struct flags_call {
    struct http_call call;
    char zset[FLAGS_KEYLEN];
    /* Filters; "" matches anything. */
    char status[16];
    char kind[HTTP_ID_MAX + 1];
    char org[HTTP_ID_MAX + 1];
    char course[HTTP_ID_MAX + 1];
    char learner[HTTP_ID_MAX + 1];
    int limit;
    int page;                   /* ids asked per ZREVRANGE */
    int offset;                 /* ids read so far */
    int got;                    /* ids the current page held */
    char **ids;                 /* the current page's, owned */
    int nids;
    json_t *out;
};

static void flags_page(struct flags_call *f);

static void flags_free_ids(struct flags_call *f)
{
    for (int i = 0; i < f->nids; i++)
        free(f->ids[i]);
    free(f->ids);
    f->ids = NULL;
    f->nids = 0;
}

static void flags_free(struct flags_call *f)
{
    flags_free_ids(f);
    json_decref(f->out);
    free(f);
}

/* Every reply of a page is in: answer, or read the next page. */
static void flags_page_done(struct flags_call *f)
{
    int short_page = f->got < f->page;

    flags_free_ids(f);
    if (f->call.failed) {
        http_call_error(&f->call, 503, "redis unavailable");
    } else if ((int)json_array_size(f->out) >= f->limit || short_page ||
               f->offset >= FLAGS_SCAN_MAX) {
        http_call_reply(&f->call, 200, json_pack("{sO}", "flags", f->out));
    } else {
        flags_page(f);
        return;
    }
    flags_free(f);
}

static void flags_reply_counted(struct flags_call *f)
{
    if (--f->call.pending == 0)
        flags_page_done(f);
}

static int flags_match(const struct flags_call *f, const redisReply *h)
{
    if (h == NULL || h->type != REDIS_REPLY_ARRAY || h->elements == 0)
        return 0;
    return (f->status[0] == '\0' || field_is(h, "status", f->status)) &&
           (f->kind[0] == '\0' || field_is(h, "kind", f->kind)) &&
           (f->org[0] == '\0' || field_is(h, "org", f->org)) &&
           (f->course[0] == '\0' || field_is(h, "course", f->course));
}

/* Replies arrive in the order sent, which is the zset's: newest first. */
static void on_flags_flag(struct store *st, redisReply *r, void *arg)
{
    struct flags_call *f = arg;

    (void)st;
    if (r == NULL)
        f->call.failed = 1;
    else if ((int)json_array_size(f->out) < f->limit && flags_match(f, r))
        json_array_append_new(f->out, flag_json(r));
    flags_reply_counted(f);
}

static void flags_read(struct flags_call *f, const char *learner,
                       const char *id)
{
    char key[FLAGS_KEYLEN], suffix[HTTP_ID_MAX + 8];
    const char *argv[2];

    snprintf(suffix, sizeof(suffix), "flag:%s", id);
    if (ledger_key(key, sizeof(key), learner, suffix) != LEDGER_OK)
        return;
    argv[0] = "HGETALL";
    argv[1] = key;
    http_call_command(&f->call, on_flags_flag, f, 2, argv, NULL);
}

static void on_flags_owners(struct store *st, redisReply *r, void *arg)
{
    struct flags_call *f = arg;

    (void)st;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        f->call.failed = 1;
    } else {
        for (size_t i = 0; i < r->elements && (int)i < f->nids; i++) {
            const redisReply *o = r->element[i];

            /* An id without an owner was never fully written. */
            if (o->type == REDIS_REPLY_STRING && http_id_valid(o->str, o->len))
                flags_read(f, o->str, f->ids[i]);
        }
    }
    flags_reply_counted(f);
}

/* Looks the page's ids up in pd:flagindex with one HMGET. */
static void flags_owners(struct flags_call *f)
{
    const char **argv = calloc((size_t)f->nids + 2, sizeof(*argv));

    if (argv == NULL) {
        f->call.failed = 1;
        return;
    }
    argv[0] = "HMGET";
    argv[1] = "pd:flagindex";
    for (int i = 0; i < f->nids; i++)
        argv[i + 2] = f->ids[i];
    http_call_command(&f->call, on_flags_owners, f, f->nids + 2, argv, NULL);
    free(argv);
}

static void on_flags_ids(struct store *st, redisReply *r, void *arg)
{
    struct flags_call *f = arg;

    (void)st;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        f->call.failed = 1;
        flags_reply_counted(f);
        return;
    }
    f->got = (int)r->elements;
    f->offset += f->got;
    f->ids = calloc(r->elements + 1, sizeof(*f->ids));
    for (size_t i = 0; f->ids != NULL && i < r->elements; i++) {
        const redisReply *id = r->element[i];

        if (id->type == REDIS_REPLY_STRING &&
            (f->ids[f->nids] = strdup(id->str)) != NULL)
            f->nids++;
    }
    if (f->learner[0] != '\0') {
        for (int i = 0; i < f->nids; i++)
            flags_read(f, f->learner, f->ids[i]);
    } else if (f->nids > 0) {
        flags_owners(f);
    }
    flags_reply_counted(f);
}

static void flags_page(struct flags_call *f)
{
    char start[16], stop[16];
    const char *argv[4];

    snprintf(start, sizeof(start), "%d", f->offset);
    snprintf(stop, sizeof(stop), "%d", f->offset + f->page - 1);
    argv[0] = "ZREVRANGE";
    argv[1] = f->zset;
    argv[2] = start;
    argv[3] = stop;
    if (http_call_command(&f->call, on_flags_ids, f, 4, argv, NULL) !=
        STORE_OK)
        flags_page_done(f);
}

/* Copies query parameter name into buf; -1 when it is too long. */
static int flags_param(const struct evkeyvalq *q, const char *name,
                       char *buf, size_t buflen)
{
    const char *v = http_query_get(q, name);

    buf[0] = '\0';
    if (v == NULL)
        return 0;
    if (strlen(v) >= buflen)
        return -1;
    snprintf(buf, buflen, "%s", v);
    return 0;
}

/* Fills the filters from the query. Returns why it is bad, or NULL. */
static const char *flags_parse(struct flags_call *f, struct evkeyvalq *q)
{
    const char *status = http_query_get(q, "status");
    const char *limit = http_query_get(q, "limit");
    char *end;
    long n;

    if (flags_param(q, "kind", f->kind, sizeof(f->kind)) != 0 ||
        flags_param(q, "org", f->org, sizeof(f->org)) != 0 ||
        flags_param(q, "course", f->course, sizeof(f->course)) != 0 ||
        flags_param(q, "learner", f->learner, sizeof(f->learner)) != 0)
        return "filter too long";
    if (f->learner[0] != '\0' &&
        !http_id_valid(f->learner, strlen(f->learner)))
        return "bad learner id";

    f->limit = FLAGS_LIMIT_DEFAULT;
    if (limit != NULL) {
        n = strtol(limit, &end, 10);
        if (*limit == '\0' || *end != '\0' || n < 1 || n > FLAGS_LIMIT_MAX)
            return "limit must be 1..500";
        f->limit = (int)n;
    }

    if (status == NULL || strcmp(status, "open") == 0)
        snprintf(f->status, sizeof(f->status), "open");
    else if (strcmp(status, "confirmed") == 0 ||
             strcmp(status, "dismissed") == 0)
        snprintf(f->status, sizeof(f->status), "%s", status);
    else if (strcmp(status, "all") != 0)
        return "status must be open, confirmed, dismissed or all";

    if (f->learner[0] != '\0')
        ledger_key(f->zset, sizeof(f->zset), f->learner, "flags");
    else
        snprintf(f->zset, sizeof(f->zset), "%s",
                 strcmp(f->status, "open") == 0 ? "pd:flags:open"
                                                : "pd:flags:all");
    return NULL;
}

void http_flags_list(struct core *core, struct evhttp_request *req,
                     const struct auth_claims *claims, const char *unused)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *qs = uri != NULL ? evhttp_uri_get_query(uri) : NULL;
    struct flags_call *f = calloc(1, sizeof(*f));
    const char *why = NULL;
    struct evkeyvalq q;
    int filtered;

    (void)unused;
    TAILQ_INIT(&q);
    if (f == NULL) {
        http_reply_error(req, 500, "out of memory");
        return;
    }
    if (qs != NULL && *qs != '\0' && evhttp_parse_query_str(qs, &q) != 0)
        why = "bad query string";
    if (why == NULL)
        why = flags_parse(f, &q);
    evhttp_clear_headers(&q);
    if (why != NULL) {
        free(f);
        http_reply_error(req, 400, why);
        return;
    }

    /* Only the open zset holds nothing but what is asked for; any other
     * filter reads more ids than it keeps. */
    filtered = f->kind[0] != '\0' || f->org[0] != '\0' ||
               f->course[0] != '\0' ||
               (f->status[0] != '\0' && (f->learner[0] != '\0' ||
                                         strcmp(f->status, "open") != 0));
    f->page = filtered ? f->limit * FLAGS_PAGE_FACTOR : f->limit;
    if (f->page < FLAGS_PAGE_MIN && filtered)
        f->page = FLAGS_PAGE_MIN;
    f->out = json_array();
    http_call_start(&f->call, core, req, claims);
    flags_page(f);
}

/* ---------------------------------------------------------------------
 * GET /v1/flags/{id} and POST /v1/flags/{id}/review
 * ------------------------------------------------------------------ */

struct flag_call {
    struct http_call call;
    char id[HTTP_ID_MAX + 1];
    char learner[HTTP_ID_MAX + 1];
    int review;                 /* 0: a GET */
    char decision[16];          /* "confirmed" | "dismissed" */
    char *note;                 /* owned */
    long long credited_ms;      /* by this review */
};

static void flag_done(struct flag_call *c, int code, const char *why)
{
    if (why != NULL)
        http_call_error(&c->call, code, why);
    free(c->note);
    free(c);
}

static void on_flag_hash(struct store *st, redisReply *r, void *arg)
{
    struct flag_call *c = arg;
    json_t *body;

    (void)st;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        flag_done(c, 503, "redis unavailable");
        return;
    }
    if (r->elements == 0) {
        flag_done(c, 404, "no such flag");
        return;
    }
    body = flag_json(r);
    if (c->review)
        json_object_set_new(body, "credited_seconds",
                            json_integer(c->credited_ms / 1000));
    http_call_reply(&c->call, 200, body);
    flag_done(c, 0, NULL);
}

static void flag_key(const struct flag_call *c, char *buf, size_t buflen)
{
    char suffix[HTTP_ID_MAX + 8];

    snprintf(suffix, sizeof(suffix), "flag:%s", c->id);
    ledger_key(buf, buflen, c->learner, suffix);
}

static void flag_fetch(struct flag_call *c)
{
    char key[FLAGS_KEYLEN];
    const char *argv[2];

    flag_key(c, key, sizeof(key));
    argv[0] = "HGETALL";
    argv[1] = key;
    if (store_command_argv(c->call.core->store, on_flag_hash, c, 2, argv,
                           NULL) != STORE_OK)
        flag_done(c, 503, "redis unavailable");
}

/* The script's refusals: "NOFLAG" and "CONFLICT <status>". */
static void review_refused(struct flag_call *c, const redisReply *r)
{
    char why[64];

    if (strncmp(r->str, "NOFLAG", 6) == 0) {
        flag_done(c, 404, "no such flag");
    } else if (strncmp(r->str, "CONFLICT ", 9) == 0) {
        snprintf(why, sizeof(why), "already %.40s", r->str + 9);
        flag_done(c, 409, why);
    } else {
        log_warning("msg=\"review not written\" flag=%s error=\"%s\"", c->id,
                    r->str);
        flag_done(c, 500, "review not written");
    }
}

static void on_review_written(struct store *st, redisReply *r, void *arg)
{
    struct flag_call *c = arg;
    int repeat;

    (void)st;
    if (r == NULL) {
        flag_done(c, 503, "redis unavailable");
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        review_refused(c, r);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3) {
        flag_done(c, 500, "review not written");
        return;
    }
    /* A repeated decision credits nothing more. */
    repeat = http_reply_ll(r->element[2], 0) != 0;
    c->credited_ms = repeat ? 0 : http_reply_ll(r->element[1], 0);
    if (!repeat)
        log_notice("msg=\"flag reviewed\" flag=%s learner=%s decision=%s "
                   "reviewer=%s credited_ms=%lld", c->id, c->learner,
                   c->decision, c->call.claims.sub, c->credited_ms);

    /* The open index is global (another slot): updated beside the
     * script, again on a repeat in case a first attempt lost it. */
    store_command(c->call.core->store, NULL, NULL, "ZREM pd:flags:open %s",
                  c->id);
    flag_fetch(c);
}

static void review_write(struct flag_call *c)
{
    char key[FLAGS_KEYLEN], stream[FLAGS_KEYLEN], now[24], cap[24];
    char maxlen[24];
    const char *argv[9];

    flag_key(c, key, sizeof(key));
    ledger_key(stream, sizeof(stream), c->learner, "stream");
    snprintf(now, sizeof(now), "%lld", (long long)core_now_ms());
    snprintf(cap, sizeof(cap), "%lld",
             (long long)c->call.core->cfg.policy.daily_cap_ms);
    snprintf(maxlen, sizeof(maxlen), "%lld",
             (long long)c->call.core->cfg.events_maxlen);
    argv[0] = key;
    argv[1] = stream;
    argv[2] = LEDGER_EVENTS_KEY;
    argv[3] = c->decision;
    argv[4] = c->call.claims.sub;
    argv[5] = c->note != NULL ? c->note : "";
    argv[6] = now;
    argv[7] = cap;
    argv[8] = maxlen;
    if (ledger_run(c->call.core->store, LEDGER_REVIEW, on_review_written, c,
                   3, 9, argv, NULL) != LEDGER_OK)
        flag_done(c, 503, "redis unavailable");
}

static void on_flag_owner(struct store *st, redisReply *r, void *arg)
{
    struct flag_call *c = arg;

    (void)st;
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        flag_done(c, 503, "redis unavailable");
        return;
    }
    if (r->type != REDIS_REPLY_STRING || !http_id_valid(r->str, r->len)) {
        flag_done(c, 404, "no such flag");
        return;
    }
    snprintf(c->learner, sizeof(c->learner), "%s", r->str);
    if (c->review)
        review_write(c);
    else
        flag_fetch(c);
}

static void flag_start(struct core *core, struct evhttp_request *req,
                       const struct auth_claims *claims,
                       struct flag_call *c)
{
    char key[] = "pd:flagindex";
    const char *argv[3];

    argv[0] = "HGET";
    argv[1] = key;
    argv[2] = c->id;
    if (store_command_argv(core->store, on_flag_owner, c, 3, argv, NULL) !=
        STORE_OK) {
        free(c->note);
        free(c);
        http_reply_error(req, 503, "redis unavailable");
        return;
    }
    http_call_start(&c->call, core, req, claims);
}

void http_flag_get(struct core *core, struct evhttp_request *req,
                   const struct auth_claims *claims, const char *id)
{
    struct flag_call *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        http_reply_error(req, 500, "out of memory");
        return;
    }
    snprintf(c->id, sizeof(c->id), "%s", id);
    flag_start(core, req, claims, c);
}

/* Characters, not bytes: jansson has checked the UTF-8 already. */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;

    for (; *s != '\0'; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            n++;
    return n;
}

/* Reads {"decision", "note"} into c. Returns why it is bad, or NULL. */
static const char *review_parse(struct evhttp_request *req,
                                struct flag_call *c)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *why = NULL;
    json_t *body, *decision, *note;
    json_error_t err;

    if (len == 0)
        return "body must be JSON";
    body = json_loadb((const char *)evbuffer_pullup(in, -1), len, 0, &err);
    if (!json_is_object(body)) {
        json_decref(body);
        return "body must be a JSON object";
    }
    decision = json_object_get(body, "decision");
    note = json_object_get(body, "note");
    if (json_is_string(decision) &&
        strcmp(json_string_value(decision), "confirm") == 0)
        snprintf(c->decision, sizeof(c->decision), "confirmed");
    else if (json_is_string(decision) &&
             strcmp(json_string_value(decision), "dismiss") == 0)
        snprintf(c->decision, sizeof(c->decision), "dismissed");
    else
        why = "decision must be confirm or dismiss";

    if (why == NULL && note != NULL && !json_is_null(note)) {
        if (!json_is_string(note) ||
            strlen(json_string_value(note)) != json_string_length(note))
            why = "note must be a string";
        else if (utf8_chars(json_string_value(note)) > REVIEW_NOTE_MAX)
            why = "note longer than 1000 characters";
        else if ((c->note = strdup(json_string_value(note))) == NULL)
            why = "out of memory";
    }
    json_decref(body);
    return why;
}

void http_flag_review(struct core *core, struct evhttp_request *req,
                      const struct auth_claims *claims, const char *id)
{
    struct flag_call *c = calloc(1, sizeof(*c));
    const char *why;

    if (c == NULL) {
        http_reply_error(req, 500, "out of memory");
        return;
    }
    snprintf(c->id, sizeof(c->id), "%s", id);
    c->review = 1;
    if ((why = review_parse(req, c)) != NULL) {
        free(c->note);
        free(c);
        http_reply_error(req, 400, why);
        return;
    }
    flag_start(core, req, claims, c);
}

/* ---------------------------------------------------------------------
 * GET /v1/evidence/{id}
 * ------------------------------------------------------------------ */

struct evidence_call {
    struct http_call call;
    char id[33];
};

static void evidence_done(struct evidence_call *e, int code, const char *why)
{
    if (why != NULL)
        http_call_error(&e->call, code, why);
    free(e);
}

static void on_evidence_jpeg(struct store *st, redisReply *r, void *arg)
{
    struct evidence_call *e = arg;

    (void)st;
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        evidence_done(e, 503, "redis unavailable");
        return;
    }
    if (r->type != REDIS_REPLY_STRING) {
        evidence_done(e, 404, "no such evidence (expired?)");
        return;
    }
    http_call_reply_bytes(&e->call, "image/jpeg", r->str, r->len);
    evidence_done(e, 0, NULL);
}

static void on_evidence_owner(struct store *st, redisReply *r, void *arg)
{
    struct evidence_call *e = arg;
    char key[FLAGS_KEYLEN], suffix[48];
    const char *argv[2];

    (void)st;
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        evidence_done(e, 503, "redis unavailable");
        return;
    }
    if (r->type != REDIS_REPLY_STRING || !http_id_valid(r->str, r->len)) {
        evidence_done(e, 404, "no such evidence (expired?)");
        return;
    }
    snprintf(suffix, sizeof(suffix), "evidence:%s", e->id);
    ledger_key(key, sizeof(key), r->str, suffix);
    argv[0] = "GET";
    argv[1] = key;
    if (store_command_argv(e->call.core->store, on_evidence_jpeg, e, 2, argv,
                           NULL) != STORE_OK)
        evidence_done(e, 503, "redis unavailable");
}

static int evidence_id_valid(const char *id)
{
    size_t n = strspn(id, "0123456789abcdef");

    return n == 32 && id[n] == '\0';
}

void http_evidence_get(struct core *core, struct evhttp_request *req,
                       const struct auth_claims *claims, const char *id)
{
    struct evidence_call *e;
    char key[48];
    const char *argv[2];

    if (!evidence_id_valid(id)) {
        http_reply_error(req, 404, "no such evidence");
        return;
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL) {
        http_reply_error(req, 500, "out of memory");
        return;
    }
    snprintf(e->id, sizeof(e->id), "%s", id);
    snprintf(key, sizeof(key), "pd:evidx:%s", id);
    argv[0] = "GET";
    argv[1] = key;
    if (store_command_argv(core->store, on_evidence_owner, e, 2, argv,
                           NULL) != STORE_OK) {
        free(e);
        http_reply_error(req, 503, "redis unavailable");
        return;
    }
    http_call_start(&e->call, core, req, claims);
}
