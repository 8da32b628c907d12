/* The HTTP API. Every answer is JSON (errors too), except /metrics in
 * Prometheus text. /healthz pings Redis with a deadline of its own so a
 * hung Redis reads as down rather than hanging the probe. */
#include "http.h"

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http-internal.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "session.h"
#include "store.h"
#include "vision_pool.h"

#define HEALTH_TIMEOUT_MS 1000

struct http {
    struct core *core;
    struct evhttp *evh;
};

/* One /healthz request waiting on its PING. */
struct health_probe {
    struct evhttp_request *req;
    struct event *timer;
    struct core *core;
};

/* ---------------------------------------------------------------------
 * Replies
 * ------------------------------------------------------------------ */

/* evhttp writes whatever body it is given, even to a HEAD, and then
 * leaves the length out: a HEAD gets the length of what a GET would get,
 * and no body, so a kept-alive connection stays in step. */
static void send_body(struct evhttp_request *req, int code,
                      struct evbuffer *body)
{
    char length[24];

    if (evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        evhttp_send_reply(req, code, NULL, body);
        return;
    }
    snprintf(length, sizeof(length), "%zu", evbuffer_get_length(body));
    evhttp_add_header(evhttp_request_get_output_headers(req),
                      "Content-Length", length);
    evhttp_send_reply(req, code, NULL, NULL);
}

void http_reply_json(struct evhttp_request *req, int code, json_t *body)
{
    struct evbuffer *out = evbuffer_new();
    /* Fifteen digits print 1.99 as 1.99, not 1.9899999999999999. */
    char *text = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15));

    evhttp_add_header(evhttp_request_get_output_headers(req),
                      "Content-Type", "application/json");
    if (text != NULL)
        evbuffer_add(out, text, strlen(text));
    send_body(req, code, out);
    evbuffer_free(out);
    free(text);
    json_decref(body);
}

/* Every error is JSON but one: a body past server.http_max_body is
 * refused as soon as its Content-Length (or the chunks read so far) says
 * so, before it is read, and that 413 is evhttp's own, with its HTML
 * body. libevent 2.1 answers it inside evhttp_handle_request() with
 * evhttp_send_error() and has no error callback (evhttp_set_errorcb came
 * in 2.2) nor a hook on an incoming request's headers
 * (evhttp_set_newreqcb), so a JSON answer would mean reading the whole
 * body first. Early refusal matters more; the status code is right. */
void http_reply_error(struct evhttp_request *req, int code, const char *why)
{
    http_reply_json(req, code, json_pack("{ss}", "error", why));
}

/* Checks the bearer token and its scope. Returns HTTP_ALLOWED with claims
 * filled, or replies 401/403 itself and returns HTTP_DENIED. want may be
 * AUTH_SCOPE_NONE to accept both platform and supervisor. */
int http_require(struct core *core, struct evhttp_request *req,
                 enum auth_scope want, enum auth_scope also,
                 struct auth_claims *claims)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req),
                                       "Authorization");
    const char *why = NULL;

    if (h == NULL || strncmp(h, "Bearer ", 7) != 0) {
        http_reply_error(req, 401, "missing bearer token");
        return HTTP_DENIED;
    }
    if (auth_verify_http(&core->keys, h + 7, core_now_ms() / 1000, claims,
                         &why) != AUTH_OK) {
        /* A valid learner token is the wrong scope, not a bad token. */
        if (why != NULL && strcmp(why, "no scope") == 0) {
            http_reply_error(req, 403, "token has no HTTP scope");
            return HTTP_DENIED;
        }
        http_reply_error(req, 401, why != NULL ? why : "bad token");
        return HTTP_DENIED;
    }
    if (want != AUTH_SCOPE_NONE && claims->scope != want &&
        claims->scope != also) {
        http_reply_error(req, 403, "token scope not allowed here");
        return HTTP_DENIED;
    }
    return HTTP_ALLOWED;
}

