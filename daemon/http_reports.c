/* Records for the platform: the hours report of an organisation's
 * learners for training-fund claims (JSON or CSV, paged by learner id),
 * a learner's event stream, and the erasure of a learner's biometric
 * data. The report reads each learner's course hash and profile, one
 * pipelined pair per row, and no flag: the scripts keep flag counters. */
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
#include "policy.h"
#include "session.h"
#include "store.h"

#define REPORT_KEYLEN (2 * HTTP_ID_MAX + 64)
#define REPORT_LIMIT_DEFAULT 100
#define REPORT_LIMIT_MAX 1000
#define EVENTS_COUNT_DEFAULT 100
#define EVENTS_COUNT_MAX 1000
/* A stream id: two 64-bit numbers, "ms-seq". */
#define STREAM_ID_MAX 41
/* Base64url of HTTP_ID_MAX bytes, and its NUL. */
#define CURSOR_MAX (4 * ((HTTP_ID_MAX + 2) / 3) + 1)
#define DATE_LEN 10

static const char report_columns[] =
    "learner_id,role,required_hours,credited_seconds,credit_hours,"
    "online_cap_hours,online_used_hours,flags_open,flags_confirmed\r\n";

/* ---------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------ */

static const char b64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Writes len bytes of in as unpadded base64url into out (outlen bytes,
 * room for the NUL included). */
static void b64url_encode(const char *in, size_t len, char *out,
                          size_t outlen)
{
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0;

    for (size_t i = 0; i < len && o + 5 <= outlen; i += 3) {
        unsigned v = (unsigned)p[i] << 16;
        size_t n = len - i < 3 ? len - i : 3;

        if (n > 1)
            v |= (unsigned)p[i + 1] << 8;
        if (n > 2)
            v |= p[i + 2];
        out[o++] = b64url[(v >> 18) & 63];
        out[o++] = b64url[(v >> 12) & 63];
        if (n > 1)
            out[o++] = b64url[(v >> 6) & 63];
        if (n > 2)
            out[o++] = b64url[v & 63];
    }
    out[o] = '\0';
}

/* Decodes unpadded base64url into out as a string. Returns its length,
 * or -1 for a bad character, a bad length or no room. */
static int b64url_decode(const char *in, char *out, size_t outlen)
{
    size_t len = strlen(in), o = 0;
    unsigned v = 0;
    int bits = 0;

    if (len % 4 == 1)
        return -1;
    for (size_t i = 0; i < len; i++) {
        const char *c = strchr(b64url, in[i]);

        if (c == NULL)
            return -1;
        v = (v << 6) | (unsigned)(c - b64url);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o + 1 >= outlen)
                return -1;
            out[o++] = (char)((v >> bits) & 0xff);
        }
    }
    out[o] = '\0';
    return (int)o;
}

/* 1 for a real calendar date written YYYY-MM-DD, as the ledger keeps
 * days (policy_day_format()). */
static int date_valid(const char *s)
{
    static const int mdays[12] = {31, 28, 31, 30, 31, 30,
                                  31, 31, 30, 31, 30, 31};
    int y, m, d, leap;

    if (strlen(s) != DATE_LEN || s[4] != '-' || s[7] != '-')
        return 0;
    for (int i = 0; i < DATE_LEN; i++)
        if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9'))
            return 0;
    y = atoi(s);
    m = (s[5] - '0') * 10 + (s[6] - '0');
    d = (s[8] - '0') * 10 + (s[9] - '0');
    leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m >= 1 && m <= 12 && d >= 1 &&
           d <= mdays[m - 1] + (m == 2 && leap);
}

/* A decimal in lo..hi into *out; the default when absent. Returns -1
 * when it is not one. */
static int number_param(const struct evkeyvalq *q, const char *name,
                        long lo, long hi, long fallback, int *out)
{
    const char *v = http_query_get(q, name);
    char *end;
    long n;

    *out = (int)fallback;
    if (v == NULL)
        return 0;
    n = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || n < lo || n > hi)
        return -1;
    *out = (int)n;
    return 0;
}

/* Parses the query string into q (cleared by the caller either way).
 * Returns -1 when it is malformed. */
static int parse_query(struct evhttp_request *req, struct evkeyvalq *q)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *s = uri != NULL ? evhttp_uri_get_query(uri) : NULL;

    TAILQ_INIT(q);
    if (s == NULL || *s == '\0')
        return 0;
    return evhttp_parse_query_str(s, q);
}

