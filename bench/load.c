/* proctord_load: simulated learners against proctord (or ws_baseline) over
 * plain WebSockets, for throughput, latency and memory per session. Each
 * worker thread runs one epoll loop with its own minimal client framing
 * (masked binary frames, no extensions, no TLS, no outgoing fragments):
 * Hello with an HS256 token, heartbeats on a jittered timer or as fast as
 * the acks come, answers to challenges with JPEGs, reconnects. It reports
 * latency percentiles, errors by kind and the daemon's RSS and CPU. */
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "proctor.pb-c.h"

#define LOAD_OK 0
#define LOAD_ERR -1

/* Histograms: 32 sub-buckets per power of two of microseconds (3%). */
#define HIST_SUB_BITS 5
#define HIST_SUB (1 << HIST_SUB_BITS)
#define HIST_BUCKETS (60 * HIST_SUB)

/* Send times of a connection's heartbeats in flight, by seq: a ring of
 * ring_size entries (a power of two) per connection. */
#define RING_MIN 64
#define RING_MAX 4096
#define WHEEL_SLOTS 16384
#define WHEEL_MASK (WHEEL_SLOTS - 1)
#define RX_CHUNK 65536
#define MAX_ERR_KINDS 48
#define MAX_HANDSHAKING 512
#define MAX_SECONDS 7200
#define MAX_THREADS 64
#define MAX_PEOPLE 256
#define MAX_PHOTOS 16
#define CONNECT_DEADLINE_MS 15000
#define WELCOME_DEADLINE_MS 30000
#define STALL_MS 5000
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

enum phase {
    PHASE_RAMP,
    PHASE_MEASURE,
    PHASE_DRAIN,
    PHASE_CLOSE,
    PHASE_EXIT
};

enum conn_state {
    ST_NEW,         /* not started yet */
    ST_WAIT,        /* waiting to reconnect */
    ST_CONNECTING,
    ST_HANDSHAKE,
    ST_HELLO,       /* Hello sent, no Welcome yet */
    ST_OPEN,
    ST_CLOSING,     /* a close frame went out */
    ST_DONE
};

struct hist {
    uint64_t count;
    uint64_t sum_us;
    uint64_t max_us;
    uint64_t b[HIST_BUCKETS];
};

struct err_kind {
    char name[24];
    uint64_t n;
};

struct sent_hb {
    uint64_t seq;
    int64_t at_us;
};

struct person {
    char name[128];
    unsigned char *photo[MAX_PHOTOS];   /* owned */
    size_t len[MAX_PHOTOS];
    int n;
    int enrol;                  /* the photo enrolled, -1 before */
};

struct conn {
    struct worker *w;
    int fd;
    int idx;                    /* learner number */
    uint8_t state;
    uint8_t want_out;
    uint8_t welcomed_once;
    uint64_t seq;               /* last seq sent */
    uint64_t acked;             /* highest ack_seq seen */
    int64_t connect_us;
    int64_t hello_us;
    int64_t progress_ms;        /* last ack, for the stall check */
    struct sent_hb *ring;       /* owned, ring_size entries */
    uint64_t snap_challenge;
    int64_t snap_us;
    int next_photo;
    unsigned char *rbuf;        /* owned: bytes not yet parsed */
    size_t rlen, rcap;
    unsigned char *wbuf;        /* owned: bytes not yet written */
    size_t wlen, wcap;
    struct conn *tprev, *tnext; /* timer wheel */
    int64_t due_ms;
    int tslot;
    char accept[32];
    char sid[40];
};

/* Counters the main thread reads while the workers run. */
struct live {
    atomic_uint_fast64_t hb_sent;
    atomic_uint_fast64_t hb_acked;
    atomic_uint_fast64_t welcomed;
    atomic_uint_fast64_t welcomed_once;
    atomic_int_fast64_t open;
    atomic_uint_fast64_t errors;
};

struct worker {
    int index;
    pthread_t tid;
    int ep;
    struct conn *conns;         /* a slice of the global array */
    int nconns;
    int started;
    int handshaking;
    int close_sent;
    int64_t t0_ms;
    int64_t close_deadline_ms;
    int seen_phase;
    int exiting;
    uint64_t rng;
    struct conn *wheel[WHEEL_SLOTS];
    int64_t wheel_ms;
    struct live live;
    struct hist h_connect, h_welcome, h_hb, h_verdict;
    struct err_kind errs[MAX_ERR_KINDS];
    uint64_t status_other, challenges, snapshots_sent, reconnects;
    uint64_t closes_expected, error_msgs, unmatched_acks;
    uint64_t verdicts[16];
    unsigned char rx[RX_CHUNK];
};

struct options {
    char host[128];
    int port;
    char path[128];
    int sessions;
    double rate;
    int64_t duration_ms;
    int64_t settle_ms;
    int64_t interval_ms;
    int interval_set;
    int window;
    double jitter;
    int hold;
    const char *secret;
    const char *prefix;
    const char *course;
    const char *org;
    const char *snapshots;
    int enrol;
    char http_host[128];
    int http_port;
    char redis_host[128];
    int redis_port;
    int pid;
    int redis_pid;
    int threads;
    int reconnect;
    int src_ips;
    const char *json;
    int quiet;
    int64_t ramp_timeout_ms;
};

static struct options opt;
static uint64_t ring_size;
static atomic_int phase;
static struct person people[MAX_PEOPLE];
static int npeople;
static volatile sig_atomic_t interrupted;

/* ---------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------ */

static int64_t mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t mono_ms(void)
{
    return mono_us() / 1000;
}

static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

static double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) / 9007199254740992.0;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);

    if (q == NULL && n > 0) {
        fprintf(stderr, "proctord_load: out of memory\n");
        exit(1);
    }
    return q;
}

static void b64url(const unsigned char *in, size_t n, char *out)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t i, o = 0;

    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 |
                     in[i + 2];
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = tab[(v >> 6) & 63];
    }
    out[o] = '\0';
}

/* An HS256 JWT over a JSON body, as a platform mints it. */
static void make_token(const char *body, char *out, size_t outlen)
{
    static const char head[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    char signing[1024], sig[128];
    size_t n;

    b64url((const unsigned char *)head, strlen(head), signing);
    n = strlen(signing);
    signing[n++] = '.';
    b64url((const unsigned char *)body, strlen(body), signing + n);
    HMAC(EVP_sha256(), opt.secret, (int)strlen(opt.secret),
         (const unsigned char *)signing, strlen(signing), mac, &maclen);
    b64url(mac, maclen, sig);
    snprintf(out, outlen, "%s.%s", signing, sig);
}

static void learner_id(int idx, char *out, size_t n)
{
    snprintf(out, n, "%s-%d", opt.prefix, idx);
}

static void learner_token(int idx, char *out, size_t n)
{
    char body[512], id[96];
    long long now = (long long)(wall_ms() / 1000);

    learner_id(idx, id, sizeof(id));
    snprintf(body, sizeof(body),
             "{\"sub\":\"%s\",\"course\":\"%s\",\"org\":\"%s\","
             "\"role\":\"manager\",\"iat\":%lld,\"exp\":%lld}",
             id, opt.course, opt.org, now, now + 86400);
    make_token(body, out, n);
}

/* ---------------------------------------------------------------------
 * Histograms and error kinds (one set per worker, merged at the end)
 * ------------------------------------------------------------------ */

static int hist_index(uint64_t v)
{
    int msb, shift;

    if (v < HIST_SUB)
        return (int)v;
    msb = 63 - __builtin_clzll(v);
    shift = msb - HIST_SUB_BITS;
    if ((shift + 2) * HIST_SUB > HIST_BUCKETS)
        return HIST_BUCKETS - 1;
    return (shift + 1) * HIST_SUB + (int)((v >> shift) - HIST_SUB);
}

/* The largest value a bucket holds. */
static uint64_t hist_upper(int idx)
{
    int shift;

    if (idx < HIST_SUB)
        return (uint64_t)idx;
    shift = idx / HIST_SUB - 1;
    return (((uint64_t)(idx % HIST_SUB + HIST_SUB) + 1) << shift) - 1;
}

static void hist_add(struct hist *h, int64_t us)
{
    uint64_t v = us < 0 ? 0 : (uint64_t)us;

    h->count++;
    h->sum_us += v;
    if (v > h->max_us)
        h->max_us = v;
    h->b[hist_index(v)]++;
}

static void hist_merge(struct hist *into, const struct hist *h)
{
    into->count += h->count;
    into->sum_us += h->sum_us;
    if (h->max_us > into->max_us)
        into->max_us = h->max_us;
    for (int i = 0; i < HIST_BUCKETS; i++)
        into->b[i] += h->b[i];
}

/* The p-quantile in milliseconds (an upper bound within 3%). */
static double hist_ms(const struct hist *h, double p)
{
    uint64_t want, seen = 0;

    if (h->count == 0)
        return 0;
    want = (uint64_t)ceil(p * (double)h->count);
    if (want == 0)
        want = 1;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want) {
            uint64_t v = hist_upper(i);
            return (double)(v < h->max_us ? v : h->max_us) / 1000.0;
        }
    }
    return (double)h->max_us / 1000.0;
}

static void err_add(struct worker *w, const char *name)
{
    int i;

    atomic_fetch_add_explicit(&w->live.errors, 1, memory_order_relaxed);
    for (i = 0; i < MAX_ERR_KINDS && w->errs[i].name[0] != '\0'; i++) {
        if (strcmp(w->errs[i].name, name) == 0) {
            w->errs[i].n++;
            return;
        }
    }
    if (i == MAX_ERR_KINDS)
        i = MAX_ERR_KINDS - 1;
    snprintf(w->errs[i].name, sizeof(w->errs[i].name), "%s", name);
    w->errs[i].n++;
}

static void err_merge(struct err_kind *into, const struct err_kind *from)
{
    for (int k = 0; k < MAX_ERR_KINDS && from[k].name[0] != '\0'; k++) {
        int i;

        for (i = 0; i < MAX_ERR_KINDS && into[i].name[0] != '\0'; i++) {
            if (strcmp(into[i].name, from[k].name) == 0)
                break;
        }
        if (i == MAX_ERR_KINDS)
            continue;
        if (into[i].name[0] == '\0')
            memcpy(into[i].name, from[k].name, sizeof(into[i].name));
        into[i].n += from[k].n;
    }
}