/* ---------------------------------------------------------------------
 * /healthz
 * ------------------------------------------------------------------ */

/* A client hang-up detaches the request and leaves it to us (the answer
 * then goes nowhere and frees it); when the server drops the connection
 * itself, evhttp frees the request right after this, so it is forgotten. */
static void on_health_conn_closed(struct evhttp_connection *conn, void *arg)
{
    struct health_probe *p = arg;

    (void)conn;
    if (p->req != NULL && evhttp_request_get_connection(p->req) != NULL)
        p->req = NULL;
}

static void health_answer(struct health_probe *p, int up)
{
    json_t *body;

    if (p->req == NULL)
        return;
    if (evhttp_request_get_connection(p->req) != NULL)
        evhttp_connection_set_closecb(evhttp_request_get_connection(p->req),
                                      NULL, NULL);
    body = json_pack("{ss ss si}", "status", up ? "ok" : "unavailable",
                     "redis", up ? "up" : "down", "sessions",
                     (json_int_t)session_count(p->core->sessions));
    http_reply_json(p->req, up ? 200 : 503, body);
    p->req = NULL;
}

static void on_health_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    health_answer(arg, 0);
}

static void on_health_ping(struct store *st, redisReply *r, void *arg)
{
    struct health_probe *p = arg;

    (void)st;
    health_answer(p, r != NULL && r->type == REDIS_REPLY_STATUS);
    event_free(p->timer);
    free(p);
}

static void on_healthz(struct core *core, struct evhttp_request *req)
{
    struct timeval tv = {0, HEALTH_TIMEOUT_MS * 1000};
    struct health_probe *p = calloc(1, sizeof(*p));

    if (p == NULL) {
        http_reply_error(req, 500, "out of memory");
        return;
    }
    p->req = req;
    p->core = core;
    p->timer = evtimer_new(core->base, on_health_timeout, p);
    if (store_command(core->store, on_health_ping, p, "PING") != STORE_OK) {
        health_answer(p, 0);
        event_free(p->timer);
        free(p);
        return;
    }
    evhttp_connection_set_closecb(evhttp_request_get_connection(req),
                                  on_health_conn_closed, p);
    evtimer_add(p->timer, &tv);
}

/* ---------------------------------------------------------------------
 * /metrics
 * ------------------------------------------------------------------ */

static void metric(struct evbuffer *b, const char *name, const char *type,
                   const char *help, uint64_t v)
{
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name,
                        help, name, type, name, (unsigned long long)v);
}