/* Hundredths as "12.34". */
static void centi_text(long long centi, char *buf, size_t buflen)
{
    snprintf(buf, buflen, "%s%lld.%02lld", centi < 0 ? "-" : "",
             llabs(centi) / 100, llabs(centi) % 100);
}

/* Appends s as one CSV field, quoted as RFC 4180 asks when it holds a
 * comma, a quote, CR or LF. */
static void csv_field(struct evbuffer *out, const char *s)
{
    if (strpbrk(s, ",\"\r\n") == NULL) {
        evbuffer_add(out, s, strlen(s));
        return;
    }
    evbuffer_add(out, "\"", 1);
    for (; *s != '\0'; s++) {
        if (*s == '"')
            evbuffer_add(out, "\"", 1);
        evbuffer_add(out, s, 1);
    }
    evbuffer_add(out, "\"", 1);
}

/* ---------------------------------------------------------------------
 * GET /v1/reports/hours?org=O&course=C&from=D&to=D&limit=N&cursor=X
 * ------------------------------------------------------------------ */

struct report_call;

/* One learner's line, filled by two replies: profile and course hash. */
struct report_row {
    struct report_call *report;
    char learner[HTTP_ID_MAX + 1];
    char role[HTTP_ID_MAX + 1];
    long long total_ms;
    long long range_ms;         /* the days in [from, to] */
    long long flags_open;
    long long flags_confirmed;
};

struct report_call {
    struct http_call call;
    char org[HTTP_ID_MAX + 1];
    char course[HTTP_ID_MAX + 1];
    char from[DATE_LEN + 1];    /* "" for no bound */
    char to[DATE_LEN + 1];
    int limit;
    int csv;
    char after[HTTP_ID_MAX + 1];    /* the cursor's id; "" for the start */
    char next[CURSOR_MAX];          /* "" when this page is the last */
    struct report_row *rows;        /* owned */
    int nrows;
};

static void report_free(struct report_call *c)
{
    free(c->rows);
    free(c);
}

/* What the hours API says of the same learner and course, over the
 * report's days: hours in hundredths, rounded down, and the online cap
 * of the learner's role (cap < 0 and need NULL for an unknown role). */
struct report_figures {
    long long secs;
    long long centi;
    const struct config_role *need;
    long long cap;
    long long used;
};

static void row_figures(const struct report_call *c,
                        const struct report_row *row,
                        struct report_figures *f)
{
    const struct config *cfg = &c->call.core->cfg;
    int ranged = c->from[0] != '\0' || c->to[0] != '\0';

    f->secs = (ranged ? row->range_ms : row->total_ms) / 1000;
    f->centi = policy_credit_hours_centi(f->secs,
                                         cfg->policy.minutes_per_credit_hour);
    f->need = http_role_need(cfg, row->role);
    f->cap = -1;
    f->used = f->centi;
    if (f->need != NULL) {
        f->cap = policy_online_cap_centi(f->need->min_hours,
                                         cfg->online_share);
        f->used = policy_online_credit_centi(f->centi, f->cap);
    }
}

/* A JSON string, or null for "" or text that is not UTF-8. */
static json_t *text_or_null(const char *s)
{
    json_t *v = s[0] != '\0' ? json_string(s) : NULL;

    return v != NULL ? v : json_null();
}

static json_t *row_json(const struct report_call *c,
                        const struct report_row *row)
{
    struct report_figures f;

    row_figures(c, row, &f);
    return json_pack(
        "{so so so sI sf so sf sI sI}", "learner_id",
        text_or_null(row->learner), "role", text_or_null(row->role),
        "required_hours",
        f.need != NULL ? json_real(f.need->min_hours) : json_null(),
        "credited_seconds", (json_int_t)f.secs, "credit_hours",
        (double)f.centi / 100.0, "online_cap_hours",
        f.need != NULL ? json_real((double)f.cap / 100.0) : json_null(),
        "online_used_hours", (double)f.used / 100.0, "flags_open",
        (json_int_t)row->flags_open, "flags_confirmed",
        (json_int_t)row->flags_confirmed);
}