/* ---------------------------------------------------------------------
 * Timer wheel: 1 ms slots, one timer per connection; a timer further out
 * than the wheel waits in its slot for the later turns.
 * ------------------------------------------------------------------ */

static void timer_cancel(struct worker *w, struct conn *c)
{
    if (c->tslot < 0)
        return;
    if (c->tprev != NULL)
        c->tprev->tnext = c->tnext;
    else
        w->wheel[c->tslot] = c->tnext;
    if (c->tnext != NULL)
        c->tnext->tprev = c->tprev;
    c->tprev = c->tnext = NULL;
    c->tslot = -1;
}

static void timer_at(struct worker *w, struct conn *c, int64_t due_ms)
{
    timer_cancel(w, c);
    if (due_ms <= w->wheel_ms)
        due_ms = w->wheel_ms + 1;
    c->due_ms = due_ms;
    c->tslot = (int)(due_ms & WHEEL_MASK);
    c->tprev = NULL;
    c->tnext = w->wheel[c->tslot];
    if (c->tnext != NULL)
        c->tnext->tprev = c;
    w->wheel[c->tslot] = c;
}

static void on_timer(struct conn *c, int64_t now_ms);

static void wheel_advance(struct worker *w, int64_t now_ms)
{
    while (w->wheel_ms < now_ms) {
        int slot = (int)(++w->wheel_ms & WHEEL_MASK);
        struct conn *list = w->wheel[slot];

        /* Detached first: a callback may arm timers in this slot. */
        w->wheel[slot] = NULL;
        for (struct conn *c = list; c != NULL; c = c->tnext)
            c->tslot = -1;
        while (list != NULL) {
            struct conn *c = list;

            list = c->tnext;
            c->tprev = c->tnext = NULL;
            if (c->due_ms > w->wheel_ms)
                timer_at(w, c, c->due_ms);
            else
                on_timer(c, w->wheel_ms);
        }
    }
}

/* ---------------------------------------------------------------------
 * Output: everything goes through the connection's buffer, written out
 * once per event so that several frames share one write().
 * ------------------------------------------------------------------ */

static void conn_down(struct conn *c, const char *error);