static void on_metrics(struct core *core, struct evhttp_request *req)
{
    static const char *const kinds[METRICS_KINDS] = {"hello", "heartbeat",
                                                     "snapshot", "bye"};
    struct evbuffer *b = evbuffer_new();

    metric(b, "proctord_connections_open", "gauge",
           "WebSocket connections open", metrics_get(connections_open));
    metric(b, "proctord_connections_total", "counter",
           "WebSocket connections accepted", metrics_get(connections_total));
    metric(b, "proctord_sessions_live", "gauge", "Live learner sessions",
           session_count(core->sessions));
    evbuffer_add_printf(b, "# HELP proctord_messages_in_total Client "
                        "messages by kind\n# TYPE proctord_messages_in_total "
                        "counter\n");
    for (int i = 0; i < METRICS_KINDS; i++)
        evbuffer_add_printf(b, "proctord_messages_in_total{kind=\"%s\"} "
                            "%llu\n", kinds[i],
                            (unsigned long long)metrics_get(messages_in[i]));
    metric(b, "proctord_messages_out_total", "counter",
           "Server messages written", metrics_get(messages_out));
    metric(b, "proctord_messages_duplicate_total", "counter",
           "Client messages dropped as repeated seq",
           metrics_get(messages_duplicate));
    evbuffer_add_printf(b, "# HELP proctord_closes_total Connections closed "
                        "by the server, by close code\n# TYPE "
                        "proctord_closes_total counter\n");
    for (int i = 0; i < METRICS_CLOSES; i++)
        evbuffer_add_printf(b, "proctord_closes_total{code=\"%s\"} %llu\n",
                            metrics_close_label(i),
                            (unsigned long long)metrics_get(closes[i]));
    metric(b, "proctord_queue_depth_inbox", "gauge",
           "Events waiting for the core thread", queue_depth(&core->inbox));
    metric(b, "proctord_queue_depth_outbound", "gauge",
           "Frames waiting for the network threads",
           net_outbound_depth(core->net));
    metric(b, "proctord_queue_depth_vision", "gauge",
           "Snapshots queued or being analysed",
           (uint64_t)vision_pool_busy(core->vision));
    metric(b, "proctord_vision_refused_total", "counter",
           "Snapshots refused by a full vision queue (challenge re-issued)",
           metrics_get(vision_busy));
    metric(b, "proctord_queue_refused_total", "counter",
           "Items refused by a full queue", metrics_get(queue_refused));
    metric(b, "proctord_redis_up", "gauge", "1 when Redis is connected",
           metrics_get(redis_up));
    metric(b, "proctord_redis_commands_total", "counter",
           "Redis round trips sent", metrics_get(redis_commands));
    metric(b, "proctord_redis_errors_total", "counter",
           "Redis failures: errors, refused connects, lost replies",
           metrics_get(redis_errors));
    metric(b, "proctord_redis_reconnects_total", "counter",
           "Redis connections lost", metrics_get(redis_reconnects));
    metric(b, "proctord_redis_redirects_total", "counter",
           "Redis Cluster redirections (MOVED, ASK, TRYAGAIN, CLUSTERDOWN)",
           metrics_get(redis_redirects));
    metric(b, "proctord_redis_retries_total", "counter",
           "Redis Cluster commands resent after a delay",
           metrics_get(redis_retries));
    metric(b, "proctord_takeovers_remote_total", "counter",
           "Sessions closed because a login on another daemon took over",
           metrics_get(takeovers_remote));
    metric(b, "proctord_redis_latency_seconds_sum", "counter",
           "Summed Redis reply latency, microseconds",
           metrics_get(redis_latency_us_sum));
    metric(b, "proctord_redis_latency_seconds_count", "counter",
           "Redis replies timed", metrics_get(redis_latency_count));
    metric(b, "proctord_http_requests_total", "counter",
           "HTTP requests", metrics_get(http_requests));
    metric(b, "proctord_snapshots_analyzed_total", "counter",
           "Snapshots through face analysis", metrics_get(snapshots_analyzed));
    metric(b, "proctord_credited_seconds_total", "counter",
           "Study time committed", metrics_get(credited_ms) / 1000);
    metric(b, "proctord_flags_opened_total", "counter", "Flags opened",
           metrics_get(flags_opened));
    metric(b, "proctord_commit_buffer_depth", "gauge",
           "Ledger writes waiting for Redis in the commit buffer",
           metrics_get(commit_buffer_depth));
    metric(b, "proctord_commit_buffer_bytes", "gauge",
           "Bytes held by the commit buffer",
           metrics_get(commit_buffer_bytes));
    metric(b, "proctord_commit_buffer_buffered_total", "counter",
           "Ledger writes put in the commit buffer",
           metrics_get(commit_buffer_buffered));
    metric(b, "proctord_commit_buffer_applied_total", "counter",
           "Buffered ledger writes Redis has applied",
           metrics_get(commit_buffer_applied));
    metric(b, "proctord_commit_buffer_dropped_total", "counter",
           "Ledger writes given up (buffer full, or refused by Redis)",
           metrics_get(commit_buffer_dropped));

    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4");
    send_body(req, 200, b);
    evbuffer_free(b);
}

/* ---------------------------------------------------------------------
 * Routing
 * ------------------------------------------------------------------ */