/* Nulls are empty fields; hours keep their two decimals, exact. */
static void row_csv(const struct report_call *c,
                    const struct report_row *row, struct evbuffer *out)
{
    struct report_figures f;
    char hours[32], cap[32], used[32], need[32] = "";

    row_figures(c, row, &f);
    centi_text(f.centi, hours, sizeof(hours));
    centi_text(f.used, used, sizeof(used));
    cap[0] = '\0';
    if (f.need != NULL) {
        snprintf(need, sizeof(need), "%.15g", f.need->min_hours);
        centi_text(f.cap, cap, sizeof(cap));
    }
    csv_field(out, row->learner);
    evbuffer_add(out, ",", 1);
    csv_field(out, row->role);
    evbuffer_add_printf(out, ",%s,%lld,%s,%s,%s,%lld,%lld\r\n", need,
                        f.secs, hours, cap, used, row->flags_open,
                        row->flags_confirmed);
}

static void report_reply_csv(struct report_call *c)
{
    struct evbuffer *out = evbuffer_new();

    if (out == NULL) {
        http_call_error(&c->call, 500, "out of memory");
        return;
    }
    evbuffer_add(out, report_columns, strlen(report_columns));
    for (int i = 0; i < c->nrows; i++)
        row_csv(c, &c->rows[i], out);
    /* CSV has no envelope: the cursor travels in a header. */
    if (c->call.req != NULL && c->next[0] != '\0')
        evhttp_add_header(evhttp_request_get_output_headers(c->call.req),
                          "X-Next-Cursor", c->next);
    http_call_reply_bytes(&c->call, "text/csv; charset=utf-8",
                          evbuffer_pullup(out, -1), evbuffer_get_length(out));
    evbuffer_free(out);
}

static void report_reply_json(struct report_call *c)
{
    json_t *rows = json_array();

    for (int i = 0; i < c->nrows; i++)
        json_array_append_new(rows, row_json(c, &c->rows[i]));
    http_call_reply(
        &c->call, 200,
        json_pack("{ss ss so so so so}", "org", c->org, "course", c->course,
                  "from", c->from[0] != '\0' ? json_string(c->from)
                                             : json_null(),
                  "to", c->to[0] != '\0' ? json_string(c->to) : json_null(),
                  "rows", rows, "next",
                  c->next[0] != '\0' ? json_string(c->next) : json_null()));
}

static void report_finish(struct report_call *c)
{
    if (c->call.failed)
        http_call_error(&c->call, 503, "redis unavailable");
    else if (c->csv)
        report_reply_csv(c);
    else
        report_reply_json(c);
    report_free(c);
}

static void row_done(struct report_row *row)
{
    struct report_call *c = row->report;

    if (--c->call.pending == 0)
        report_finish(c);
}

static void on_row_role(struct store *st, redisReply *r, void *arg)
{
    struct report_row *row = arg;

    (void)st;
    if (r == NULL || r->type == REDIS_REPLY_ERROR)
        row->report->call.failed = 1;
    else if (r->type == REDIS_REPLY_STRING)
        snprintf(row->role, sizeof(row->role), "%s", r->str);
    row_done(row);
}

/* Adds a d:<day> field to the range when the day is within it. */
static void row_day(struct report_row *row, const char *day, long long ms)
{
    const struct report_call *c = row->report;

    if (strlen(day) != DATE_LEN)
        return;
    if ((c->from[0] == '\0' || strcmp(day, c->from) >= 0) &&
        (c->to[0] == '\0' || strcmp(day, c->to) <= 0))
        row->range_ms += ms;
}

/* The course hash holds the total, one field per day and the flag
 * counters: one HGETALL answers the rest of the row. */
static void on_row_course(struct store *st, redisReply *r, void *arg)
{
    struct report_row *row = arg;

    (void)st;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        row->report->call.failed = 1;
        row_done(row);
        return;
    }
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const char *f = r->element[i]->str;
        long long v = http_reply_ll(r->element[i + 1], 0);

        if (f == NULL)
            continue;
        if (strcmp(f, "total_ms") == 0)
            row->total_ms = v;
        else if (strcmp(f, "flags_open") == 0)
            row->flags_open = v;
        else if (strcmp(f, "flags_confirmed") == 0)
            row->flags_confirmed = v;
        else if (strncmp(f, "d:", 2) == 0)
            row_day(row, f + 2, v);
    }
    row_done(row);
}

