/* libwebsockets service threads. Each thread has its own context; an
 * acceptor thread owns the listening socket and hands every accepted
 * socket to the thread with the fewest connections (Debian's lws 4.1
 * sets no SO_REUSEPORT for several contexts, so they cannot share the
 * port themselves). A connection lives and dies on one thread, so its
 * state needs no lock. The only shared things are the queue into the
 * core and each thread's outbound queue, woken by lws_cancel_service().
 * Under each context runs lws's own poll() loop, or (server.event_lib) a
 * libuv or libev loop of the thread's own, given to lws as a foreign loop:
 * lws's internal libuv loop would take SIGTERM and SIGHUP from the core. */
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <libwebsockets.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "metrics.h"

/* lws reads a large message in pieces of this size; a small value keeps
 * the per-connection buffer small, and heartbeats fit in one piece. */
#define NET_RX_CHUNK 4096
#define NET_OUT_MAX 256
#define NET_OUTQ_CAPACITY 65536
#define NET_POP_BATCH 64
/* The tick wakes every network thread, so it is slow unless something
 * waits on it: a drain to finish, or closes the core queue refused. */
#define NET_TICK_US 100000
#define NET_IDLE_TICK_US 1000000
#define NET_ID_THREAD_SHIFT 56
#define NET_ID_SLOT_SHIFT 32
#define NET_ID_SLOT_MASK 0xffffffu

/* Control items on a thread's outbound queue (conn 0): shut down, or
 * adopt the accepted socket whose descriptor is in len. */
#define NET_DRAIN_CODE -1
#define NET_ADOPT_CODE -2

static void on_tick(lws_sorted_usec_list_t *sul);

struct out_frame {
    struct out_frame *next;
    size_t len;
    int close_code;
    unsigned char buf[];    /* LWS_PRE headroom, then the payload */
};

/* An item of a thread's outbound queue. payload is owned. */
struct net_out {
    uint64_t conn;
    unsigned char *payload;
    size_t len;
    int close_code;
};

/* Per-connection state, allocated (zeroed) by lws for each wsi. */
struct net_conn {
    struct lws *wsi;
    uint64_t id;
    unsigned char *rx;          /* owned: a message being reassembled */
    size_t rx_len;
    struct out_frame *out_head; /* owned list */
    struct out_frame *out_tail;
    unsigned out_count;
    double tokens;
    int64_t tokens_at_us;
    uint64_t last_seq;
    const char *close_reason;
    lws_sorted_usec_list_t hello_sul;
    unsigned hello_done : 1;
    unsigned hello_posted : 1;
    unsigned has_seq : 1;
    unsigned closing : 1;
};

struct net_thread {
    struct net *net;
    int index;
    struct lws_context *ctx;
    pthread_t tid;
    int started;
    struct queue outq;
    struct net_conn **slots;
    uint32_t *gens;
    uint32_t *free_slots;
    uint32_t nfree;
    uint32_t nslots;
    uint64_t *closed_backlog;   /* CLOSED events the core queue refused */
    uint32_t nclosed;
    atomic_int open;
    int draining;
    int64_t drain_deadline_us;
    atomic_int stop;
    lws_sorted_usec_list_t tick_sul;
    uv_loop_t uv_loop;          /* server.event_lib = uv */
    int uv_ready;
    struct ev_loop *ev_loop;    /* server.event_lib = ev */
    void *foreign_loop[1];
};

struct net {
    struct net_options opt;
    int nthreads;
    struct net_thread *threads;
    char iface[64];
    int port;
    int listen_fd;
    pthread_t acceptor;
    int acceptor_started;
    atomic_int stopping;
};

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------------
 * Frames
 * ------------------------------------------------------------------ */

unsigned char *net_frame_new(size_t len)
{
    struct out_frame *f = malloc(sizeof(*f) + LWS_PRE + len);

    if (f == NULL)
        return NULL;
    f->next = NULL;
    f->len = len;
    f->close_code = 0;
    return f->buf + LWS_PRE;
}

static struct out_frame *frame_of(unsigned char *payload)
{
    return (struct out_frame *)(payload - LWS_PRE -
                                offsetof(struct out_frame, buf));
}

void net_frame_free(unsigned char *payload)
{
    if (payload != NULL)
        free(frame_of(payload));
}

/* ---------------------------------------------------------------------
 * Connection slots: an id names a thread, a slot and a generation, so a
 * frame for a connection that is gone (and whose slot was reused) is
 * recognised and dropped.
 * ------------------------------------------------------------------ */

static int slot_take(struct net_thread *t, struct net_conn *c)
{
    uint32_t slot;

    if (t->nfree == 0)
        return NET_ERR;
    slot = t->free_slots[--t->nfree];
    t->slots[slot] = c;
    t->gens[slot]++;
    c->id = ((uint64_t)t->index << NET_ID_THREAD_SHIFT) |
            ((uint64_t)slot << NET_ID_SLOT_SHIFT) | t->gens[slot];
    return NET_OK;
}

