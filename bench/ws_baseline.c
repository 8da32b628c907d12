/* proctord_ws_baseline: the transport limit that bench/load.c measures the
 * daemon against. A bare libwebsockets server on the same lws, one
 * context, its default poll() loop, one service thread: it decodes every
 * frame with protobuf-c and answers a Hello with a Welcome and anything
 * else with a small Status carrying its seq, one frame per writeable
 * callback as the daemon writes. Left out: tokens, sessions, the queues
 * between threads, policy, Redis. */
#include <libwebsockets.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <ev.h>
#include <uv.h>

#include "proctor.pb-c.h"

#define BASE_RX_CHUNK 4096
#define BASE_MAX_MESSAGE (4 * 1024 * 1024)

/* Per connection, zeroed by lws. Replies go out in seq order, one per
 * message, so two numbers say which are owed. */
struct base_conn {
    uint64_t hello_seq;
    uint64_t reply_from;        /* first seq still owed a reply */
    uint64_t last_seq;          /* last seq received */
    unsigned char *rx;          /* owned: a message being reassembled */
    size_t rx_len;
};

static volatile sig_atomic_t stopping;
static uint64_t messages_in, messages_out, bad_messages, connections;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static void on_message(struct lws *wsi, struct base_conn *c,
                       const unsigned char *p, size_t len)
{
    Proctor__V1__ClientMessage *m;

    m = proctor__v1__client_message__unpack(NULL, len, p);
    if (m == NULL) {
        bad_messages++;
        return;
    }
    messages_in++;
    if (m->body_case == PROCTOR__V1__CLIENT_MESSAGE__BODY_HELLO)
        c->hello_seq = m->seq;
    if (c->reply_from == 0 || c->reply_from > c->last_seq)
        c->reply_from = m->seq;
    c->last_seq = m->seq;
    proctor__v1__client_message__free_unpacked(m, NULL);
    lws_callback_on_writable(wsi);
}

static int on_receive(struct lws *wsi, struct base_conn *c,
                      const unsigned char *in, size_t len)
{
    int final = lws_is_final_fragment(wsi) &&
                lws_remaining_packet_payload(wsi) == 0;
    unsigned char *grown;

    if (final && c->rx == NULL) {
        on_message(wsi, c, in, len);
        return 0;
    }
    if (c->rx_len + len > BASE_MAX_MESSAGE)
        return -1;
    grown = realloc(c->rx, c->rx_len + len);
    if (grown == NULL)
        return -1;
    c->rx = grown;
    memcpy(c->rx + c->rx_len, in, len);
    c->rx_len += len;
    if (final) {
        on_message(wsi, c, c->rx, c->rx_len);
        free(c->rx);
        c->rx = NULL;
        c->rx_len = 0;
    }
    return 0;
}

static int on_writeable(struct lws *wsi, struct base_conn *c)
{
    Proctor__V1__ServerMessage sm = PROCTOR__V1__SERVER_MESSAGE__INIT;
    Proctor__V1__Welcome wel = PROCTOR__V1__WELCOME__INIT;
    Proctor__V1__Status st = PROCTOR__V1__STATUS__INIT;
    unsigned char buf[LWS_PRE + 128];
    size_t len;

    if (c->reply_from == 0 || c->reply_from > c->last_seq)
        return 0;
    sm.ack_seq = c->reply_from;
    if (c->reply_from == c->hello_seq) {
        wel.session_id = "00000000000000000000000000000000";
        wel.heartbeat_interval_ms = 10000;
        sm.body_case = PROCTOR__V1__SERVER_MESSAGE__BODY_WELCOME;
        sm.welcome = &wel;
    } else {
        st.state = PROCTOR__V1__STATE__UNVERIFIED;
        st.reason = "not_verified";
        sm.body_case = PROCTOR__V1__SERVER_MESSAGE__BODY_STATUS;
        sm.status = &st;
    }
    len = proctor__v1__server_message__pack(&sm, buf + LWS_PRE);
    if (lws_write(wsi, buf + LWS_PRE, len, LWS_WRITE_BINARY) < (int)len)
        return -1;
    messages_out++;
    c->reply_from++;
    if (c->reply_from <= c->last_seq)
        lws_callback_on_writable(wsi);
    return 0;
}

static int on_lws(struct lws *wsi, enum lws_callback_reasons reason,
                  void *user, void *in, size_t len)
{
    struct base_conn *c = user;

    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED:
        connections++;
        return 0;
    case LWS_CALLBACK_RECEIVE:
        return on_receive(wsi, c, in, len);
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return on_writeable(wsi, c);
    case LWS_CALLBACK_CLOSED:
        free(c->rx);
        c->rx = NULL;
        return 0;
    default:
        return 0;
    }
}