/* Asks for each row's profile and course hash, pipelined. */
static void report_rows(struct report_call *c)
{
    char pkey[REPORT_KEYLEN], ckey[REPORT_KEYLEN + HTTP_ID_MAX];
    const char *argv[3];

    for (int i = 0; i < c->nrows; i++) {
        struct report_row *row = &c->rows[i];

        ledger_key(pkey, sizeof(pkey), row->learner, "profile");
        snprintf(ckey, sizeof(ckey), "pd:{%s}:course:%s", row->learner,
                 c->course);
        argv[0] = "HGET";
        argv[1] = pkey;
        argv[2] = "role";
        http_call_command(&c->call, on_row_role, row, 3, argv, NULL);
        argv[0] = "HGETALL";
        argv[1] = ckey;
        http_call_command(&c->call, on_row_course, row, 2, argv, NULL);
    }
    if (c->call.pending == 0)
        report_finish(c);
}

/* The page's ids, one more than asked to tell whether another follows. */
static void on_report_roster(struct store *st, redisReply *r, void *arg)
{
    struct report_call *c = arg;
    size_t n;

    (void)st;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        if (r != NULL && r->type == REDIS_REPLY_ERROR)
            log_warning("msg=\"report roster failed\" error=\"%s\"", r->str);
        http_call_error(&c->call, 503, "redis unavailable");
        report_free(c);
        return;
    }
    n = r->elements < (size_t)c->limit ? r->elements : (size_t)c->limit;
    c->rows = calloc(n + 1, sizeof(*c->rows));
    if (c->rows == NULL) {
        http_call_error(&c->call, 500, "out of memory");
        report_free(c);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const redisReply *id = r->element[i];

        /* The cursor is the page's last id, whether it is shown or not. */
        if (id->type != REDIS_REPLY_STRING || id->len > HTTP_ID_MAX)
            continue;
        if (r->elements > n && i == n - 1)
            b64url_encode(id->str, id->len, c->next, sizeof(c->next));
        if (!http_text_valid(id->str))
            continue;
        c->rows[c->nrows].report = c;
        snprintf(c->rows[c->nrows++].learner, HTTP_ID_MAX + 1, "%s",
                 id->str);
    }
    report_rows(c);
}

/* Any Accept naming text/csv gets CSV; others, and errors, get JSON. */
static int wants_csv(struct evhttp_request *req)
{
    const char *accept = evhttp_find_header(
        evhttp_request_get_input_headers(req), "Accept");

    return accept != NULL && strcasestr(accept, "text/csv") != NULL;
}

/* Copies an optional date parameter; -1 when it is not a date. */
static int date_param(const struct evkeyvalq *q, const char *name,
                      char *buf)
{
    const char *v = http_query_get(q, name);

    buf[0] = '\0';
    if (v == NULL)
        return 0;
    if (!date_valid(v))
        return -1;
    memcpy(buf, v, DATE_LEN + 1);
    return 0;
}

/* Fills c from the query. Returns why it is bad, or NULL. */
static const char *report_parse(struct report_call *c, struct evkeyvalq *q)
{
    const char *org = http_query_get(q, "org");
    const char *course = http_query_get(q, "course");
    const char *cursor = http_query_get(q, "cursor");

    if (org == NULL || !http_text_valid(org))
        return "org missing or not valid";
    if (course == NULL || !http_text_valid(course))
        return "course missing or not valid";
    snprintf(c->org, sizeof(c->org), "%s", org);
    snprintf(c->course, sizeof(c->course), "%s", course);
    if (date_param(q, "from", c->from) != 0 ||
        date_param(q, "to", c->to) != 0)
        return "from and to must be dates (YYYY-MM-DD)";
    if (c->from[0] != '\0' && c->to[0] != '\0' &&
        strcmp(c->from, c->to) > 0)
        return "from is after to";
    if (number_param(q, "limit", 1, REPORT_LIMIT_MAX, REPORT_LIMIT_DEFAULT,
                     &c->limit) != 0)
        return "limit must be 1..1000";
    if (cursor != NULL &&
        (strlen(cursor) >= CURSOR_MAX ||
         b64url_decode(cursor, c->after, sizeof(c->after)) !=
             (int)strlen(c->after) ||
         !http_text_valid(c->after)))
        return "bad cursor";
    return NULL;
}