static void slot_release(struct net_thread *t, struct net_conn *c)
{
    uint32_t slot = (uint32_t)(c->id >> NET_ID_SLOT_SHIFT) &
                    NET_ID_SLOT_MASK;

    if (slot >= t->nslots || t->slots[slot] != c)
        return;
    t->slots[slot] = NULL;
    t->free_slots[t->nfree++] = slot;
}

static struct net_conn *slot_find(struct net_thread *t, uint64_t id)
{
    uint32_t slot = (uint32_t)(id >> NET_ID_SLOT_SHIFT) & NET_ID_SLOT_MASK;
    struct net_conn *c;

    if (slot >= t->nslots)
        return NULL;
    c = t->slots[slot];
    if (c == NULL || c->id != id)
        return NULL;
    return c;
}

/* ---------------------------------------------------------------------
 * Sending and closing
 * ------------------------------------------------------------------ */

static void conn_enqueue(struct net_conn *c, struct out_frame *f)
{
    if (c->out_tail != NULL)
        c->out_tail->next = f;
    else
        c->out_head = f;
    c->out_tail = f;
    c->out_count++;
    lws_callback_on_writable(c->wsi);
}

static void conn_drop_output(struct net_conn *c)
{
    struct out_frame *f = c->out_head;

    while (f != NULL) {
        struct out_frame *next = f->next;
        free(f);
        f = next;
    }
    c->out_head = c->out_tail = NULL;
    c->out_count = 0;
}

/* Sends an Error message, then closes with code. Later input is ignored.
 * Below 4000 (normal close, shutdown) only the close frame is sent. */
static void conn_close(struct net_conn *c, int code, const char *why)
{
    Proctor__V1__ServerMessage sm = PROCTOR__V1__SERVER_MESSAGE__INIT;
    Proctor__V1__Error er = PROCTOR__V1__ERROR__INIT;
    unsigned char *payload = NULL;
    struct out_frame *f;
    size_t len = 0;

    if (c->closing)
        return;
    c->closing = 1;
    c->close_reason = why;
    log_verbose("msg=\"closing connection\" conn=%llx code=%d reason=\"%s\"",
                (unsigned long long)c->id, code, why);

    /* Our own codes (4xxx) come with an Error saying why; the standard
     * ones (normal close, going away) need none. */
    if (code >= 4000) {
        er.code = (uint32_t)code;
        er.message = (char *)why;
        sm.ack_seq = c->last_seq;
        sm.body_case = PROCTOR__V1__SERVER_MESSAGE__BODY_ERROR;
        sm.error = &er;
        len = proctor__v1__server_message__get_packed_size(&sm);
        payload = net_frame_new(len);
    }
    if (payload == NULL) {
        payload = net_frame_new(0);
        len = 0;
        if (payload == NULL) {
            lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK,
                            LWS_TO_KILL_ASYNC);
            return;
        }
    } else {
        proctor__v1__server_message__pack(&sm, payload);
    }
    f = frame_of(payload);
    f->len = len;
    f->close_code = code;
    conn_enqueue(c, f);
}

static int on_writeable(struct net_conn *c)
{
    struct out_frame *f = c->out_head;
    int code;

    if (f == NULL)
        return 0;
    c->out_head = f->next;
    if (c->out_head == NULL)
        c->out_tail = NULL;
    c->out_count--;

    if (f->len > 0) {
        int n = lws_write(c->wsi, f->buf + LWS_PRE, f->len,
                          LWS_WRITE_BINARY);
        if (n < (int)f->len) {
            free(f);
            return -1;
        }
        metrics_add(messages_out, 1);
    }
    code = f->close_code;
    free(f);

    if (code != 0) {
        const char *why = c->close_reason ? c->close_reason : "";
        metrics_count_close(code);
        lws_close_reason(c->wsi, (enum lws_close_status)code,
                         (unsigned char *)why, strlen(why));
        return -1;
    }
    if (c->out_head != NULL)
        lws_callback_on_writable(c->wsi);
    return 0;
}

/* ---------------------------------------------------------------------
 * Receiving
 * ------------------------------------------------------------------ */

static void post_closed(struct net_thread *t, uint64_t id)
{
    struct net_event ev = {.conn = id, .type = NET_EV_CLOSED};
    int was_empty = 0;

    if (queue_push(t->net->opt.to_core, &ev, &was_empty) != QUEUE_OK) {
        /* Kept, not lost: the core must learn of every close or the
         * session would stay live forever. The backlog has room for
         * every slot of the thread. */
        t->closed_backlog[t->nclosed++] = id;
        metrics_add(queue_refused, 1);
        lws_sul_schedule(t->ctx, 0, &t->tick_sul, on_tick, NET_TICK_US);
        return;
    }
    if (was_empty)
        t->net->opt.wake(t->net->opt.wake_arg);
}