static void want_output(struct conn *c, int on)
{
    struct epoll_event ev;

    if (c->want_out == on)
        return;
    c->want_out = (uint8_t)on;
    ev.events = EPOLLIN | (on ? EPOLLOUT : 0);
    ev.data.ptr = c;
    epoll_ctl(c->w->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void buf_append(struct conn *c, const void *data, size_t len)
{
    if (c->wlen + len > c->wcap) {
        size_t cap = c->wcap ? c->wcap : 256;
        while (cap < c->wlen + len)
            cap *= 2;
        c->wbuf = xrealloc(c->wbuf, cap);
        c->wcap = cap;
    }
    memcpy(c->wbuf + c->wlen, data, len);
    c->wlen += len;
}

/* Writes what is buffered. Returns LOAD_ERR after taking the connection
 * down. */
static int conn_flush(struct conn *c)
{
    size_t off = 0;

    while (off < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + off, c->wlen - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            conn_down(c, errno == ECONNRESET ? "reset" : "write");
            return LOAD_ERR;
        }
        off += (size_t)n;
    }
    if (off > 0) {
        memmove(c->wbuf, c->wbuf + off, c->wlen - off);
        c->wlen -= off;
    }
    if (c->wlen > 4 * 1024 * 1024 && c->wcap > 0) {
        /* The server reads nothing: a load test learns nothing more. */
        conn_down(c, "not_reading");
        return LOAD_ERR;
    }
    want_output(c, c->wlen > 0);
    return LOAD_OK;
}

/* Appends one masked frame (RFC 6455 client framing). */
static void frame_append(struct conn *c, int opcode, const unsigned char *p,
                         size_t len)
{
    unsigned char head[14];
    uint32_t key32 = (uint32_t)rng_next(&c->w->rng);
    unsigned char *key;
    size_t h = 0, start;

    head[h++] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        head[h++] = (unsigned char)(0x80 | len);
    } else if (len < 65536) {
        head[h++] = 0x80 | 126;
        head[h++] = (unsigned char)(len >> 8);
        head[h++] = (unsigned char)len;
    } else {
        head[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            head[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    memcpy(head + h, &key32, 4);
    key = head + h;
    h += 4;
    buf_append(c, head, h);
    start = c->wlen;
    buf_append(c, p, len);
    for (size_t i = 0; i < len; i++)
        c->wbuf[start + i] ^= key[i & 3];
}

static void send_message(struct conn *c, Proctor__V1__ClientMessage *m)
{
    unsigned char small[512];
    size_t len = proctor__v1__client_message__get_packed_size(m);
    unsigned char *buf = len <= sizeof(small) ? small : xrealloc(NULL, len);

    proctor__v1__client_message__pack(m, buf);
    frame_append(c, 0x2, buf, len);
    if (buf != small)
        free(buf);
}

/* ---------------------------------------------------------------------
 * What a learner sends
 * ------------------------------------------------------------------ */

static void send_hello(struct conn *c)
{
    Proctor__V1__ClientMessage m = PROCTOR__V1__CLIENT_MESSAGE__INIT;
    Proctor__V1__Hello h = PROCTOR__V1__HELLO__INIT;
    char token[1024];

    learner_token(c->idx, token, sizeof(token));
    h.token = token;
    h.client = "proctord_load";
    h.resume_session_id = c->sid;
    m.seq = ++c->seq;
    m.body_case = PROCTOR__V1__CLIENT_MESSAGE__BODY_HELLO;
    m.hello = &h;
    send_message(c, &m);
    c->hello_us = mono_us();
    c->state = ST_HELLO;
}

static void send_heartbeat(struct conn *c)
{
    Proctor__V1__ClientMessage m = PROCTOR__V1__CLIENT_MESSAGE__INIT;
    Proctor__V1__Heartbeat hb = PROCTOR__V1__HEARTBEAT__INIT;
    struct sent_hb *slot;

    hb.client_time_ms = wall_ms();
    hb.page_visible = 1;
    hb.window_focused = 1;
    hb.input_events = 1 + (uint32_t)(rng_next(&c->w->rng) % 5);
    hb.lesson_id = "lesson-1";
    m.seq = ++c->seq;
    m.body_case = PROCTOR__V1__CLIENT_MESSAGE__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    send_message(c, &m);
    slot = &c->ring[m.seq & (ring_size - 1)];
    slot->seq = m.seq;
    slot->at_us = mono_us();
    atomic_fetch_add_explicit(&c->w->live.hb_sent, 1, memory_order_relaxed);
}

static void send_snapshot(struct conn *c, uint64_t challenge_id)
{
    Proctor__V1__ClientMessage m = PROCTOR__V1__CLIENT_MESSAGE__INIT;
    Proctor__V1__Snapshot sn = PROCTOR__V1__SNAPSHOT__INIT;
    struct person *p = &people[c->idx % npeople];
    int k;

    /* Every photo but the enrolment answers in turn. */
    k = c->next_photo++ % (p->n - 1);
    if (k >= p->enrol && p->enrol >= 0)
        k++;
    sn.jpeg.data = p->photo[k];
    sn.jpeg.len = p->len[k];
    sn.challenge_id = challenge_id;
    sn.captured_at_ms = wall_ms();
    m.seq = ++c->seq;
    m.body_case = PROCTOR__V1__CLIENT_MESSAGE__BODY_SNAPSHOT;
    m.snapshot = &sn;
    send_message(c, &m);
    c->snap_challenge = challenge_id;
    c->snap_us = mono_us();
    c->w->snapshots_sent++;
}

static int closed_loop(void)
{
    return opt.interval_ms == 0;
}

/* Keeps window heartbeats in flight (closed loop). */
static void refill(struct conn *c)
{
    if (atomic_load(&phase) >= PHASE_DRAIN)
        return;
    while (c->seq - c->acked < (uint64_t)opt.window)
        send_heartbeat(c);
}

static int64_t next_interval(struct conn *c)
{
    double f = 1.0 + opt.jitter * (2.0 * rng_unit(&c->w->rng) - 1.0);

    return (int64_t)((double)opt.interval_ms * f);
}

/* ---------------------------------------------------------------------
 * What a learner receives
 * ------------------------------------------------------------------ */

static void on_welcome(struct conn *c, Proctor__V1__Welcome *wel)
{
    struct worker *w = c->w;
    int64_t now = mono_us();

    hist_add(&w->h_welcome, now - c->hello_us);
    snprintf(c->sid, sizeof(c->sid), "%s", wel->session_id);
    c->state = ST_OPEN;
    c->progress_ms = now / 1000;
    atomic_fetch_add_explicit(&w->live.welcomed, 1, memory_order_relaxed);
    if (!c->welcomed_once) {
        c->welcomed_once = 1;
        atomic_fetch_add_explicit(&w->live.welcomed_once, 1,
                                  memory_order_relaxed);
    }
    if (closed_loop()) {
        refill(c);
        timer_at(w, c, now / 1000 + STALL_MS);
    } else {
        /* Spread the first beat over one interval so the load is even. */
        timer_at(w, c, now / 1000 + 1 +
                 (int64_t)(rng_unit(&w->rng) * (double)opt.interval_ms));
    }
}

static void on_status(struct conn *c, uint64_t ack)
{
    struct worker *w = c->w;
    struct sent_hb *slot = &c->ring[ack & (ring_size - 1)];

    if (ack > c->acked)
        c->acked = ack;
    if (slot->seq != ack || ack == 0) {
        w->status_other++;
        return;
    }
    slot->seq = 0;
    if (atomic_load(&phase) == PHASE_MEASURE)
        hist_add(&w->h_hb, mono_us() - slot->at_us);
    atomic_fetch_add_explicit(&w->live.hb_acked, 1, memory_order_relaxed);
    c->progress_ms = mono_ms();
    if (closed_loop())
        refill(c);
}

static void on_verdict(struct conn *c, Proctor__V1__Verdict *v)
{
    struct worker *w = c->w;

    if ((unsigned)v->outcome < 16)
        w->verdicts[v->outcome]++;
    if (v->challenge_id != 0 && v->challenge_id == c->snap_challenge) {
        hist_add(&w->h_verdict, mono_us() - c->snap_us);
        c->snap_challenge = 0;
    }
}

static void on_server_message(struct conn *c, const unsigned char *p,
                              size_t len)
{
    Proctor__V1__ServerMessage *m;

    m = proctor__v1__server_message__unpack(NULL, len, p);
    if (m == NULL) {
        err_add(c->w, "bad_message");
        return;
    }
    switch (m->body_case) {
    case PROCTOR__V1__SERVER_MESSAGE__BODY_WELCOME:
        if (c->state == ST_HELLO)
            on_welcome(c, m->welcome);
        break;
    case PROCTOR__V1__SERVER_MESSAGE__BODY_STATUS:
        on_status(c, m->ack_seq);
        break;
    case PROCTOR__V1__SERVER_MESSAGE__BODY_CHALLENGE:
        c->w->challenges++;
        if (npeople > 0 && c->state == ST_OPEN &&
            atomic_load(&phase) < PHASE_DRAIN)
            send_snapshot(c, m->challenge->challenge_id);
        break;
    case PROCTOR__V1__SERVER_MESSAGE__BODY_VERDICT:
        on_verdict(c, m->verdict);
        break;
    case PROCTOR__V1__SERVER_MESSAGE__BODY_ERROR:
        c->w->error_msgs++;
        break;
    default:
        break;
    }
    proctor__v1__server_message__free_unpacked(m, NULL);
}

/* A close frame from the server. Returns LOAD_ERR after taking the
 * connection down. */
static int on_close_frame(struct conn *c, const unsigned char *p, size_t len)
{
    int code = len >= 2 ? (p[0] << 8 | p[1]) : 1005;
    char name[24];

    if (c->state == ST_CLOSING) {
        c->w->closes_expected++;
        conn_down(c, NULL);
        return LOAD_ERR;
    }
    snprintf(name, sizeof(name), "close_%d", code);
    err_add(c->w, name);

    /* Echo it, as the protocol asks, then hang up. */
    frame_append(c, 0x8, p, len >= 2 ? 2 : 0);
    if (conn_flush(c) != LOAD_OK)
        return LOAD_ERR;
    conn_down(c, NULL);
    return LOAD_ERR;
}

/* Parses whole frames from p. Returns the bytes used, or -1 after taking
 * the connection down. */
static ssize_t parse_frames(struct conn *c, const unsigned char *p, size_t n)
{
    size_t off = 0;

    while (n - off >= 2) {
        int opcode = p[off] & 0x0f, masked = p[off + 1] & 0x80;
        uint64_t len = p[off + 1] & 0x7f;
        size_t h = 2;

        if (len == 126) {
            if (n - off < 4)
                break;
            len = (uint64_t)p[off + 2] << 8 | p[off + 3];
            h = 4;
        } else if (len == 127) {
            if (n - off < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | p[off + 2 + i];
            h = 10;
        }
        if (masked || len > 64 * 1024 * 1024) {
            conn_down(c, "bad_frame");
            return -1;
        }
        if (n - off - h < len)
            break;
        if (opcode == 0x2 || opcode == 0x0) {
            on_server_message(c, p + off + h, (size_t)len);
        } else if (opcode == 0x8) {
            if (on_close_frame(c, p + off + h, (size_t)len) != LOAD_OK)
                return -1;
        } else if (opcode == 0x9) {
            frame_append(c, 0xa, p + off + h, (size_t)len);
        } else if (opcode == 0x1) {
            err_add(c->w, "text_frame");
        }
        off += h + (size_t)len;
        if (c->state == ST_DONE || c->state == ST_WAIT)
            return -1;
    }
    return (ssize_t)off;
}

/* ---------------------------------------------------------------------
 * Handshake
 * ------------------------------------------------------------------ */

static void send_upgrade(struct conn *c)
{
    unsigned char key[16], digest[SHA_DIGEST_LENGTH];
    char key64[32], both[96], req[512];
    int n;

    RAND_bytes(key, sizeof(key));
    EVP_EncodeBlock((unsigned char *)key64, key, sizeof(key));
    snprintf(both, sizeof(both), "%s%s", key64, WS_GUID);
    SHA1((const unsigned char *)both, strlen(both), digest);
    EVP_EncodeBlock((unsigned char *)c->accept, digest, sizeof(digest));
    n = snprintf(req, sizeof(req),
                 "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                 "Sec-WebSocket-Version: 13\r\n"
                 "Sec-WebSocket-Protocol: proctor.v1\r\n\r\n",
                 opt.path, opt.host, opt.port, key64);
    buf_append(c, req, (size_t)n);
    c->state = ST_HANDSHAKE;
}

/* A header's value in a response, case-insensitively; NULL if absent. */
static const char *header_value(const char *resp, const char *name,
                                size_t *vlen)
{
    size_t nl = strlen(name);
    const char *line = strstr(resp, "\r\n");

    while (line != NULL && line[2] != '\r') {
        const char *v = line + 2, *end;

        if (strncasecmp(v, name, nl) == 0 && v[nl] == ':') {
            v += nl + 1;
            while (*v == ' ')
                v++;
            end = strstr(v, "\r\n");
            *vlen = (size_t)(end - v);
            return v;
        }
        line = strstr(line + 2, "\r\n");
    }
    return NULL;
}

/* Checks the 101 answer. Returns the header's length, 0 when more is
 * needed, -1 after taking the connection down. */
static ssize_t parse_upgrade(struct conn *c, const unsigned char *p,
                             size_t n)
{
    char resp[2048];
    const char *end, *v;
    size_t hl, vlen = 0;

    hl = n < sizeof(resp) - 1 ? n : sizeof(resp) - 1;
    memcpy(resp, p, hl);
    resp[hl] = '\0';
    end = strstr(resp, "\r\n\r\n");
    if (end == NULL) {
        if (hl == sizeof(resp) - 1) {
            conn_down(c, "handshake");
            return -1;
        }
        return 0;
    }
    if (strncmp(resp, "HTTP/1.1 101", 12) != 0 ||
        (v = header_value(resp, "sec-websocket-accept", &vlen)) == NULL ||
        vlen != strlen(c->accept) || memcmp(v, c->accept, vlen) != 0) {
        conn_down(c, "handshake");
        return -1;
    }
    c->w->handshaking--;
    hist_add(&c->w->h_connect, mono_us() - c->connect_us);
    send_hello(c);
    timer_at(c->w, c, mono_ms() + WELCOME_DEADLINE_MS);
    return end + 4 - resp;
}

/* ---------------------------------------------------------------------
 * Reading
 * ------------------------------------------------------------------ */

/* Consumes what can be parsed of p; keeps the rest in the connection. */
static int consume(struct conn *c, const unsigned char *p, size_t n)
{
    size_t off = 0;
    ssize_t used;

    if (c->state == ST_HANDSHAKE) {
        used = parse_upgrade(c, p, n);
        if (used <= 0)
            goto keep;
        off = (size_t)used;
    }
    used = parse_frames(c, p + off, n - off);
    if (used < 0)
        return LOAD_ERR;
    off += (size_t)used;

keep:
    if (used < 0)
        return LOAD_ERR;
    c->rlen = n - off;
    if (c->rlen == 0)
        return LOAD_OK;
    if (c->rlen > c->rcap) {
        c->rcap = c->rlen < 512 ? 512 : c->rlen;
        c->rbuf = xrealloc(c->rbuf, c->rcap);
    }
    memmove(c->rbuf, p + off, c->rlen);
    return LOAD_OK;
}

static void on_readable(struct conn *c)
{
    struct worker *w = c->w;
    ssize_t n;

    for (;;) {
        n = recv(c->fd, w->rx, sizeof(w->rx), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0)
            break;
        if (c->rlen > 0) {
            /* Rare: a frame split across reads; join it with the rest. */
            if (c->rlen + (size_t)n > c->rcap) {
                c->rcap = c->rlen + (size_t)n;
                c->rbuf = xrealloc(c->rbuf, c->rcap);
            }
            memcpy(c->rbuf + c->rlen, w->rx, (size_t)n);
            n += (ssize_t)c->rlen;
            c->rlen = 0;
            if (consume(c, c->rbuf, (size_t)n) != LOAD_OK)
                return;
        } else if (consume(c, w->rx, (size_t)n) != LOAD_OK) {
            return;
        }
        if (conn_flush(c) != LOAD_OK)
            return;
        if ((size_t)n < sizeof(w->rx))
            return;
    }
    if (c->state == ST_CLOSING) {
        w->closes_expected++;
        conn_down(c, NULL);
    } else {
        conn_down(c, n == 0 ? "eof" : errno == ECONNRESET ? "reset"
                                                           : "read");
    }
}

/* ---------------------------------------------------------------------
 * Connection lifecycle
 * ------------------------------------------------------------------ */

static void conn_start(struct conn *c)
{
    struct worker *w = c->w;
    struct sockaddr_in sa;
    struct epoll_event ev;
    int one = 1;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        err_add(w, "socket");
        c->state = ST_DONE;
        return;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (opt.src_ips > 1) {
        /* Several loopback sources give room for more than one port
         * range's worth of connections. */
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one,
                   sizeof(one));
        sa.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(c->idx %
                                                           opt.src_ips));
        bind(c->fd, (struct sockaddr *)&sa, sizeof(sa));
    }
    sa.sin_port = htons((uint16_t)opt.port);
    inet_pton(AF_INET, opt.host, &sa.sin_addr);
    c->connect_us = mono_us();
    c->state = ST_CONNECTING;
    c->want_out = 1;
    c->wlen = c->rlen = 0;
    c->seq = c->acked = 0;
    memset(c->ring, 0, sizeof(*c->ring) * ring_size);
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.ptr = c;
    epoll_ctl(w->ep, EPOLL_CTL_ADD, c->fd, &ev);
    w->handshaking++;
    atomic_fetch_add_explicit(&w->live.open, 1, memory_order_relaxed);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 &&
        errno != EINPROGRESS) {
        conn_down(c, "connect");
        return;
    }
    timer_at(w, c, mono_ms() + CONNECT_DEADLINE_MS);
}

/* Closes the socket; error names what went wrong (NULL: nothing did). A
 * learner whose connection broke comes back with its session id. */
static void conn_down(struct conn *c, const char *error)
{
    struct worker *w = c->w;
    int was = c->state;

    if (c->fd < 0)
        return;
    if (error != NULL)
        err_add(w, error);
    if (was == ST_CONNECTING || was == ST_HANDSHAKE)
        w->handshaking--;
    if (was == ST_OPEN)
        atomic_fetch_sub_explicit(&w->live.welcomed, 1,
                                  memory_order_relaxed);
    timer_cancel(w, c);
    close(c->fd);
    c->fd = -1;
    c->want_out = 0;
    c->wlen = c->rlen = 0;
    atomic_fetch_sub_explicit(&w->live.open, 1, memory_order_relaxed);
    if (opt.reconnect && was != ST_CLOSING &&
        atomic_load(&phase) < PHASE_DRAIN) {
        c->state = ST_WAIT;
        w->reconnects++;
        timer_at(w, c, mono_ms() + 1000 +
                 (int64_t)(rng_unit(&w->rng) * 1000));
    } else {
        c->state = ST_DONE;
    }
}

static void on_connected(struct conn *c)
{
    int soerr = 0;
    socklen_t sl = sizeof(soerr);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 ||
        soerr != 0) {
        conn_down(c, soerr == ECONNREFUSED ? "refused" : "connect");
        return;
    }
    send_upgrade(c);
    conn_flush(c);
}