static void report_start(struct report_call *c)
{
    char set[REPORT_KEYLEN], roster[REPORT_KEYLEN];
    char start[HTTP_ID_MAX + 2], count[16];
    const char *argv[4];

    snprintf(set, sizeof(set), "pd:org:{%s}:learners", c->org);
    snprintf(roster, sizeof(roster), "pd:org:{%s}:roster", c->org);
    if (c->after[0] != '\0')
        snprintf(start, sizeof(start), "(%s", c->after);
    else
        snprintf(start, sizeof(start), "-");
    snprintf(count, sizeof(count), "%d", c->limit + 1);
    argv[0] = set;
    argv[1] = roster;
    argv[2] = start;
    argv[3] = count;
    if (ledger_run(c->call.core->store, LEDGER_ROSTER, on_report_roster, c,
                   2, 4, argv, NULL) != LEDGER_OK) {
        http_call_error(&c->call, 503, "redis unavailable");
        report_free(c);
    }
}

/* The roster script pages the organisation's ids; the rows are read
 * once the page is known. */
void http_reports_hours(struct core *core, struct evhttp_request *req,
                        const struct auth_claims *claims, const char *unused)
{
    struct report_call *c = calloc(1, sizeof(*c));
    const char *why = NULL;
    struct evkeyvalq q;

    (void)unused;
    if (c == NULL) {
        http_reply_error(req, 500, "out of memory");
        return;
    }
    if (parse_query(req, &q) != 0)
        why = "bad query string";
    if (why == NULL)
        why = report_parse(c, &q);
    evhttp_clear_headers(&q);
    if (why != NULL) {
        free(c);
        http_reply_error(req, 400, why);
        return;
    }
    c->csv = wants_csv(req);
    http_call_start(&c->call, core, req, claims);
    report_start(c);
}

/* ---------------------------------------------------------------------
 * GET /v1/learners/{id}/events?from=<stream id>&count=N
 * ------------------------------------------------------------------ */

struct events_call {
    struct http_call call;
    char learner[HTTP_ID_MAX + 1];
    int count;
};

static void on_events(struct store *st, redisReply *r, void *arg)
{
    struct events_call *e = arg;
    json_t *events, *next = json_null();
    size_t n;

    (void)st;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        http_call_error(&e->call, 503, "redis unavailable");
        free(e);
        return;
    }
    events = json_array();
    n = r->elements < (size_t)e->count ? r->elements : (size_t)e->count;
    for (size_t i = 0; i < n; i++) {
        if (http_event_well_formed(r->element[i]))
            json_array_append_new(events, http_event_json(r->element[i]));
    }
    /* One entry more than asked was read: it says a next page exists. */
    if (r->elements > n && http_event_well_formed(r->element[n - 1])) {
        json_decref(next);
        next = json_string(r->element[n - 1]->element[0]->str);
    }
    http_call_reply(&e->call, 200,
                    json_pack("{ss so so}", "learner_id", e->learner,
                              "events", events, "next", next));
    free(e);
}

/* 1 for "ms" or "ms-seq", decimal. */
static int stream_id_valid(const char *s)
{
    size_t a = strspn(s, "0123456789");

    if (a == 0 || a > 20 || strlen(s) > STREAM_ID_MAX)
        return 0;
    if (s[a] == '\0')
        return 1;
    return s[a] == '-' && strspn(s + a + 1, "0123456789") > 0 &&
           strspn(s + a + 1, "0123456789") == strlen(s + a + 1);
}

void http_learner_events(struct core *core, struct evhttp_request *req,
                         const struct auth_claims *claims, const char *id)
{
    char key[REPORT_KEYLEN], start[STREAM_ID_MAX + 2], count[16];
    struct events_call *e = calloc(1, sizeof(*e));
    const char *from, *why = NULL, *argv[6];
    struct evkeyvalq q;

    if (e == NULL) {
        http_reply_error(req, 500, "out of memory");
        return;
    }
    snprintf(start, sizeof(start), "-");
    if (parse_query(req, &q) != 0)
        why = "bad query string";
    else if (number_param(&q, "count", 1, EVENTS_COUNT_MAX,
                          EVENTS_COUNT_DEFAULT, &e->count) != 0)
        why = "count must be 1..1000";
    else if ((from = http_query_get(&q, "from")) != NULL &&
             !stream_id_valid(from))
        why = "from must be an event id";
    else if (from != NULL)
        snprintf(start, sizeof(start), "(%s", from);
    evhttp_clear_headers(&q);
    if (why != NULL) {
        free(e);
        http_reply_error(req, 400, why);
        return;
    }

    snprintf(e->learner, sizeof(e->learner), "%s", id);
    ledger_key(key, sizeof(key), id, "stream");
    snprintf(count, sizeof(count), "%d", e->count + 1);
    argv[0] = "XRANGE";
    argv[1] = key;
    argv[2] = start;
    argv[3] = "+";
    argv[4] = "COUNT";
    argv[5] = count;
    if (store_command_argv(core->store, on_events, e, 6, argv, NULL) !=
        STORE_OK) {
        free(e);
        http_reply_error(req, 503, "redis unavailable");
        return;
    }
    http_call_start(&e->call, core, req, claims);
}