static void flush_closed_backlog(struct net_thread *t)
{
    while (t->nclosed > 0) {
        struct net_event ev = {.type = NET_EV_CLOSED};
        int was_empty = 0;

        ev.conn = t->closed_backlog[t->nclosed - 1];
        if (queue_push(t->net->opt.to_core, &ev, &was_empty) != QUEUE_OK)
            return;
        t->nclosed--;
        if (was_empty)
            t->net->opt.wake(t->net->opt.wake_arg);
    }
}

/* Refills the token bucket and takes one token; 0 when empty. */
static int rate_allow(struct net_thread *t, struct net_conn *c)
{
    int64_t now = lws_now_usecs();
    double burst = t->net->opt.msg_burst;

    c->tokens += (double)(now - c->tokens_at_us) * t->net->opt.msg_rate /
                 1e6;
    if (c->tokens > burst)
        c->tokens = burst;
    c->tokens_at_us = now;
    if (c->tokens < 1.0)
        return 0;
    c->tokens -= 1.0;
    return 1;
}

static int kind_of(Proctor__V1__ClientMessage *m)
{
    switch (m->body_case) {
    case PROCTOR__V1__CLIENT_MESSAGE__BODY_HELLO:
        return METRICS_HELLO;
    case PROCTOR__V1__CLIENT_MESSAGE__BODY_HEARTBEAT:
        return METRICS_HEARTBEAT;
    case PROCTOR__V1__CLIENT_MESSAGE__BODY_SNAPSHOT:
        return METRICS_SNAPSHOT;
    default:
        return METRICS_BYE;
    }
}

/* Checks the Hello gate: the first message must be a Hello with a valid
 * learner token. Returns the event type to post, or -1 after closing. */
static int hello_gate(struct net_thread *t, struct net_conn *c,
                      Proctor__V1__ClientMessage *m,
                      struct auth_claims **claims)
{
    const char *why = NULL;
    int is_hello = m->body_case == PROCTOR__V1__CLIENT_MESSAGE__BODY_HELLO;

    if (c->hello_done) {
        if (is_hello) {
            conn_close(c, 4400, "hello sent twice");
            return -1;
        }
        return NET_EV_MESSAGE;
    }
    if (!is_hello) {
        conn_close(c, 4401, "hello must come first");
        return -1;
    }
    *claims = malloc(sizeof(**claims));
    if (*claims == NULL) {
        conn_close(c, 1011, "out of memory");
        return -1;
    }
    if (auth_verify_learner(t->net->opt.keys, m->hello->token,
                            (int64_t)time(NULL), *claims, &why) != AUTH_OK) {
        free(*claims);
        *claims = NULL;
        conn_close(c, 4401, why);
        return -1;
    }
    c->hello_done = 1;
    lws_sul_cancel(&c->hello_sul);
    return NET_EV_HELLO;
}

static void on_message(struct net_thread *t, struct net_conn *c,
                       const unsigned char *data, size_t len)
{
    Proctor__V1__ClientMessage *m;
    struct auth_claims *claims = NULL;
    struct net_event ev;
    int type, was_empty = 0;

    if (!rate_allow(t, c)) {
        conn_close(c, 4429, "too many messages");
        return;
    }
    m = proctor__v1__client_message__unpack(NULL, len, data);
    if (m == NULL ||
        m->body_case == PROCTOR__V1__CLIENT_MESSAGE__BODY__NOT_SET) {
        if (m != NULL)
            proctor__v1__client_message__free_unpacked(m, NULL);
        conn_close(c, 4400, "malformed message");
        return;
    }
    type = hello_gate(t, c, m, &claims);
    if (type < 0) {
        proctor__v1__client_message__free_unpacked(m, NULL);
        return;
    }

    /* A repeated or older seq was processed already: drop it quietly so
     * that a client retrying a message cannot double anything. */
    if (c->has_seq && m->seq <= c->last_seq) {
        metrics_add(messages_duplicate, 1);
        proctor__v1__client_message__free_unpacked(m, NULL);
        free(claims);
        return;
    }
    c->has_seq = 1;
    c->last_seq = m->seq;
    metrics_add(messages_in[kind_of(m)], 1);

    ev.conn = c->id;
    ev.type = type;
    ev.received_ms = now_ms();
    ev.msg = m;
    ev.claims = claims;
    if (queue_push(t->net->opt.to_core, &ev, &was_empty) != QUEUE_OK) {
        metrics_add(queue_refused, 1);
        proctor__v1__client_message__free_unpacked(m, NULL);
        free(claims);
        conn_close(c, 1013, "server busy");
        return;
    }
    if (type == NET_EV_HELLO)
        c->hello_posted = 1;
    if (was_empty)
        t->net->opt.wake(t->net->opt.wake_arg);
}

