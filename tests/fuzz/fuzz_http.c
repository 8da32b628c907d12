/* libFuzzer target: the HTTP API as a client reaches it. The daemon's own
 * server (http_new(): evhttp with its limits, the router, the token and
 * id checks, the query and JSON body parsers of every route) listens on a
 * loopback port of the harness's event base; each input becomes one
 * request on a fresh connection, and the base runs until the answer is
 * back.
 *
 * The input: byte 0 picks the method, byte 1 the Authorization header
 * (none, a platform, a supervisor or a learner token signed with the
 * harness's secret, an expired platform token, or the raw text of the
 * next line), then the request target up to '\n', the Content-Type up to
 * '\n', and the body.
 *
 * Without Redis and without the vision pool: the store points at a closed
 * port, so every route answers from its checks or with its "store down"
 * reply, and an enrolment is refused as busy. What Redis replies would
 * feed (flag, report and session bodies built from HGETALL and XRANGE) is
 * not reached here. /healthz and /metrics read nothing from the request
 * and need the session table and the network threads, so inputs for them
 * are skipped. */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"
#include "core.h"
#include "http.h"
#include "log.h"
#include "store.h"
#include "fuzz_token.h"

#define FUZZ_NOW_MS 1760000000000LL
#define LINE_MAX_FUZZ 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* main.c's clock: a fixed instant, so that the harness's tokens stay
 * valid and a crash replays the same way. */
int64_t core_now_ms(void)
{
    return FUZZ_NOW_MS;
}

static struct core core;
static struct http *http;
static int port;
static char tokens[5][512];

static void sign(char *out, const char *claims, long long exp)
{
    char pay[384];

    snprintf(pay, sizeof(pay), "{%s,\"exp\":%lld,\"iat\":%lld}", claims, exp,
             FUZZ_NOW_MS / 1000);
    fuzz_sign(out, pay);
}

static int free_port(void)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), p;

    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) != 0)
        abort();
    p = ntohs(a.sin_port);
    close(fd);
    return p;
}

static void setup(void)
{
    long long exp = FUZZ_NOW_MS / 1000 + 3600;
    char err[256];

    /* Warnings only: the store's reconnect attempts would fill the log. */
    log_verbosity = LOG_WARNING;
    config_defaults(&core.cfg);
    port = free_port();
    snprintf(core.cfg.http_listen, sizeof(core.cfg.http_listen),
             "127.0.0.1:%d", port);
    snprintf(core.cfg.redis_address, sizeof(core.cfg.redis_address),
             "127.0.0.1:1");
    snprintf(core.cfg.jwt_secret, sizeof(core.cfg.jwt_secret), "%s",
             FUZZ_SECRET);
    /* The body limit as shipped would let one input take megabytes. */
    core.cfg.http_max_body = 65536;
    auth_keys_init(&core.keys, FUZZ_SECRET, 30);
    core.base = event_base_new();
    core.store = store_new(core.base, &core.cfg, err, sizeof(err));
    http = http_new(&core, err, sizeof(err));
    if (core.base == NULL || core.store == NULL || http == NULL) {
        fprintf(stderr, "fuzz_http: %s\n", err);
        abort();
    }
    sign(tokens[1], "\"sub\":\"platform-1\",\"scope\":\"platform\"", exp);
    sign(tokens[2], "\"sub\":\"supervisor-1\",\"scope\":\"supervisor\","
                    "\"org\":\"org-1\"", exp);
    sign(tokens[3], "\"sub\":\"learner-1\",\"course\":\"course-1\","
                    "\"org\":\"org-1\",\"role\":\"manager\"", exp);
    sign(tokens[4], "\"sub\":\"platform-1\",\"scope\":\"platform\"",
         FUZZ_NOW_MS / 1000 - 3600);
}