/* The loop this process runs; lws joins it as a foreign loop. */
enum base_evlib { BASE_POLL, BASE_UV, BASE_EV };

static uv_loop_t uv_loop;
static uv_timer_t uv_stop_timer;
static struct ev_loop *ev_loop_p;
static ev_timer ev_stop_timer;

/* A signal only sets a flag; these notice it within 100 ms. */
static void on_uv_stop_timer(uv_timer_t *t)
{
    if (stopping)
        uv_stop(t->loop);
}

static void on_ev_stop_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    if (stopping)
        ev_break(loop, EVBREAK_ALL);
}

static void run_loop(struct lws_context *ctx, enum base_evlib evlib)
{
    if (evlib == BASE_UV) {
        uv_timer_init(&uv_loop, &uv_stop_timer);
        uv_timer_start(&uv_stop_timer, on_uv_stop_timer, 100, 100);
        uv_run(&uv_loop, UV_RUN_DEFAULT);
    } else if (evlib == BASE_EV) {
        ev_timer_init(&ev_stop_timer, on_ev_stop_timer, 0.1, 0.1);
        ev_timer_start(ev_loop_p, &ev_stop_timer);
        ev_run(ev_loop_p, 0);
    } else {
        while (!stopping && lws_service(ctx, 0) >= 0)
            ;
    }
}

/* lws closes its libuv handles asynchronously: the loop has to turn
 * until they are all gone before it can be closed. */
static void close_loop(enum base_evlib evlib)
{
    if (evlib == BASE_UV) {
        uv_close((uv_handle_t *)&uv_stop_timer, NULL);
        while (uv_run(&uv_loop, UV_RUN_NOWAIT))
            ;
        uv_loop_close(&uv_loop);
    } else if (evlib == BASE_EV) {
        ev_timer_stop(ev_loop_p, &ev_stop_timer);
        ev_loop_destroy(ev_loop_p);
    }
}

static int parse_evlib(const char *s, enum base_evlib *out)
{
    if (strcmp(s, "poll") == 0)
        *out = BASE_POLL;
    else if (strcmp(s, "uv") == 0)
        *out = BASE_UV;
    else if (strcmp(s, "ev") == 0)
        *out = BASE_EV;
    else
        return -1;
    return 0;
}

static const struct lws_protocols protocols[] = {
    {"proctor.v1", on_lws, sizeof(struct base_conn), BASE_RX_CHUNK, 0, NULL,
     0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

int main(int argc, char **argv)
{
    struct lws_context_creation_info info;
    struct lws_context *ctx;
    struct rlimit rl;
    int port = 8775, max_conn = 50000;
    enum base_evlib evlib = BASE_POLL;
    void *foreign[1] = {NULL};

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            port = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--max-connections") == 0 &&
                   i + 1 < argc) {
            max_conn = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--evlib") == 0 && i + 1 < argc &&
                   parse_evlib(argv[i + 1], &evlib) == 0) {
            i++;
        } else {
            fprintf(stderr, "usage: proctord_ws_baseline [--port N] "
                    "[--max-connections N] [--evlib poll|uv|ev]\n");
            return 2;
        }
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);

    lws_set_log_level(LLL_ERR | LLL_WARN, NULL);
    memset(&info, 0, sizeof(info));
    info.port = port;
    info.iface = "127.0.0.1";
    info.protocols = protocols;
    info.gid = (gid_t)-1;
    info.uid = (uid_t)-1;
    info.count_threads = 1;
    info.fd_limit_per_thread = (unsigned)max_conn + 64;
    info.timeout_secs = 10;
    if (evlib == BASE_UV) {
        uv_loop_init(&uv_loop);
        foreign[0] = &uv_loop;
        info.options |= LWS_SERVER_OPTION_LIBUV;
    } else if (evlib == BASE_EV) {
        ev_loop_p = ev_loop_new(EVFLAG_AUTO);
        foreign[0] = ev_loop_p;
        info.options |= LWS_SERVER_OPTION_LIBEV;
    }
    info.foreign_loops = evlib == BASE_POLL ? NULL : foreign;
    ctx = lws_create_context(&info);
    if (ctx == NULL) {
        fprintf(stderr, "proctord_ws_baseline: cannot create the context\n");
        return 1;
    }
    printf("listening on 127.0.0.1:%d\n", port);
    fflush(stdout);
    run_loop(ctx, evlib);
    lws_context_destroy(ctx);
    close_loop(evlib);
    printf("connections %llu messages in %llu out %llu bad %llu\n",
           (unsigned long long)connections, (unsigned long long)messages_in,
           (unsigned long long)messages_out,
           (unsigned long long)bad_messages);
    return 0;
}