static void on_event(struct conn *c, uint32_t events)
{
    if (c->fd < 0)
        return;
    if (c->state == ST_CONNECTING) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            on_connected(c);
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        on_readable(c);
        if (c->fd < 0)
            return;
    }
    if ((events & EPOLLOUT) && c->wlen > 0)
        conn_flush(c);
}

static void on_timer(struct conn *c, int64_t now_ms)
{
    struct worker *w = c->w;

    switch (c->state) {
    case ST_WAIT:
        if (atomic_load(&phase) < PHASE_DRAIN)
            conn_start(c);
        else
            c->state = ST_DONE;
        break;
    case ST_CONNECTING:
    case ST_HANDSHAKE:
        conn_down(c, "connect_timeout");
        break;
    case ST_HELLO:
        conn_down(c, "welcome_timeout");
        break;
    case ST_OPEN:
        if (closed_loop()) {
            if (c->seq > c->acked && now_ms - c->progress_ms >= STALL_MS)
                err_add(w, "ack_stall");
            timer_at(w, c, now_ms + STALL_MS);
        } else if (atomic_load(&phase) < PHASE_DRAIN) {
            send_heartbeat(c);
            if (conn_flush(c) == LOAD_OK)
                timer_at(w, c, now_ms + next_interval(c));
        }
        break;
    default:
        break;
    }
}

/* ---------------------------------------------------------------------
 * Worker threads
 * ------------------------------------------------------------------ */

/* Starts connections at this worker's share of the ramp rate. */
static void ramp(struct worker *w, int64_t now_ms)
{
    double share = opt.rate / opt.threads;
    int allowed = (int)((double)(now_ms - w->t0_ms) * share / 1000.0) + 1;

    if (allowed > w->nconns)
        allowed = w->nconns;
    while (w->started < allowed && w->handshaking < MAX_HANDSHAKING)
        conn_start(&w->conns[w->started++]);
}

/* Sends a close frame on every open connection, once. */
static void close_all(struct worker *w)
{
    static const unsigned char normal[2] = {0x03, 0xe8};

    for (int i = 0; i < w->nconns; i++) {
        struct conn *c = &w->conns[i];

        if (c->state == ST_OPEN || c->state == ST_HELLO) {
            frame_append(c, 0x8, normal, sizeof(normal));
            c->state = ST_CLOSING;
            timer_cancel(w, c);
            conn_flush(c);
        } else if (c->fd >= 0) {
            conn_down(c, NULL);
        } else {
            timer_cancel(w, c);
            c->state = ST_DONE;
        }
    }
}

static void follow_phase(struct worker *w, int64_t now_ms)
{
    int p = atomic_load(&phase);

    if (p != w->seen_phase && p == PHASE_MEASURE)
        memset(&w->h_hb, 0, sizeof(w->h_hb));
    if (p != w->seen_phase && p == PHASE_CLOSE) {
        close_all(w);
        w->close_deadline_ms = now_ms + 3000;
    }
    w->seen_phase = p;
    if (p <= PHASE_MEASURE)
        ramp(w, now_ms);
    if (p == PHASE_CLOSE &&
        (atomic_load(&w->live.open) == 0 || now_ms > w->close_deadline_ms)) {
        for (int i = 0; i < w->nconns; i++) {
            if (w->conns[i].fd >= 0)
                conn_down(&w->conns[i], NULL);
        }
        w->exiting = 1;
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event evs[512];

    w->t0_ms = mono_ms();
    w->wheel_ms = w->t0_ms;
    while (!w->exiting) {
        int n = epoll_wait(w->ep, evs, 512, 1);

        for (int i = 0; i < n; i++)
            on_event(evs[i].data.ptr, evs[i].events);
        wheel_advance(w, mono_ms());
        follow_phase(w, mono_ms());
    }
    return NULL;
}

/* ---------------------------------------------------------------------
 * Outside the loops: /proc, HTTP and Redis, photographs
 * ------------------------------------------------------------------ */

/* /proc files stay open once read: with every descriptor but a few
 * taken by connections, opening them again mid-run could fail. */
#define PROC_CACHE 80

static struct {
    char path[64];
    int fd;
} proc_cache[PROC_CACHE];
static int nproc_cache;

static ssize_t proc_read(const char *path, char *buf, size_t n)
{
    int i, fd = -1;
    ssize_t got;

    for (i = 0; i < nproc_cache; i++) {
        if (strcmp(proc_cache[i].path, path) == 0) {
            fd = proc_cache[i].fd;
            break;
        }
    }
    if (fd < 0) {
        if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
            return -1;
        if (nproc_cache < PROC_CACHE) {
            snprintf(proc_cache[nproc_cache].path,
                     sizeof(proc_cache[0].path), "%s", path);
            proc_cache[nproc_cache++].fd = fd;
        }
    }
    got = pread(fd, buf, n - 1, 0);
    if (i == nproc_cache && nproc_cache == PROC_CACHE)
        close(fd);
    buf[got > 0 ? got : 0] = '\0';
    return got;
}

static long proc_rss_kib(int pid)
{
    char path[64], buf[4096];
    const char *line;

    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    if (proc_read(path, buf, sizeof(buf)) <= 0 ||
        (line = strstr(buf, "\nVmRSS:")) == NULL)
        return -1;
    return strtol(line + 7, NULL, 10);
}

/* utime + stime of a /proc stat file, in clock ticks; -1 if unreadable. */
static long long proc_ticks(const char *path)
{
    char buf[1024], *close_p, *p;
    unsigned long long ut = 0, st = 0;

    if (proc_read(path, buf, sizeof(buf)) <= 0 ||
        (close_p = strrchr(buf, ')')) == NULL)
        return -1;

    /* Fields 14 and 15, counting from the state (field 3). */
    p = close_p + 2;
    for (int field = 3; field < 14 && p != NULL; field++) {
        p = strchr(p, ' ');
        if (p != NULL)
            p++;
    }
    if (p == NULL || sscanf(p, "%llu %llu", &ut, &st) != 2)
        return -1;
    return (long long)(ut + st);
}

static long long pid_ticks(int pid)
{
    char path[64];

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    return proc_ticks(path);
}

#define MAX_TASKS 64

struct task_sample {
    int n;
    int tid[MAX_TASKS];
    long long ticks[MAX_TASKS];
    char role[MAX_TASKS][24];
};

/* What a thread waits in says what it is: lws's loop polls, libevent's
 * core waits in epoll, workers on a futex, the acceptor in accept4. The
 * daemon names its network threads (proctord-netN): under libuv or libev
 * they wait in epoll like the core, and the name tells them apart. */
static void task_role(int pid, int tid, char *out, size_t n)
{
    char path[96], buf[64];
    long nr = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/task/%d/comm", pid, tid);
    if ((f = fopen(path, "r")) != NULL) {
        int named = fgets(buf, sizeof(buf), f) != NULL &&
                    strncmp(buf, "proctord-net", 12) == 0;

        fclose(f);
        if (named) {
            snprintf(out, n, "net");
            return;
        }
    }

    snprintf(path, sizeof(path), "/proc/%d/task/%d/syscall", pid, tid);
    if ((f = fopen(path, "r")) != NULL) {
        if (fgets(buf, sizeof(buf), f) != NULL)
            nr = strtol(buf, NULL, 10);
        fclose(f);
    }
    snprintf(out, n, "%s", nr == 7 ? "poll" : nr == 232 || nr == 281
                               ? "epoll" : nr == 202 ? "futex"
                               : nr == 288 || nr == 43 ? "accept"
                               : nr == 271 ? "ppoll" : "running");
}

/* Lists the threads (with roles) when list is set; otherwise samples
 * again the threads of s. */
static void sample_tasks(int pid, struct task_sample *s, int list)
{
    char path[96];
    DIR *d;
    struct dirent *e;

    if (list) {
        s->n = 0;
        snprintf(path, sizeof(path), "/proc/%d/task", pid);
        if ((d = opendir(path)) == NULL)
            return;
        while ((e = readdir(d)) != NULL && s->n < MAX_TASKS) {
            int tid = atoi(e->d_name);

            if (tid <= 0)
                continue;
            s->tid[s->n] = tid;
            task_role(pid, tid, s->role[s->n], sizeof(s->role[s->n]));
            s->n++;
        }
        closedir(d);
    }
    for (int i = 0; i < s->n; i++) {
        snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", pid,
                 s->tid[i]);
        s->ticks[i] = proc_ticks(path);
    }
}

static int tcp_connect(const char *host, int port)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {10, 0};

    if (fd < 0)
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &sa.sin_addr);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;

    while (n > 0) {
        ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
        if (k <= 0)
            return LOAD_ERR;
        c += k;
        n -= (size_t)k;
    }
    return LOAD_OK;
}