/* Up to '\n' (not kept) into a NUL-terminated copy; advances *p. */
static char *take_line(const uint8_t **p, const uint8_t *end)
{
    const uint8_t *nl = memchr(*p, '\n', (size_t)(end - *p));
    size_t n = (size_t)((nl != NULL ? nl : end) - *p);
    char *s;

    if (n > LINE_MAX_FUZZ)
        n = LINE_MAX_FUZZ;
    s = malloc(n + 1);
    if (s == NULL)
        abort();
    memcpy(s, *p, n);
    s[n] = '\0';
    *p = nl != NULL ? nl + 1 : *p + n;
    return s;
}

/* A request target whose path is one of the two skipped routes. */
static int skipped(const char *target)
{
    struct evhttp_uri *u = evhttp_uri_parse(target);
    const char *path = u != NULL ? evhttp_uri_get_path(u) : NULL;
    int skip = path != NULL && (strcmp(path, "/healthz") == 0 ||
                                strcmp(path, "/metrics") == 0);

    if (u != NULL)
        evhttp_uri_free(u);
    /* The server reads a target its own way; a "/metrics" anywhere in
     * it is left out rather than risk a request that reaches it. */
    return skip || strstr(target, "/healthz") != NULL ||
           strstr(target, "/metrics") != NULL;
}

/* FUZZ_HTTP_VERBOSE=1 prints each answer's status, to check by hand
 * that the seeds reach the routes they are meant for. */
static void on_reply(struct evhttp_request *req, void *arg)
{
    static int verbose = -1;

    if (verbose < 0)
        verbose = getenv("FUZZ_HTTP_VERBOSE") != NULL;
    if (verbose)
        fprintf(stderr, "fuzz_http: status=%d\n",
                req != NULL ? evhttp_request_get_response_code(req) : -1);
    *(int *)arg = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const enum evhttp_cmd_type methods[] = {
        EVHTTP_REQ_GET, EVHTTP_REQ_PUT, EVHTTP_REQ_POST, EVHTTP_REQ_DELETE,
        EVHTTP_REQ_HEAD, EVHTTP_REQ_PATCH,
    };
    const uint8_t *p = data + 2, *end = data + size;
    struct evhttp_connection *conn;
    struct evhttp_request *req;
    struct evkeyvalq *h;
    char *target, *ctype, *raw = NULL, auth[600];
    /* Not on the stack: a late callback must not write into a frame
     * that is gone. */
    static int done;

    if (http == NULL)
        setup();
    if (size < 2)
        return 0;
    if (data[1] % 6 == 5)
        raw = take_line(&p, end);
    target = take_line(&p, end);
    ctype = take_line(&p, end);
    if (target[0] == '\0' || skipped(target)) {
        free(raw);
        free(target);
        free(ctype);
        return 0;
    }

    conn = evhttp_connection_base_new(core.base, NULL, "127.0.0.1",
                                      (uint16_t)port);
    req = evhttp_request_new(on_reply, &done);
    if (conn == NULL || req == NULL)
        abort();
    evhttp_connection_set_timeout(conn, 5);
    h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", "127.0.0.1");
    if (raw != NULL) {
        evhttp_add_header(h, "Authorization", raw);
    } else if (data[1] % 6 != 0) {
        snprintf(auth, sizeof(auth), "Bearer %s", tokens[data[1] % 6]);
        evhttp_add_header(h, "Authorization", auth);
    }
    if (ctype[0] != '\0')
        evhttp_add_header(h, "Content-Type", ctype);
    evbuffer_add(evhttp_request_get_output_buffer(req), p,
                 (size_t)(end - p));
    done = 0;
    if (evhttp_make_request(conn, req, methods[data[0] % 6], target) == 0) {
        /* Timers of the store's reconnection share the base; the answer
         * comes within a few turns, a hung request within the timeout. */
        while (!done && event_base_loop(core.base, EVLOOP_ONCE) == 0)
            ;
    }
    evhttp_connection_free(conn);
    /* Let the server see the close and free its side. */
    event_base_loop(core.base, EVLOOP_NONBLOCK);
    free(raw);
    free(target);
    free(ctype);
    return 0;
}