static int on_receive(struct net_thread *t, struct net_conn *c,
                      const unsigned char *in, size_t len)
{
    size_t max = t->net->opt.max_frame;
    size_t remaining = lws_remaining_packet_payload(c->wsi);
    int final = lws_is_final_fragment(c->wsi) && remaining == 0;
    unsigned char *grown;

    if (c->closing)
        return 0;
    if (!lws_frame_is_binary(c->wsi)) {
        conn_close(c, 4400, "binary frames only");
        return 0;
    }

    /* Refuse as soon as the announced size passes the limit, before
     * buffering the rest of it. */
    if (c->rx_len + len + remaining > max) {
        free(c->rx);
        c->rx = NULL;
        c->rx_len = 0;
        conn_close(c, 4413, "message too large");
        return 0;
    }
    if (final && c->rx == NULL) {
        on_message(t, c, in, len);
        return 0;
    }

    grown = realloc(c->rx, c->rx_len + len);
    if (grown == NULL && c->rx_len + len > 0) {
        conn_close(c, 1011, "out of memory");
        return 0;
    }
    c->rx = grown;
    memcpy(c->rx + c->rx_len, in, len);
    c->rx_len += len;
    if (final) {
        on_message(t, c, c->rx, c->rx_len);
        free(c->rx);
        c->rx = NULL;
        c->rx_len = 0;
    }
    return 0;
}

/* ---------------------------------------------------------------------
 * Connection lifecycle
 * ------------------------------------------------------------------ */

static void on_hello_timeout(lws_sorted_usec_list_t *sul)
{
    struct net_conn *c = lws_container_of(sul, struct net_conn, hello_sul);

    if (!c->hello_done)
        conn_close(c, 4401, "no hello before the deadline");
}

static int on_established(struct net_thread *t, struct net_conn *c,
                          struct lws *wsi)
{
    c->wsi = wsi;
    if (slot_take(t, c) != NET_OK) {
        log_warning("msg=\"connection refused: no free slot\" thread=%d "
                    "open=%d", t->index, atomic_load(&t->open));
        return -1;
    }
    t->open++;
    metrics_add(connections_open, 1);
    metrics_add(connections_total, 1);
    c->tokens = t->net->opt.msg_burst;
    c->tokens_at_us = lws_now_usecs();
    lws_sul_schedule(t->ctx, 0, &c->hello_sul, on_hello_timeout,
                     (lws_usec_t)t->net->opt.hello_timeout_ms * 1000);
    return 0;
}

/* Ends the thread's loop; on the thread only. uv_stop() and ev_break()
 * take effect once the callback under way returns. */
static void thread_stop(struct net_thread *t)
{
    atomic_store(&t->stop, 1);
    if (t->net->opt.event_lib == NET_EVENT_LIB_UV)
        uv_stop(&t->uv_loop);
    else if (t->net->opt.event_lib == NET_EVENT_LIB_EV)
        ev_break(t->ev_loop, EVBREAK_ALL);
}

static void on_closed(struct net_thread *t, struct net_conn *c)
{
    if (c->id == 0)
        return;
    lws_sul_cancel(&c->hello_sul);
    conn_drop_output(c);
    free(c->rx);
    c->rx = NULL;
    if (c->hello_posted)
        post_closed(t, c->id);
    slot_release(t, c);
    c->id = 0;
    t->open--;
    metrics_sub(connections_open, 1);
    if (t->draining && t->open == 0)
        thread_stop(t);
}

static int uri_allowed(struct lws *wsi)
{
    char uri[64];

    if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) <= 0)
        return 0;
    return strcmp(uri, "/v1/learn") == 0;
}

/* ---------------------------------------------------------------------
 * Wake-ups from other threads, and shutdown
 * ------------------------------------------------------------------ */

static void start_drain(struct net_thread *t)
{
    t->draining = 1;
    t->drain_deadline_us = lws_now_usecs() + 2000000;
    lws_sul_schedule(t->ctx, 0, &t->tick_sul, on_tick, NET_TICK_US);
    for (uint32_t i = 0; i < t->nslots; i++) {
        if (t->slots[i] != NULL)
            conn_close(t->slots[i], 1001, "server shutting down");
    }
    if (t->open == 0)
        thread_stop(t);
}

static const char *close_text(int code)
{
    switch (code) {
    case 1000:
        return "bye";
    case 4409:
        return "session taken over by a newer login";
    case 1011:
        return "internal error";
    default:
        return "closed by server";
    }
}

/* A reply for a connection with nothing queued goes out at once: asking
 * lws for a writable callback costs two epoll_ctl calls and a loop turn
 * per reply, most of a sparse heartbeat's cost in the network thread.
 * lws keeps what the socket does not take and sends it first, so order
 * holds; replies behind it, and closes, take the writable callback. */
static void send_now(struct net_conn *c, struct out_frame *f)
{
    int n = lws_write(c->wsi, f->buf + LWS_PRE, f->len, LWS_WRITE_BINARY);

    if (n < (int)f->len) {
        c->closing = 1;
        c->close_reason = "write failed";
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    } else {
        metrics_add(messages_out, 1);
    }
    free(f);
}