/* Reads until the peer closes; a NUL-terminated malloc'd buffer. */
static char *read_all(int fd, size_t *len)
{
    size_t cap = 65536, n = 0;
    char *buf = xrealloc(NULL, cap);
    ssize_t k;

    while ((k = recv(fd, buf + n, cap - n - 1, 0)) > 0) {
        n += (size_t)k;
        if (cap - n < 4096) {
            cap *= 2;
            buf = xrealloc(buf, cap);
        }
    }
    buf[n] = '\0';
    if (len != NULL)
        *len = n;
    return buf;
}

/* One HTTP/1.1 request (Connection: close). Returns the status code, or
 * -1; *resp (caller frees) gets the whole answer when asked for. */
static int http_request(const char *method, const char *path,
                        const char *token, const void *body, size_t blen,
                        char **resp)
{
    char head[2048], *answer;
    int fd, status = -1, n;

    if ((fd = tcp_connect(opt.http_host, opt.http_port)) < 0)
        return -1;
    n = snprintf(head, sizeof(head),
                 "%s %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n"
                 "%s%s%sContent-Type: image/jpeg\r\n"
                 "Content-Length: %zu\r\n\r\n", method, path, opt.http_host,
                 opt.http_port, token ? "Authorization: Bearer " : "",
                 token ? token : "", token ? "\r\n" : "", blen);
    if (write_all(fd, head, (size_t)n) == LOAD_OK &&
        (blen == 0 || write_all(fd, body, blen) == LOAD_OK)) {
        answer = read_all(fd, NULL);
        sscanf(answer, "HTTP/1.%*d %d", &status);
        if (resp != NULL)
            *resp = answer;
        else
            free(answer);
    }
    close(fd);
    return status;
}

/* The sum of a Prometheus metric's samples (name may carry labels). */
static double metric_sum(const char *text, const char *name)
{
    size_t nl = strlen(name);
    const char *line = text;
    double total = 0;

    while (line != NULL && *line != '\0') {
        if (strncmp(line, name, nl) == 0 &&
            (line[nl] == ' ' || (line[nl] == '{' && strchr(name, '{') ==
                                                        NULL))) {
            const char *sp = strchr(line, ' ');
            const char *eol = strchr(line, '\n');
            while (sp != NULL && eol != NULL && strchr(sp + 1, ' ') != NULL &&
                   strchr(sp + 1, ' ') < eol)
                sp = strchr(sp + 1, ' ');
            if (sp != NULL)
                total += strtod(sp + 1, NULL);
        }
        line = strchr(line, '\n');
        if (line != NULL)
            line++;
    }
    return total;
}

#define NMETRICS 7
static const char *const metric_names[NMETRICS] = {
    "proctord_redis_commands_total",
    "proctord_messages_in_total{kind=\"heartbeat\"}",
    "proctord_messages_out_total",
    "proctord_queue_refused_total",
    "proctord_flags_opened_total",
    "proctord_connections_open",
    "proctord_redis_errors_total",
};

static int scrape(double *out)
{
    char *text = NULL;

    if (opt.http_port == 0 ||
        http_request("GET", "/metrics", NULL, NULL, 0, &text) != 200) {
        free(text);
        return LOAD_ERR;
    }
    for (int i = 0; i < NMETRICS; i++)
        out[i] = metric_sum(text, metric_names[i]);
    free(text);
    return LOAD_OK;
}

/* Redis's own command counts ("INFO commandstats"), as name=calls pairs
 * in a malloc'd string. */
static char *redis_commandstats(void)
{
    static const char cmd[] = "INFO commandstats\r\nQUIT\r\n";
    char *text, *out;
    size_t len, o = 0;
    int fd;

    if (opt.redis_port == 0 ||
        (fd = tcp_connect(opt.redis_host, opt.redis_port)) < 0)
        return NULL;
    if (write_all(fd, cmd, strlen(cmd)) != LOAD_OK) {
        close(fd);
        return NULL;
    }
    text = read_all(fd, &len);
    close(fd);
    out = xrealloc(NULL, len + 1);
    for (char *p = strstr(text, "cmdstat_"); p != NULL;
         p = strstr(p + 1, "cmdstat_")) {
        char name[64];
        unsigned long long calls;

        if (sscanf(p, "cmdstat_%63[^:]:calls=%llu", name, &calls) == 2)
            o += (size_t)sprintf(out + o, "%s=%llu ", name, calls);
    }
    out[o] = '\0';
    free(text);
    return out;
}

static unsigned long long stat_of(const char *stats, const char *name)
{
    char key[80];
    const char *p;

    if (stats == NULL)
        return 0;
    snprintf(key, sizeof(key), "%s=", name);
    for (p = strstr(stats, key); p != NULL; p = strstr(p + 1, key)) {
        if (p == stats || p[-1] == ' ')
            return strtoull(p + strlen(key), NULL, 10);
    }
    return 0;
}

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long n;

    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = xrealloc(NULL, n > 0 ? (size_t)n : 1);
    *len = fread(buf, 1, (size_t)n, f);
    fclose(f);
    return buf;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted entries of a directory whose names end in suffix (NULL: any
 * subdirectory). Returns the count; names[] are malloc'd. */
static int list_dir(const char *dir, const char *suffix, char **names,
                    int max)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    if (d == NULL)
        return 0;
    while ((e = readdir(d)) != NULL && n < max) {
        char path[1024];
        struct stat st;
        size_t l = strlen(e->d_name), sl = suffix ? strlen(suffix) : 0;

        if (e->d_name[0] == '.' || e->d_name[0] == '_')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0)
            continue;
        if (suffix == NULL ? !S_ISDIR(st.st_mode)
                           : (l < sl ||
                              strcasecmp(e->d_name + l - sl, suffix) != 0))
            continue;
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof(*names), cmp_str);
    return n;
}

/* One person per subdirectory of dir, up to MAX_PHOTOS JPEGs each. */
static int load_people(const char *dir)
{
    char *dirs[MAX_PEOPLE], *files[MAX_PHOTOS], path[1024];
    int nd = list_dir(dir, NULL, dirs, MAX_PEOPLE);

    for (int i = 0; i < nd; i++) {
        struct person *p = &people[npeople];
        int nf;

        snprintf(path, sizeof(path), "%s/%s", dir, dirs[i]);
        nf = list_dir(path, ".jpg", files, MAX_PHOTOS);
        snprintf(p->name, sizeof(p->name), "%s", dirs[i]);
        p->enrol = -1;
        for (int k = 0; k < nf; k++) {
            char fpath[2048];

            snprintf(fpath, sizeof(fpath), "%s/%s", path, files[k]);
            p->photo[p->n] = read_file(fpath, &p->len[p->n]);
            if (p->photo[p->n] != NULL)
                p->n++;
            free(files[k]);
        }
        if (p->n >= 2)
            npeople++;
        free(dirs[i]);
    }
    return npeople > 0 ? LOAD_OK : LOAD_ERR;
}

/* Enrols one learner: the person's photo that enrolled before, or the
 * first that has exactly one face (422 means none or several). Returns
 * the HTTP status. */
static int enrol_one(const char *token, int idx)
{
    struct person *p = &people[idx % npeople];
    char id[96], path[256];
    int status = -1;

    learner_id(idx, id, sizeof(id));
    snprintf(path, sizeof(path), "/v1/learners/%s/enrollment", id);
    for (int k = p->enrol >= 0 ? p->enrol : 0; k < p->n; k++) {
        status = http_request("PUT", path, token, p->photo[k], p->len[k],
                              NULL);
        if (status == 201 || status == 200) {
            p->enrol = k;
            break;
        }
        if (status != 422 || p->enrol >= 0)
            break;
    }
    if (status != 201 && status != 200)
        fprintf(stderr, "proctord_load: enrol %s: HTTP %d\n", id, status);
    return status;
}

/* Enrols learner i as person i mod people, one by one before the run. */
static int enrol_all(void)
{
    char body[256], token[1024];
    long long now = (long long)(wall_ms() / 1000);
    int failed = 0;

    snprintf(body, sizeof(body),
             "{\"sub\":\"platform-load\",\"scope\":\"platform\","
             "\"iat\":%lld,\"exp\":%lld}", now, now + 86400);
    make_token(body, token, sizeof(token));
    for (int i = 0; i < opt.sessions; i++) {
        int status = enrol_one(token, i);
        failed += status != 201 && status != 200;
    }
    return failed;
}

/* ---------------------------------------------------------------------
 * The run: ramp, settle, measure, drain, close; then the report
 * ------------------------------------------------------------------ */

struct sample {
    int64_t at_ms;
    uint64_t hb_sent, hb_acked, errors;
    long long daemon_ticks, redis_ticks;
    double self_cpu_s;
    double metrics[NMETRICS];
    int have_metrics;
    char *cmdstats;             /* owned */
    struct task_sample tasks;
};

struct report {
    struct hist h_connect, h_welcome, h_hb, h_verdict;
    struct err_kind errs[MAX_ERR_KINDS];
    uint64_t status_other, challenges, snapshots_sent, reconnects;
    uint64_t closes_expected, error_msgs, verdicts[16];
    uint64_t hb_sent, hb_acked, errors;
    double ramp_s, window_s;
    uint64_t welcomed_at_ramp;
    long rss0, rss_n, rss_max;
    uint64_t per_sec[MAX_SECONDS];
    uint64_t per_sec_sent[MAX_SECONDS];
    int nsec;
};

static struct worker *workers;
static struct report rep;

/* The daemon's threads as they wait before the load begins. */
static struct task_sample idle_tasks;

static const char *role_of(int tid)
{
    for (int i = 0; i < idle_tasks.n; i++) {
        if (idle_tasks.tid[i] == tid)
            return idle_tasks.role[i];
    }
    return "new";
}

static void sum_live(uint64_t *sent, uint64_t *acked, uint64_t *welcomed,
                     uint64_t *errors, int64_t *open)
{
    *sent = *acked = *welcomed = *errors = 0;
    *open = 0;
    for (int i = 0; i < opt.threads; i++) {
        struct live *l = &workers[i].live;
        *sent += atomic_load(&l->hb_sent);
        *acked += atomic_load(&l->hb_acked);
        *welcomed += atomic_load(&l->welcomed_once);
        *errors += atomic_load(&l->errors);
        *open += atomic_load(&l->welcomed);
    }
}