/* ---------------------------------------------------------------------
 * DELETE /v1/learners/{id}
 * ------------------------------------------------------------------ */

struct erase_call {
    struct http_call call;
    char learner[HTTP_ID_MAX + 1];
};

/* The JPEGs are gone already; their global index entries (other
 * slots) go now. One lost here only points at nothing: a 404. */
static void erase_index(struct erase_call *e, const redisReply *r)
{
    for (size_t i = 5; i < r->elements; i++) {
        const redisReply *eid = r->element[i];

        if (eid->type == REDIS_REPLY_STRING && eid->len == 32)
            store_command(e->call.core->store, NULL, NULL,
                          "DEL pd:evidx:%s", eid->str);
    }
}

static void on_erased(struct store *st, redisReply *r, void *arg)
{
    struct erase_call *e = arg;
    long long n[5];

    (void)st;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 5) {
        if (r != NULL)
            log_warning("msg=\"erasure not written\" learner=%s error=\"%s\"",
                        e->learner, r->type == REDIS_REPLY_ERROR
                                        ? r->str : "bad reply");
        http_call_error(&e->call, r == NULL ? 503 : 500,
                        r == NULL ? "redis unavailable"
                                  : "erasure not written");
        free(e);
        return;
    }
    for (int i = 0; i < 5; i++)
        n[i] = http_reply_ll(r->element[i], 0);
    erase_index(e, r);
    session_erased(e->call.core, e->learner);
    log_notice("msg=\"learner's biometric data erased\" learner=%s "
               "enrolment=%lld signatures=%lld evidence=%lld "
               "enrolment_entries=%lld by=%s", e->learner, n[0], n[1], n[2],
               n[3], e->call.claims.sub);
    http_call_reply(
        &e->call, 200,
        json_pack("{ss sb s{sb sb sI sI} sb}", "learner_id", e->learner,
                  "erased", 1, "deleted", "enrolment", n[0] != 0,
                  "signatures", n[1] != 0, "evidence_images",
                  (json_int_t)n[2], "enrolment_entries", (json_int_t)n[3],
                  "recorded", n[4] != 0));
    free(e);
}

/* The script deletes and records in one step; what it cannot reach (the
 * global evidence index, the live session and the caches in memory)
 * follows its reply. */
void http_learner_erase(struct core *core, struct evhttp_request *req,
                        const struct auth_claims *claims, const char *id)
{
    char enrol[REPORT_KEYLEN], sigs[REPORT_KEYLEN], evidence[REPORT_KEYLEN];
    char stream[REPORT_KEYLEN], profile[REPORT_KEYLEN], now[24];
    char maxlen[24];
    struct erase_call *e = calloc(1, sizeof(*e));
    const char *argv[9];

    if (e == NULL) {
        http_reply_error(req, 500, "out of memory");
        return;
    }
    snprintf(e->learner, sizeof(e->learner), "%s", id);
    ledger_key(enrol, sizeof(enrol), id, "enrol");
    ledger_key(sigs, sizeof(sigs), id, "sigs");
    ledger_key(evidence, sizeof(evidence), id, "evidence");
    ledger_key(stream, sizeof(stream), id, "stream");
    ledger_key(profile, sizeof(profile), id, "profile");
    snprintf(now, sizeof(now), "%lld", (long long)core_now_ms());
    snprintf(maxlen, sizeof(maxlen), "%lld",
             (long long)core->cfg.events_maxlen);
    argv[0] = enrol;
    argv[1] = sigs;
    argv[2] = evidence;
    argv[3] = stream;
    argv[4] = profile;
    argv[5] = LEDGER_EVENTS_KEY;
    argv[6] = id;
    argv[7] = now;
    argv[8] = maxlen;
    if (ledger_run(core->store, LEDGER_ERASE, on_erased, e, 6, 9, argv,
                   NULL) != LEDGER_OK) {
        free(e);
        http_reply_error(req, 503, "redis unavailable");
        return;
    }
    http_call_start(&e->call, core, req, claims);
}