static void deliver(struct net_thread *t, struct net_out *o)
{
    struct net_conn *c = slot_find(t, o->conn);
    struct out_frame *f;

    if (c == NULL || c->closing) {
        net_frame_free(o->payload);
        return;
    }
    if (o->payload == NULL) {
        conn_close(c, o->close_code, close_text(o->close_code));
        return;
    }
    if (c->out_count >= NET_OUT_MAX) {
        /* A client that reads nothing must not make us hold its
         * replies without bound. */
        net_frame_free(o->payload);
        conn_drop_output(c);
        conn_close(c, 1008, "not reading");
        return;
    }
    f = frame_of(o->payload);
    f->len = o->len;
    f->close_code = o->close_code;
    if (o->close_code == 0 && o->len > 0 && c->out_head == NULL &&
        !lws_partial_buffered(c->wsi)) {
        send_now(c, f);
        return;
    }
    if (o->close_code != 0) {
        c->closing = 1;
        c->close_reason = "closed by server";
    }
    conn_enqueue(c, f);
}

/* With TLS the adopted socket starts with the handshake, on this thread:
 * neither the acceptor nor the core ever runs one. */
static void adopt(struct net_thread *t, int fd)
{
    struct lws_vhost *vh = lws_get_vhost_by_name(t->ctx, "default");
    lws_adoption_type type = LWS_ADOPT_SOCKET | LWS_ADOPT_HTTP;
    lws_sock_file_fd_type sock;

    if (t->net->opt.tls_cert != NULL)
        type |= LWS_ADOPT_ALLOW_SSL;
    sock.sockfd = fd;
    /* lws closes the socket itself when adoption fails. */
    if (t->draining || vh == NULL)
        close(fd);
    else
        lws_adopt_descriptor_vhost(vh, type, sock, NULL, NULL);
}

static void on_wakeup(struct net_thread *t)
{
    struct net_out batch[NET_POP_BATCH];
    size_t n;

    /* net_shutdown() stopping us hard from the core thread. */
    if (atomic_load(&t->stop)) {
        thread_stop(t);
        return;
    }
    flush_closed_backlog(t);
    while ((n = queue_pop_many(&t->outq, batch, NET_POP_BATCH)) > 0) {
        for (size_t i = 0; i < n; i++) {
            if (batch[i].conn != 0)
                deliver(t, &batch[i]);
            else if (batch[i].close_code == NET_DRAIN_CODE)
                start_drain(t);
            else if (batch[i].close_code == NET_ADOPT_CODE)
                adopt(t, (int)batch[i].len);
        }
    }
}

static void on_tick(lws_sorted_usec_list_t *sul)
{
    struct net_thread *t = lws_container_of(sul, struct net_thread,
                                            tick_sul);

    flush_closed_backlog(t);
    if (atomic_load(&t->stop) ||
        (t->draining && (t->open == 0 ||
                         lws_now_usecs() > t->drain_deadline_us)))
        thread_stop(t);
    lws_sul_schedule(t->ctx, 0, &t->tick_sul, on_tick,
                     t->draining || t->nclosed > 0 ? NET_TICK_US
                                                    : NET_IDLE_TICK_US);
}

static int on_lws(struct lws *wsi, enum lws_callback_reasons reason,
                  void *user, void *in, size_t len)
{
    struct net_thread *t = lws_context_user(lws_get_context(wsi));
    struct net_conn *c = user;

    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return t->draining || !uri_allowed(wsi) ||
               atomic_load(&t->open) >= (int)t->nslots;
    case LWS_CALLBACK_ESTABLISHED:
        return on_established(t, c, wsi);
    case LWS_CALLBACK_RECEIVE:
        return on_receive(t, c, in, len);
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return on_writeable(c);
    case LWS_CALLBACK_CLOSED:
        on_closed(t, c);
        return 0;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        on_wakeup(t);
        return 0;
    default:
        return 0;
    }
}

/* A WebSocket upgrade without our subprotocol lands here and is refused;
 * plain HTTP on this port gets lws's default answer. */