static void on_request(struct evhttp_request *req, void *arg)
{
    struct http *h = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

    metrics_add(http_requests, 1);
    if (path == NULL) {
        http_reply_error(req, 400, "bad request line");
        return;
    }
    if (strcmp(path, "/healthz") == 0 &&
        (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD)) {
        on_healthz(h->core, req);
        return;
    }
    if (strcmp(path, "/metrics") == 0 &&
        (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD)) {
        on_metrics(h->core, req);
        return;
    }
    if (strncmp(path, "/console", 8) == 0 &&
        http_console_route(h->core, req, path) == HTTP_HANDLED)
        return;
    if (http_api_route(h->core, req, path) == HTTP_HANDLED)
        return;
    http_reply_error(req, 404, "no such resource");
}

/* ---------------------------------------------------------------------
 * TLS
 *
 * With server.tls_cert set, every API connection starts as a TLS
 * handshake in a bufferevent_openssl. Those handshakes run here, on the
 * core thread, because evhttp lives on its base: the API serves a few
 * platforms and supervisors on keep-alive connections, so they are rare.
 * The many learner handshakes run on the network threads (net.c), never
 * here.
 * ------------------------------------------------------------------ */

static struct bufferevent *on_new_tls_conn(struct event_base *base,
                                           void *arg)
{
    struct http *h = arg;
    SSL *ssl = SSL_new(h->core->tls);
    struct bufferevent *bev;

    /* Limit: when SSL_new fails (out of memory), returning NULL makes
     * libevent 2.1 fall back to a plain bufferevent, so that one
     * connection is served without TLS; evhttp has no way to refuse it
     * here. The warning below makes it visible. */
    if (ssl == NULL) {
        log_warning("msg=\"https connection without TLS state\" "
                    "error=\"SSL_new failed\"");
        return NULL;
    }
    bev = bufferevent_openssl_socket_new(base, -1, ssl,
                                         BUFFEREVENT_SSL_ACCEPTING,
                                         BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        SSL_free(ssl);
        return NULL;
    }
    /* Many HTTP clients hang up without close_notify once they have the
     * whole answer; that is not an error worth a log line. */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

struct http *http_new(struct core *core, char *err, size_t errlen)
{
    const char *listen = core->cfg.http_listen;
    const char *colon = strrchr(listen, ':');
    struct http *h = calloc(1, sizeof(*h));
    char host[CONFIG_ADDRLEN];
    struct timeval tv;
    long port;

    if (h == NULL || colon == NULL || colon == listen ||
        (size_t)(colon - listen) >= sizeof(host)) {
        snprintf(err, errlen, "server.http_listen: bad address \"%s\"",
                 listen);
        free(h);
        return NULL;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    port = strtol(colon + 1, NULL, 10);

    h->core = core;
    h->evh = evhttp_new(core->base);
    if (h->evh == NULL ||
        evhttp_bind_socket(h->evh, host, (uint16_t)port) != 0) {
        snprintf(err, errlen, "server.http_listen: cannot listen on \"%s\"",
                 listen);
        http_free(h);
        return NULL;
    }
    tv.tv_sec = core->cfg.http_timeout_ms / 1000;
    tv.tv_usec = (core->cfg.http_timeout_ms % 1000) * 1000;
    evhttp_set_timeout_tv(h->evh, &tv);
    evhttp_set_max_body_size(h->evh, (ev_ssize_t)core->cfg.http_max_body);
    evhttp_set_max_headers_size(h->evh, 16384);
    evhttp_set_allowed_methods(h->evh, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD |
                                           EVHTTP_REQ_PUT | EVHTTP_REQ_POST |
                                           EVHTTP_REQ_DELETE);
    evhttp_set_gencb(h->evh, on_request, h);
    if (core->tls != NULL)
        evhttp_set_bevcb(h->evh, on_new_tls_conn, h);
    return h;
}

void http_free(struct http *h)
{
    if (h == NULL)
        return;
    if (h->evh != NULL)
        evhttp_free(h->evh);
    free(h);
}