static double self_cpu_s(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void take_sample(struct sample *s)
{
    uint64_t welcomed;
    int64_t open;

    memset(s, 0, sizeof(*s));
    s->at_ms = mono_ms();
    sum_live(&s->hb_sent, &s->hb_acked, &welcomed, &s->errors, &open);
    s->daemon_ticks = opt.pid ? pid_ticks(opt.pid) : -1;
    s->redis_ticks = opt.redis_pid ? pid_ticks(opt.redis_pid) : -1;
    s->self_cpu_s = self_cpu_s();
    s->have_metrics = scrape(s->metrics) == LOAD_OK;
    s->cmdstats = redis_commandstats();
    s->tasks = idle_tasks;
    if (opt.pid)
        sample_tasks(opt.pid, &s->tasks, 0);
}

static void progress(const char *what, int64_t t0)
{
    uint64_t sent, acked, welcomed, errors;
    int64_t open;

    if (opt.quiet)
        return;
    sum_live(&sent, &acked, &welcomed, &errors, &open);
    fprintf(stderr, "[%6.1fs] %s: open=%lld welcomed=%llu hb_sent=%llu "
            "hb_acked=%llu errors=%llu rss=%ldKiB\n",
            (double)(mono_ms() - t0) / 1000.0, what, (long long)open,
            (unsigned long long)welcomed, (unsigned long long)sent,
            (unsigned long long)acked, (unsigned long long)errors,
            opt.pid ? proc_rss_kib(opt.pid) : 0L);
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !interrupted)
        ;
}

static void run_ramp(int64_t t0)
{
    uint64_t sent, acked, welcomed, errors;
    int64_t open, last = t0;

    for (;;) {
        sum_live(&sent, &acked, &welcomed, &errors, &open);
        if (welcomed >= (uint64_t)opt.sessions || interrupted ||
            mono_ms() - t0 > opt.ramp_timeout_ms)
            break;
        if (mono_ms() - last >= 5000) {
            progress("ramp", t0);
            last = mono_ms();
        }
        sleep_ms(50);
    }
    rep.ramp_s = (double)(mono_ms() - t0) / 1000.0;
    rep.welcomed_at_ramp = welcomed;
}

static void run_measure(int64_t t0, struct sample *a, struct sample *b)
{
    uint64_t sent, acked, welcomed, errors, prev, prev_sent;
    int64_t open, start, next;

    take_sample(a);
    rep.rss_max = opt.pid ? proc_rss_kib(opt.pid) : 0;
    atomic_store(&phase, PHASE_MEASURE);
    start = mono_ms();
    prev = a->hb_acked;
    prev_sent = a->hb_sent;
    next = start + 1000;
    while (mono_ms() - start < opt.duration_ms && !interrupted) {
        long rss;

        sleep_ms(next - mono_ms() > 0 ? next - mono_ms() : 0);
        next += 1000;
        sum_live(&sent, &acked, &welcomed, &errors, &open);
        if (rep.nsec < MAX_SECONDS) {
            rep.per_sec_sent[rep.nsec] = sent - prev_sent;
            rep.per_sec[rep.nsec++] = acked - prev;
        }
        prev = acked;
        prev_sent = sent;
        rss = opt.pid ? proc_rss_kib(opt.pid) : 0;
        if (rss > rep.rss_max)
            rep.rss_max = rss;
        if (rep.nsec % 10 == 0)
            progress("measure", t0);
    }
    take_sample(b);
    rep.window_s = (double)(b->at_ms - a->at_ms) / 1000.0;
    rep.rss_n = opt.pid ? proc_rss_kib(opt.pid) : 0;
}