static int on_other(struct lws *wsi, enum lws_callback_reasons reason,
                    void *user, void *in, size_t len)
{
    if (reason == LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION)
        return 1;
    if (reason == LWS_CALLBACK_EVENT_WAIT_CANCELLED)
        return 0;
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static const struct lws_protocols net_protocols[] = {
    {"default", on_other, 0, 0, 0, NULL, 0},
    {"proctor.v1", on_lws, sizeof(struct net_conn), NET_RX_CHUNK, 0, NULL,
     0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* ---------------------------------------------------------------------
 * Threads and contexts
 * ------------------------------------------------------------------ */

/* lws's poll() loop returns after every wait; a foreign loop runs until
 * thread_stop() breaks it (lws's event pipe keeps it from running dry). */
static void run_loop(struct net_thread *t)
{
    while (!atomic_load(&t->stop)) {
        if (t->net->opt.event_lib == NET_EVENT_LIB_UV)
            uv_run(&t->uv_loop, UV_RUN_DEFAULT);
        else if (t->net->opt.event_lib == NET_EVENT_LIB_EV)
            ev_run(t->ev_loop, 0);
        else if (lws_service(t->ctx, 0) < 0)
            break;
    }
}

static void *thread_main(void *arg)
{
    struct net_thread *t = arg;
    char name[16];

    /* Named so that a profile (and bench/load.c) tells them apart from
     * the core, which waits in epoll too under libuv and libev. */
    snprintf(name, sizeof(name), "proctord-net%d", t->index % 100);
    pthread_setname_np(pthread_self(), name);
    lws_sul_schedule(t->ctx, 0, &t->tick_sul, on_tick, NET_IDLE_TICK_US);
    run_loop(t);
    lws_sul_cancel(&t->tick_sul);
    return NULL;
}

static const char *event_lib_name(int lib)
{
    return lib == NET_EVENT_LIB_UV ? "uv"
           : lib == NET_EVENT_LIB_EV ? "ev" : "poll";
}

/* Creates the thread's own loop for a foreign-loop event library and
 * says so in info; nothing for poll. */
static int loop_init(struct net_thread *t,
                     struct lws_context_creation_info *info, char *err,
                     size_t errlen)
{
    switch (t->net->opt.event_lib) {
    case NET_EVENT_LIB_UV:
        if (uv_loop_init(&t->uv_loop) != 0)
            goto fail;
        t->uv_ready = 1;
        t->foreign_loop[0] = &t->uv_loop;
        info->options |= LWS_SERVER_OPTION_LIBUV;
        break;
    case NET_EVENT_LIB_EV:
        t->ev_loop = ev_loop_new(EVFLAG_AUTO);
        if (t->ev_loop == NULL)
            goto fail;
        t->foreign_loop[0] = t->ev_loop;
        info->options |= LWS_SERVER_OPTION_LIBEV;
        break;
    default:
        return NET_OK;
    }
    info->foreign_loops = t->foreign_loop;
    return NET_OK;

fail:
    snprintf(err, errlen, "server.event_lib = %s: cannot create the loop",
             event_lib_name(t->net->opt.event_lib));
    return NET_ERR;
}

/* After lws_context_destroy(), on a thread no longer running the loop.
 * lws closes its libuv handles asynchronously, so the loop turns until
 * they are gone; a bounded number of turns, then it says what is left. */
static void loop_free(struct net_thread *t)
{
    if (t->uv_ready) {
        for (int i = 0; i < 1000 && uv_run(&t->uv_loop, UV_RUN_NOWAIT); i++)
            ;
        /* With a foreign libuv loop the first lws_context_destroy() only
         * starts the closes; once the loop has run them, a second call
         * frees the context (lws 4.1's three-stage destroy). */
        if (t->ctx != NULL)
            lws_context_destroy(t->ctx);
        t->ctx = NULL;
        if (uv_loop_close(&t->uv_loop) != 0)
            log_warning("msg=\"libuv loop left with open handles\" "
                        "thread=%d", t->index);
        t->uv_ready = 0;
    }
    if (t->ev_loop != NULL) {
        ev_loop_destroy(t->ev_loop);
        t->ev_loop = NULL;
    }
}

static void on_lws_log(int level, const char *line)
{
    char buf[256];
    size_t n;

    snprintf(buf, sizeof(buf), "%s", line);
    n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    if (level & LLL_ERR)
        log_warning("msg=\"libwebsockets\" detail=\"%s\"", buf);
    else
        log_verbose("msg=\"libwebsockets\" detail=\"%s\"", buf);
}

static int parse_listen(struct net *net, const char *listen, char *err,
                        size_t errlen)
{
    const char *colon = strrchr(listen, ':');
    size_t hostlen;
    char *end;
    long port;

    if (colon == NULL || colon == listen)
        goto bad;
    hostlen = (size_t)(colon - listen);
    if (hostlen >= sizeof(net->iface))
        goto bad;
    port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535)
        goto bad;
    memcpy(net->iface, listen, hostlen);
    net->iface[hostlen] = '\0';
    net->port = (int)port;
    return NET_OK;

bad:
    snprintf(err, errlen, "server.ws_listen: bad address \"%s\"", listen);
    return NET_ERR;
}

/* lws 4.1 finds the connection of a ready descriptor by indexing a table
 * with it, unless fd_limit_per_thread x threads is below the process's
 * descriptor limit: then by a linear search of that table, on every
 * event. At 10,000 connections a thread that search was over half of the
 * daemon's CPU (bench/README.md), so each context gets a table as large as
 * the limit. The tables are calloc'd: only the pages of descriptors in use
 * are touched. Past NET_FD_TABLE_MAX the search comes back, said once. */
#define NET_FD_TABLE_MAX (1u << 20)

static unsigned fd_table_size(unsigned need)
{
    static atomic_int warned;
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur <= need)
        return need;
    if (rl.rlim_cur <= NET_FD_TABLE_MAX)
        return (unsigned)rl.rlim_cur;
    if (!atomic_exchange(&warned, 1))
        log_warning("msg=\"descriptor limit above what lws can index; its "
                    "lookups are linear\" limit=%llu max=%u",
                    (unsigned long long)rl.rlim_cur, NET_FD_TABLE_MAX);
    return need;
}

static int thread_init(struct net *net, struct net_thread *t, int index,
                       uint32_t nslots, char *err, size_t errlen)
{
    struct lws_context_creation_info info;

    t->net = net;
    t->index = index;
    t->nslots = nslots;
    t->slots = calloc(nslots, sizeof(*t->slots));
    t->gens = calloc(nslots, sizeof(*t->gens));
    t->free_slots = calloc(nslots, sizeof(*t->free_slots));
    t->closed_backlog = calloc(nslots, sizeof(*t->closed_backlog));
    if (t->slots == NULL || t->gens == NULL || t->free_slots == NULL ||
        t->closed_backlog == NULL ||
        queue_init(&t->outq, NET_OUTQ_CAPACITY, sizeof(struct net_out))) {
        snprintf(err, errlen, "net: out of memory");
        return NET_ERR;
    }
    for (uint32_t i = 0; i < nslots; i++)
        t->free_slots[i] = nslots - 1 - i;
    t->nfree = nslots;

    memset(&info, 0, sizeof(info));
    info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
    info.protocols = net_protocols;
    info.user = t;
    info.gid = (gid_t)-1;
    info.uid = (uid_t)-1;
    info.count_threads = 1;
    info.fd_limit_per_thread = fd_table_size(nslots + 64);
    info.timeout_secs = 10;
    /* Each context loads the pair itself: lws 4.1 takes no server SSL_CTX
     * from outside. A plain-text client on this port fails the handshake
     * and is closed by lws. */
    if (net->opt.tls_cert != NULL) {
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.ssl_cert_filepath = net->opt.tls_cert;
        info.ssl_private_key_filepath = net->opt.tls_key;
    }
    if (loop_init(t, &info, err, errlen) != NET_OK)
        return NET_ERR;
    t->ctx = lws_create_context(&info);
    if (t->ctx == NULL && t->net->opt.event_lib != NET_EVENT_LIB_POLL) {
        /* What fails here in practice is loading the plugin. */
        snprintf(err, errlen, "server.event_lib = %s: libwebsockets cannot "
                 "start its event library (is libwebsockets-evlib-%s "
                 "installed?)", event_lib_name(t->net->opt.event_lib),
                 event_lib_name(t->net->opt.event_lib));
        return NET_ERR;
    }
    if (t->ctx == NULL) {
        snprintf(err, errlen, "net: cannot create a libwebsockets context");
        return NET_ERR;
    }
    return NET_OK;
}

static int open_listener(struct net *net, char *err, size_t errlen)
{
    struct sockaddr_in sa;
    int one = 1;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)net->port);
    if (inet_pton(AF_INET, net->iface, &sa.sin_addr) != 1) {
        snprintf(err, errlen, "server.ws_listen: not an IPv4 address \"%s\"",
                 net->iface);
        return NET_ERR;
    }
    net->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (net->listen_fd < 0 ||
        setsockopt(net->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one,
                   sizeof(one)) != 0 ||
        bind(net->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        listen(net->listen_fd, 4096) != 0) {
        snprintf(err, errlen, "server.ws_listen: cannot listen on %s:%d: %s",
                 net->iface, net->port, strerror(errno));
        return NET_ERR;
    }
    return NET_OK;
}