static void merge_workers(void)
{
    for (int i = 0; i < opt.threads; i++) {
        struct worker *w = &workers[i];

        hist_merge(&rep.h_connect, &w->h_connect);
        hist_merge(&rep.h_welcome, &w->h_welcome);
        hist_merge(&rep.h_hb, &w->h_hb);
        hist_merge(&rep.h_verdict, &w->h_verdict);
        err_merge(rep.errs, w->errs);
        rep.status_other += w->status_other;
        rep.challenges += w->challenges;
        rep.snapshots_sent += w->snapshots_sent;
        rep.reconnects += w->reconnects;
        rep.closes_expected += w->closes_expected;
        rep.error_msgs += w->error_msgs;
        for (int k = 0; k < 16; k++)
            rep.verdicts[k] += w->verdicts[k];
        rep.hb_sent += atomic_load(&w->live.hb_sent);
        rep.hb_acked += atomic_load(&w->live.hb_acked);
        rep.errors += atomic_load(&w->live.errors);
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static double per_sec_quantile(double q)
{
    uint64_t sorted[MAX_SECONDS];

    if (rep.nsec == 0)
        return 0;
    memcpy(sorted, rep.per_sec, sizeof(uint64_t) * (size_t)rep.nsec);
    qsort(sorted, (size_t)rep.nsec, sizeof(uint64_t), cmp_u64);
    return (double)sorted[(int)(q * (rep.nsec - 1))];
}

static void print_hist(FILE *f, const char *name, const struct hist *h)
{
    fprintf(f, "%-22s n=%llu p50=%.2f p90=%.2f p99=%.2f p99.9=%.2f "
            "max=%.2f ms\n", name, (unsigned long long)h->count,
            hist_ms(h, 0.5), hist_ms(h, 0.9), hist_ms(h, 0.99),
            hist_ms(h, 0.999), (double)h->max_us / 1000.0);
}

static void json_hist(FILE *f, const char *name, const struct hist *h)
{
    fprintf(f, "\"%s\":{\"n\":%llu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,"
            "\"p999\":%.3f,\"max\":%.3f},", name, (unsigned long long)h->count,
            hist_ms(h, 0.5), hist_ms(h, 0.9), hist_ms(h, 0.99),
            hist_ms(h, 0.999), (double)h->max_us / 1000.0);
}

static double cpu_pct(long long t0, long long t1)
{
    if (t0 < 0 || t1 < 0 || rep.window_s <= 0)
        return -1;
    return (double)(t1 - t0) / (double)sysconf(_SC_CLK_TCK) /
           rep.window_s * 100.0;
}

static const char *const outcome_names[] = {
    "MATCH", "MISMATCH", "NO_FACE", "MULTIPLE_FACES", "BAD_IMAGE", "LATE",
    "REPLAYED", "SPOOF", "LOW_QUALITY", "NOT_ENROLLED"};

/* Redis commands by name over the window, as "name=n ..." */
static void cmdstats_delta(const struct sample *a, const struct sample *b,
                           char *out, size_t n)
{
    size_t o = 0;
    const char *p = b->cmdstats;

    out[0] = '\0';
    while (p != NULL && *p != '\0' && o + 64 < n) {
        char name[64];
        unsigned long long calls, before;

        if (sscanf(p, "%63[^=]=%llu", name, &calls) != 2)
            break;
        before = stat_of(a->cmdstats, name);
        if (calls > before)
            o += (size_t)snprintf(out + o, n - o, "%s%s=%llu",
                                  o ? " " : "", name, calls - before);
        p = strchr(p, ' ');
        if (p != NULL)
            p++;
    }
}

static void report_text(FILE *f, const struct sample *a,
                        const struct sample *b)
{
    double rate = rep.window_s > 0
                  ? (double)(b->hb_acked - a->hb_acked) / rep.window_s : 0;
    double redis_cmds = b->metrics[0] - a->metrics[0];
    double hbs = b->metrics[1] - a->metrics[1];
    char cmds[2048];

    fprintf(f, "target ws://%s:%d%s sessions=%d rate=%.0f/s interval=%lldms"
            " window=%d threads=%d\n", opt.host, opt.port, opt.path,
            opt.sessions, opt.rate, (long long)opt.interval_ms, opt.window,
            opt.threads);
    fprintf(f, "ramp: %llu of %d welcomed in %.1f s\n",
            (unsigned long long)rep.welcomed_at_ramp, opt.sessions,
            rep.ramp_s);
    print_hist(f, "connect->101", &rep.h_connect);
    print_hist(f, "hello->welcome", &rep.h_welcome);
    fprintf(f, "window: %.1f s; heartbeats acked %llu (%.0f/s; per second "
            "median %.0f, min %.0f)\n", rep.window_s,
            (unsigned long long)(b->hb_acked - a->hb_acked), rate,
            per_sec_quantile(0.5), per_sec_quantile(0));
    print_hist(f, "heartbeat->ack", &rep.h_hb);
    fprintf(f, "heartbeats sent %llu acked %llu unacked %llu; other Status "
            "%llu\n", (unsigned long long)rep.hb_sent,
            (unsigned long long)rep.hb_acked,
            (unsigned long long)(rep.hb_sent - rep.hb_acked),
            (unsigned long long)rep.status_other);
    fprintf(f, "challenges %llu snapshots %llu;",
            (unsigned long long)rep.challenges,
            (unsigned long long)rep.snapshots_sent);
    for (int k = 0; k < 10; k++) {
        if (rep.verdicts[k])
            fprintf(f, " %s=%llu", outcome_names[k],
                    (unsigned long long)rep.verdicts[k]);
    }
    fprintf(f, "\n");
    if (rep.h_verdict.count > 0)
        print_hist(f, "snapshot->verdict", &rep.h_verdict);
    fprintf(f, "errors %llu:", (unsigned long long)rep.errors);
    for (int k = 0; k < MAX_ERR_KINDS && rep.errs[k].name[0]; k++)
        fprintf(f, " %s=%llu", rep.errs[k].name,
                (unsigned long long)rep.errs[k].n);
    fprintf(f, " (Error messages %llu, reconnects %llu, clean closes "
            "%llu)\n", (unsigned long long)rep.error_msgs,
            (unsigned long long)rep.reconnects,
            (unsigned long long)rep.closes_expected);
    if (opt.pid) {
        fprintf(f, "daemon %d: RSS %ld KiB before, %ld KiB at the end "
                "(max %ld): %.0f bytes per session; CPU %.1f%%\n",
                opt.pid, rep.rss0, rep.rss_n, rep.rss_max,
                (double)(rep.rss_n - rep.rss0) * 1024.0 / opt.sessions,
                cpu_pct(a->daemon_ticks, b->daemon_ticks));
        fprintf(f, "daemon threads (CPU%% in the window):");
        for (int i = 0; i < a->tasks.n; i++) {
            for (int k = 0; k < b->tasks.n; k++) {
                if (b->tasks.tid[k] == a->tasks.tid[i])
                    fprintf(f, " %d/%s=%.1f", a->tasks.tid[i],
                            role_of(a->tasks.tid[i]), cpu_pct(a->tasks.ticks[i],
                                                      b->tasks.ticks[k]));
            }
        }
        fprintf(f, "\n");
    }
    if (opt.redis_pid)
        fprintf(f, "redis-server %d: CPU %.1f%%\n", opt.redis_pid,
                cpu_pct(a->redis_ticks, b->redis_ticks));
    fprintf(f, "load generator CPU %.1f%%\n", rep.window_s > 0
            ? (b->self_cpu_s - a->self_cpu_s) / rep.window_s * 100 : 0);
    if (a->have_metrics && b->have_metrics)
        fprintf(f, "metrics over the window: redis commands %.0f, "
                "heartbeats in %.0f: %.4f per heartbeat; flags opened %.0f; "
                "queue refused %.0f\n", redis_cmds, hbs,
                hbs > 0 ? redis_cmds / hbs : 0, b->metrics[4] - a->metrics[4],
                b->metrics[3] - a->metrics[3]);
    if (a->cmdstats != NULL && b->cmdstats != NULL) {
        cmdstats_delta(a, b, cmds, sizeof(cmds));
        fprintf(f, "redis commandstats over the window: %s\n", cmds);
    }
}

static void report_json(FILE *f, const struct sample *a,
                        const struct sample *b)
{
    double hbs = b->metrics[1] - a->metrics[1];
    char cmds[2048];

    fprintf(f, "{\"sessions\":%d,\"rate\":%.1f,\"interval_ms\":%lld,"
            "\"window\":%d,\"threads\":%d,\"ramp_s\":%.2f,"
            "\"welcomed_at_ramp\":%llu,\"window_s\":%.2f,",
            opt.sessions, opt.rate, (long long)opt.interval_ms, opt.window,
            opt.threads, rep.ramp_s,
            (unsigned long long)rep.welcomed_at_ramp, rep.window_s);
    json_hist(f, "connect", &rep.h_connect);
    json_hist(f, "welcome", &rep.h_welcome);
    json_hist(f, "heartbeat", &rep.h_hb);
    json_hist(f, "verdict", &rep.h_verdict);
    fprintf(f, "\"hb_rate\":%.1f,\"hb_rate_sec_median\":%.1f,"
            "\"hb_rate_sec_min\":%.1f,\"hb_sent\":%llu,\"hb_acked\":%llu,"
            "\"status_other\":%llu,\"challenges\":%llu,\"snapshots\":%llu,",
            rep.window_s > 0 ? (double)(b->hb_acked - a->hb_acked) /
                               rep.window_s : 0,
            per_sec_quantile(0.5), per_sec_quantile(0),
            (unsigned long long)rep.hb_sent, (unsigned long long)rep.hb_acked,
            (unsigned long long)rep.status_other,
            (unsigned long long)rep.challenges,
            (unsigned long long)rep.snapshots_sent);
    fprintf(f, "\"verdicts\":{");
    for (int k = 0, first = 1; k < 10; k++) {
        if (rep.verdicts[k]) {
            fprintf(f, "%s\"%s\":%llu", first ? "" : ",", outcome_names[k],
                    (unsigned long long)rep.verdicts[k]);
            first = 0;
        }
    }
    fprintf(f, "},\"errors\":%llu,\"error_kinds\":{",
            (unsigned long long)rep.errors);
    for (int k = 0; k < MAX_ERR_KINDS && rep.errs[k].name[0]; k++)
        fprintf(f, "%s\"%s\":%llu", k ? "," : "", rep.errs[k].name,
                (unsigned long long)rep.errs[k].n);
    fprintf(f, "},\"reconnects\":%llu,\"rss0_kib\":%ld,\"rss_n_kib\":%ld,"
            "\"rss_max_kib\":%ld,\"rss_per_session_bytes\":%.1f,"
            "\"daemon_cpu_pct\":%.1f,\"redis_cpu_pct\":%.1f,"
            "\"load_cpu_pct\":%.1f,\"threads_cpu\":[",
            (unsigned long long)rep.reconnects, rep.rss0, rep.rss_n,
            rep.rss_max,
            (double)(rep.rss_n - rep.rss0) * 1024.0 / opt.sessions,
            cpu_pct(a->daemon_ticks, b->daemon_ticks),
            cpu_pct(a->redis_ticks, b->redis_ticks),
            rep.window_s > 0 ? (b->self_cpu_s - a->self_cpu_s) /
                               rep.window_s * 100 : 0);
    for (int i = 0, first = 1; i < a->tasks.n; i++) {
        for (int k = 0; k < b->tasks.n; k++) {
            if (b->tasks.tid[k] != a->tasks.tid[i])
                continue;
            fprintf(f, "%s{\"tid\":%d,\"role\":\"%s\",\"cpu_pct\":%.1f}",
                    first ? "" : ",", a->tasks.tid[i],
                    role_of(a->tasks.tid[i]),
                    cpu_pct(a->tasks.ticks[i], b->tasks.ticks[k]));
            first = 0;
        }
    }
    cmds[0] = '\0';
    if (a->cmdstats != NULL && b->cmdstats != NULL)
        cmdstats_delta(a, b, cmds, sizeof(cmds));
    fprintf(f, "],\"per_second\":[");
    for (int i = 0; i < rep.nsec; i++)
        fprintf(f, "%s%llu", i ? "," : "", (unsigned long long)rep.per_sec[i]);
    fprintf(f, "],\"per_second_sent\":[");
    for (int i = 0; i < rep.nsec; i++)
        fprintf(f, "%s%llu", i ? "," : "",
                (unsigned long long)rep.per_sec_sent[i]);
    fprintf(f, "],\"redis_commands\":%.0f,\"heartbeats_in\":%.0f,"
            "\"redis_per_heartbeat\":%.5f,\"flags_opened\":%.0f,"
            "\"queue_refused\":%.0f,\"redis_cmdstats\":\"%s\"}\n",
            b->metrics[0] - a->metrics[0], hbs,
            hbs > 0 && b->have_metrics ? (b->metrics[0] - a->metrics[0]) / hbs
                                       : -1,
            b->metrics[4] - a->metrics[4], b->metrics[3] - a->metrics[3],
            cmds);
}

/* ---------------------------------------------------------------------
 * Options
 * ------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
"usage: proctord_load [options]\n"
"  --url ws://HOST:PORT/PATH  target (ws://127.0.0.1:8765/v1/learn)\n"
"  --sessions N               simulated learners (100)\n"
"  --rate N                   connections started per second (500)\n"
"  --duration D               measurement window after the ramp (10s)\n"
"  --settle D                 wait between ramp and window (2s)\n"
"  --interval D               heartbeat period per learner (10s); 0: closed\n"
"                             loop, --window heartbeats in flight each\n"
"  --window N                 closed loop: heartbeats in flight (1)\n"
"  --jitter F                 heartbeat period +- F (0.1)\n"
"  --hold                     idle sessions: interval 10s unless given;\n"
"                             reports RSS per session\n"
"  --secret S                 auth.jwt_secret (required)\n"
"  --prefix P --course C --org O  learner ids P-<n> (load), claims\n"
"  --snapshots DIR            answer challenges with JPEGs of DIR/<person>/\n"
"  --enrol                    first PUT a photo of each learner's person\n"
"                             (the first with one face; needs --http)\n"
"  --http HOST:PORT           the daemon's HTTP API (/metrics, enrolment)\n"
"  --redis HOST:PORT          Redis, for INFO commandstats over the window\n"
"  --pid PID --redis-pid PID  processes whose RSS and CPU to report\n"
"  --threads N                load generator threads (1)\n"
"  --no-reconnect             a broken connection stays down\n"
"  --src-ips N                spread over 127.0.0.1..N as sources (1)\n"
"  --ramp-timeout D           give up waiting for the ramp (120s)\n"
"  --json FILE                also write the results as one JSON object\n"
"  --quiet                    no progress lines\n"
"Durations: 500ms, 10s, 5m; a bare number is seconds.\n");
}

static int64_t parse_duration(const char *s)
{
    char *end;
    double v = strtod(s, &end);

    if (end == s || v < 0)
        return -1;
    if (strcmp(end, "ms") == 0)
        return (int64_t)v;
    if (*end == '\0' || strcmp(end, "s") == 0)
        return (int64_t)(v * 1000);
    if (strcmp(end, "m") == 0)
        return (int64_t)(v * 60000);
    return -1;
}

static int parse_hostport(const char *s, char *host, size_t hl, int *port)
{
    const char *colon = strrchr(s, ':');
    struct in_addr a;

    if (colon == NULL || (size_t)(colon - s) >= hl)
        return LOAD_ERR;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    if (strcmp(host, "localhost") == 0)
        snprintf(host, hl, "127.0.0.1");
    *port = atoi(colon + 1);
    return *port > 0 && *port < 65536 && inet_pton(AF_INET, host, &a) == 1
           ? LOAD_OK : LOAD_ERR;
}

static int parse_url(const char *url)
{
    char hp[200];
    const char *rest, *slash;

    if (strncmp(url, "ws://", 5) != 0)
        return LOAD_ERR;
    rest = url + 5;
    slash = strchr(rest, '/');
    snprintf(hp, sizeof(hp), "%.*s",
             (int)(slash ? (size_t)(slash - rest) : strlen(rest)), rest);
    snprintf(opt.path, sizeof(opt.path), "%s", slash ? slash : "/v1/learn");
    return parse_hostport(hp, opt.host, sizeof(opt.host), &opt.port);
}

static int bad(const char *what, const char *value)
{
    fprintf(stderr, "proctord_load: bad %s \"%s\"\n", what, value);
    return LOAD_ERR;
}

static int check(int ok, const char *what, const char *value)
{
    return ok ? LOAD_OK : bad(what, value);
}

static int parse_number(int c, const char *a)
{
    switch (c) {
    case 'n':
        opt.sessions = atoi(a);
        return check(opt.sessions > 0, "--sessions", a);
    case 'r':
        opt.rate = atof(a);
        return check(opt.rate > 0, "--rate", a);
    case 'w':
        opt.window = atoi(a);
        return check(opt.window > 0 && opt.window <= RING_MAX / 4,
                     "--window", a);
    case 'j':
        opt.jitter = atof(a);
        return check(opt.jitter >= 0 && opt.jitter < 1, "--jitter", a);
    case 'P':
        opt.pid = atoi(a);
        return check(opt.pid > 0, "--pid", a);
    case 'Q':
        opt.redis_pid = atoi(a);
        return check(opt.redis_pid > 0, "--redis-pid", a);
    case 't':
        opt.threads = atoi(a);
        return check(opt.threads > 0 && opt.threads <= MAX_THREADS,
                     "--threads", a);
    case 'I':
        opt.src_ips = atoi(a);
        return check(opt.src_ips > 0 && opt.src_ips < 255, "--src-ips", a);
    default:
        return LOAD_ERR;
    }
}

static int parse_option(int c, const char *a)
{
    switch (c) {
    case 'u': return check(parse_url(a) == LOAD_OK, "--url", a);
    case 'd':
        opt.duration_ms = parse_duration(a);
        return check(opt.duration_ms > 0, "--duration", a);
    case 'S':
        opt.settle_ms = parse_duration(a);
        return check(opt.settle_ms >= 0, "--settle", a);
    case 'i':
        opt.interval_ms = parse_duration(a);
        opt.interval_set = 1;
        return check(opt.interval_ms >= 0, "--interval", a);
    case 'T':
        opt.ramp_timeout_ms = parse_duration(a);
        return check(opt.ramp_timeout_ms > 0, "--ramp-timeout", a);
    case 'h':
        return check(parse_hostport(a, opt.http_host, sizeof(opt.http_host),
                                    &opt.http_port) == LOAD_OK, "--http", a);
    case 'R':
        return check(parse_hostport(a, opt.redis_host,
                                    sizeof(opt.redis_host),
                                    &opt.redis_port) == LOAD_OK,
                     "--redis", a);
    case 'H': opt.hold = 1; return LOAD_OK;
    case 's': opt.secret = a; return LOAD_OK;
    case 'p': opt.prefix = a; return LOAD_OK;
    case 'c': opt.course = a; return LOAD_OK;
    case 'o': opt.org = a; return LOAD_OK;
    case 'J': opt.snapshots = a; return LOAD_OK;
    case 'e': opt.enrol = 1; return LOAD_OK;
    case 'N': opt.reconnect = 0; return LOAD_OK;
    case 'O': opt.json = a; return LOAD_OK;
    case 'q': opt.quiet = 1; return LOAD_OK;
    default: return parse_number(c, a);
    }
}

static int parse_args(int argc, char **argv)
{
    static const struct option longs[] = {
        {"url", 1, NULL, 'u'}, {"sessions", 1, NULL, 'n'},
        {"rate", 1, NULL, 'r'}, {"duration", 1, NULL, 'd'},
        {"settle", 1, NULL, 'S'}, {"interval", 1, NULL, 'i'},
        {"window", 1, NULL, 'w'}, {"jitter", 1, NULL, 'j'},
        {"hold", 0, NULL, 'H'}, {"secret", 1, NULL, 's'},
        {"prefix", 1, NULL, 'p'}, {"course", 1, NULL, 'c'},
        {"org", 1, NULL, 'o'}, {"snapshots", 1, NULL, 'J'},
        {"enrol", 0, NULL, 'e'}, {"http", 1, NULL, 'h'},
        {"redis", 1, NULL, 'R'}, {"pid", 1, NULL, 'P'},
        {"redis-pid", 1, NULL, 'Q'}, {"threads", 1, NULL, 't'},
        {"no-reconnect", 0, NULL, 'N'}, {"src-ips", 1, NULL, 'I'},
        {"ramp-timeout", 1, NULL, 'T'}, {"json", 1, NULL, 'O'},
        {"quiet", 0, NULL, 'q'}, {"help", 0, NULL, 'x'},
        {NULL, 0, NULL, 0}};
    int c;

    parse_url("ws://127.0.0.1:8765/v1/learn");
    opt.sessions = 100;
    opt.rate = 500;
    opt.duration_ms = 10000;
    opt.settle_ms = 2000;
    opt.interval_ms = 10000;
    opt.window = 1;
    opt.jitter = 0.1;
    opt.prefix = "load";
    opt.course = "course-load";
    opt.org = "org-load";
    opt.threads = 1;
    opt.reconnect = 1;
    opt.src_ips = 1;
    opt.ramp_timeout_ms = 120000;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        if (c == 'x') {
            usage(stdout);
            exit(0);
        }
        if (c == '?') {
            fprintf(stderr, "proctord_load: --help lists the options\n");
            return LOAD_ERR;
        }
        if (parse_option(c, optarg) != LOAD_OK)
            return LOAD_ERR;
    }
    if (optind < argc)
        return bad("argument", argv[optind]);
    if (opt.secret == NULL) {
        fprintf(stderr, "proctord_load: --secret is required\n");
        return LOAD_ERR;
    }
    if (opt.hold && !opt.interval_set)
        opt.interval_ms = 10000;
    if (opt.enrol && (opt.http_port == 0 || opt.snapshots == NULL)) {
        fprintf(stderr, "proctord_load: --enrol needs --http and "
                "--snapshots\n");
        return LOAD_ERR;
    }
    return LOAD_OK;
}

/* ---------------------------------------------------------------------
 * main
 * ------------------------------------------------------------------ */

/* Room for 4 s of heartbeats in flight (4 windows in a closed loop);
 * an ack later than that is counted, but not timed. */
static uint64_t ring_for(int64_t interval_ms, int window)
{
    uint64_t want = interval_ms > 0 ? (uint64_t)(4000 / interval_ms)
                                    : (uint64_t)window * 4;
    uint64_t n = RING_MIN;

    while (n < want && n < RING_MAX)
        n *= 2;
    return n;
}

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* Besides the connections: epoll, stdio, /proc files, /metrics and
 * Redis probes. */
#define LOAD_SPARE_FDS 64

static int setup_process(void)
{
    struct rlimit rl;

    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
        rl.rlim_cur < (rlim_t)opt.sessions + LOAD_SPARE_FDS) {
        fprintf(stderr, "proctord_load: --sessions %d needs %d descriptors;"
                " the limit is %llu (raise it: ulimit -n)\n", opt.sessions,
                opt.sessions + LOAD_SPARE_FDS,
                (unsigned long long)rl.rlim_cur);
        return LOAD_ERR;
    }
    return LOAD_OK;
}

static int start_workers(struct conn *conns)
{
    int per = opt.sessions / opt.threads, extra = opt.sessions % opt.threads;
    int next = 0;

    workers = calloc((size_t)opt.threads, sizeof(*workers));
    if (workers == NULL)
        return LOAD_ERR;
    for (int i = 0; i < opt.threads; i++) {
        struct worker *w = &workers[i];

        w->index = i;
        w->conns = conns + next;
        w->nconns = per + (i < extra);
        next += w->nconns;
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        w->rng = 0x9e3779b97f4a7c15ULL ^ ((uint64_t)mono_us() << 8) ^
                 (uint64_t)i;
        for (int k = 0; k < w->nconns; k++)
            w->conns[k].w = w;
        if (w->ep < 0 || pthread_create(&w->tid, NULL, worker_main, w))
            return LOAD_ERR;
    }
    return LOAD_OK;
}

int main(int argc, char **argv)
{
    struct sample a, b;
    struct conn *conns;
    int64_t t0;
    FILE *jf;

    if (parse_args(argc, argv) != LOAD_OK)
        return 2;
    if (setup_process() != LOAD_OK)
        return 2;
    if (opt.snapshots != NULL && load_people(opt.snapshots) != LOAD_OK) {
        fprintf(stderr, "proctord_load: no photos under %s\n",
                opt.snapshots);
        return 2;
    }
    if (opt.enrol && enrol_all() > 0)
        fprintf(stderr, "proctord_load: some enrolments failed\n");

    conns = calloc((unsigned)opt.sessions, sizeof(*conns));
    if (conns == NULL)
        return 1;
    ring_size = ring_for(opt.interval_ms, opt.window);
    for (int i = 0; i < opt.sessions; i++) {
        conns[i].ring = calloc(ring_size, sizeof(struct sent_hb));
        if (conns[i].ring == NULL)
            return 1;
        conns[i].fd = -1;
        conns[i].idx = i;
        conns[i].tslot = -1;
    }
    rep.rss0 = opt.pid ? proc_rss_kib(opt.pid) : 0;
    if (opt.pid) {
        sample_tasks(opt.pid, &idle_tasks, 1);
        pid_ticks(opt.pid);
    }
    if (opt.redis_pid)
        pid_ticks(opt.redis_pid);
    t0 = mono_ms();
    if (start_workers(conns) != LOAD_OK) {
        fprintf(stderr, "proctord_load: cannot start workers\n");
        return 1;
    }

    run_ramp(t0);
    progress("ramp done", t0);
    sleep_ms(opt.settle_ms);
    run_measure(t0, &a, &b);

    /* Let the replies in flight arrive before counting them missing. */
    atomic_store(&phase, PHASE_DRAIN);
    sleep_ms(1000);
    atomic_store(&phase, PHASE_CLOSE);
    for (int i = 0; i < opt.threads; i++)
        pthread_join(workers[i].tid, NULL);
    merge_workers();

    report_text(stdout, &a, &b);
    if (opt.json != NULL) {
        if ((jf = fopen(opt.json, "w")) == NULL) {
            perror(opt.json);
            return 1;
        }
        report_json(jf, &a, &b);
        fclose(jf);
    }
    return 0;
}