static struct net_thread *least_loaded(struct net *net)
{
    struct net_thread *best = &net->threads[0];

    for (int i = 1; i < net->nthreads; i++) {
        if (atomic_load(&net->threads[i].open) < atomic_load(&best->open))
            best = &net->threads[i];
    }
    return best;
}

static void *acceptor_main(void *arg)
{
    struct net *net = arg;
    int one = 1;

    while (!atomic_load(&net->stopping)) {
        int fd = accept4(net->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        struct net_out o = {0, NULL, 0, NET_ADOPT_CODE};
        struct net_thread *t;
        int was_empty = 0;

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (atomic_load(&net->stopping))
                break;
            /* Out of descriptors: back off rather than spin. */
            log_warning("msg=\"accept failed\" error=\"%s\"",
                        strerror(errno));
            usleep(100000);
            continue;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        t = least_loaded(net);
        o.len = (size_t)fd;
        if (queue_push(&t->outq, &o, &was_empty) != QUEUE_OK) {
            metrics_add(queue_refused, 1);
            close(fd);
            continue;
        }
        lws_cancel_service(t->ctx);
    }
    return NULL;
}

struct net *net_new(const struct net_options *opt, char *err, size_t errlen)
{
    struct net *net = calloc(1, sizeof(*net));
    uint32_t nslots;

    if (net == NULL) {
        snprintf(err, errlen, "net: out of memory");
        return NULL;
    }
    net->opt = *opt;
    net->listen_fd = -1;
    net->nthreads = opt->threads > 0 ? opt->threads : 1;
    if (parse_listen(net, opt->listen, err, errlen) != NET_OK ||
        open_listener(net, err, errlen) != NET_OK)
        goto fail;

    lws_set_log_level(LLL_ERR | LLL_WARN, on_lws_log);
    if (opt->event_lib == NET_EVENT_LIB_UV)
        log_warning("msg=\"server.event_lib = uv: lws 4.1 shuts the socket "
                    "without the close frame after an Error; clients see no "
                    "close code\"");
    net->threads = calloc((size_t)net->nthreads, sizeof(*net->threads));
    if (net->threads == NULL)
        goto fail;
    nslots = (uint32_t)(opt->max_connections / net->nthreads + 1);
    for (int i = 0; i < net->nthreads; i++) {
        if (thread_init(net, &net->threads[i], i, nslots, err, errlen))
            goto fail;
    }
    return net;

fail:
    net_free(net);
    return NULL;
}

int net_start(struct net *net)
{
    for (int i = 0; i < net->nthreads; i++) {
        struct net_thread *t = &net->threads[i];

        if (pthread_create(&t->tid, NULL, thread_main, t) != 0)
            return NET_ERR;
        t->started = 1;
    }
    if (pthread_create(&net->acceptor, NULL, acceptor_main, net) != 0)
        return NET_ERR;
    net->acceptor_started = 1;
    return NET_OK;
}

int net_send(struct net *net, uint64_t conn, unsigned char *payload,
             size_t len, int close_code)
{
    int index = (int)(conn >> NET_ID_THREAD_SHIFT);
    struct net_out o = {conn, payload, len, close_code};
    struct net_thread *t;
    int was_empty = 0;

    if (index >= net->nthreads) {
        net_frame_free(payload);
        return NET_ERR;
    }
    t = &net->threads[index];
    if (queue_push(&t->outq, &o, &was_empty) != QUEUE_OK) {
        metrics_add(queue_refused, 1);
        net_frame_free(payload);
        return NET_ERR;
    }
    if (was_empty)
        lws_cancel_service(t->ctx);
    return NET_OK;
}

void net_shutdown(struct net *net, int64_t timeout_ms)
{
    struct timespec deadline;

    /* Stop accepting first: shutdown() wakes the blocked accept(). */
    atomic_store(&net->stopping, 1);
    if (net->listen_fd >= 0)
        shutdown(net->listen_fd, SHUT_RDWR);
    if (net->acceptor_started) {
        pthread_join(net->acceptor, NULL);
        net->acceptor_started = 0;
    }

    for (int i = 0; i < net->nthreads; i++) {
        struct net_thread *t = &net->threads[i];
        struct net_out o = {0, NULL, 0, NET_DRAIN_CODE};

        if (!t->started)
            continue;
        /* A full queue cannot take the drain item: stop hard instead. */
        if (queue_push(&t->outq, &o, NULL) != QUEUE_OK)
            atomic_store(&t->stop, 1);
        lws_cancel_service(t->ctx);
    }

    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    for (int i = 0; i < net->nthreads; i++) {
        struct net_thread *t = &net->threads[i];

        if (!t->started)
            continue;
        if (pthread_timedjoin_np(t->tid, NULL, &deadline) != 0) {
            atomic_store(&t->stop, 1);
            lws_cancel_service(t->ctx);
            pthread_join(t->tid, NULL);
        }
        t->started = 0;
    }
}

void net_free(struct net *net)
{
    struct net_out batch[NET_POP_BATCH];
    size_t n;

    if (net == NULL)
        return;
    for (int i = 0; net->threads != NULL && i < net->nthreads; i++) {
        struct net_thread *t = &net->threads[i];

        if (t->ctx != NULL)
            lws_context_destroy(t->ctx);
        if (!t->uv_ready)
            t->ctx = NULL;
        loop_free(t);
        if (t->outq.items != NULL) {
            while ((n = queue_pop_many(&t->outq, batch, NET_POP_BATCH)))
                for (size_t k = 0; k < n; k++)
                    net_frame_free(batch[k].payload);
            queue_cleanup(&t->outq);
        }
        free(t->slots);
        free(t->gens);
        free(t->free_slots);
        free(t->closed_backlog);
    }
    free(net->threads);
    if (net->listen_fd >= 0)
        close(net->listen_fd);
    free(net);
}

size_t net_outbound_depth(struct net *net)
{
    size_t total = 0;

    for (int i = 0; i < net->nthreads; i++)
        total += queue_depth(&net->threads[i].outq);
    return total;
}
