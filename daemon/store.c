/* The Redis link and the embedded redis-server. A Redis that is down is
 * never fatal: commands fail fast with a NULL reply while the link
 * reconnects with exponential back-off, and an embedded server that
 * dies is started again. */
#include "store.h"

#include <errno.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <limits.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cluster.h"
#include "log.h"
#include "metrics.h"

#define STORE_MAX_SCRIPTS 16
#define STORE_BACKOFF_MIN_MS 100
#define STORE_BACKOFF_MAX_MS 5000
#define STORE_EMBEDDED_WAIT_MS 10000
/* A connected Redis that has answered nothing for this long while
 * commands wait is treated as down (a stopped or wedged server). */
#define STORE_STALL_MS 2000
/* Redis Cluster: masters known at most, redirections followed for one
 * try, delayed resends after TRYAGAIN / CLUSTERDOWN (50 ms doubling up
 * to 1 s, about 12 s in all: a slot's migration, a failover), and how
 * often the slot map is read again without a MOVED. The delay stays
 * under STORE_STALL_MS so that a cluster answering TRYAGAIN does not
 * count as stalled. */
#define STORE_MAX_NODES 32
#define STORE_MAX_REDIRECTS 5
#define STORE_MAX_RETRIES 16
#define STORE_RETRY_MAX_MS 1000
/* MOVED and a lost master trigger a refresh; the timer only catches
 * what neither shows (a replica promoted while its old master still
 * answers). */
#define STORE_MAP_REFRESH_MS 60000
/* A batched keep-alive script (ledger.c) is the longest command sent. */
#define STORE_MAX_ARGS 300

struct store_script {
    const char *source;
    char sha[41];
    int loaded;                 /* SCRIPT LOAD answered on this link */
    int loading;                /* a SCRIPT LOAD is on its way */
};

/* One master of a Redis Cluster and its async link. */
struct store_node {
    struct store *st;
    char host[CLUSTER_HOSTLEN];
    int port;
    redisAsyncContext *ac;
    int up;
    int mapped;                 /* serves slots in the current map */
    int backoff_ms;
    struct event *retry_ev;
    uint32_t loaded;            /* bit i: script i confirmed here */
    uint32_t loading;
};

struct store_call;

struct store {
    struct event_base *base;
    redisAsyncContext *ac;
    int up;
    int stopping;
    int pending;
    int64_t progress_ms;        /* last reply, or first command pending */
    int backoff_ms;
    struct event *retry_ev;
    store_state_cb state_cb;
    void *state_arg;

    int embedded;
    char host[CONFIG_ADDRLEN];
    int port;
    char socket_path[108];
    char data_dir[PATH_MAX];
    char server_bin[CONFIG_PATHLEN];
    pid_t child;
    struct event *child_ev;
    struct event *respawn_ev;
    char address[PATH_MAX];

    struct store_script scripts[STORE_MAX_SCRIPTS];
    int nscripts;

    /* redis.cluster: the seed is nodes[0]; slots[] names each slot's
     * node (-1 while unknown). */
    int cluster;
    struct store_node *nodes[STORE_MAX_NODES];
    int nnodes;
    int16_t slots[CLUSTER_SLOTS];
    int map_ok;
    int map_loading;
    struct event *map_ev;
    struct store_call *waiting;    /* resends waiting on a timer */

    /* The subscriber link (see store_subscribe()). */
    redisAsyncContext *sub_ac;
    char sub_channel[128];
    store_message_cb sub_cb;
    void *sub_arg;
    int sub_backoff_ms;
    int sub_attempt;
    struct event *sub_retry_ev;
};

/* What travels with each command, to time it and forward the reply. */
struct store_call {
    struct store *st;
    store_reply_cb cb;
    void *arg;
    struct timespec t0;

    /* Cluster mode only: the formatted command, kept for resending
     * after a redirection, and where it goes. */
    char *cmd;
    size_t len;
    int slot;                   /* -1: any node */
    int ask_node;               /* -1, or the node an ASK named */
    int redirects;
    int retries;
    struct event *retry_ev;
    struct store_call *next_waiting;
};

static void connect_now(struct store *st);
static int cluster_start(struct store *st, const struct config *cfg,
                         char *err, size_t errlen);
static void cluster_free(struct store *st);
static void sub_free(struct store *st);

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t elapsed_us(const struct timespec *t0)
{
    struct timespec t1;

    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (int64_t)(t1.tv_sec - t0->tv_sec) * 1000000 +
           (t1.tv_nsec - t0->tv_nsec) / 1000;
}

/* ---------------------------------------------------------------------
 * The embedded server
 * ------------------------------------------------------------------ */

static int mkdir_p(const char *path)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);

    if (n == 0 || n >= sizeof(buf))
        return -1;
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(buf, 0700) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

static pid_t spawn_server(struct store *st)
{
    pid_t pid = fork();

    if (pid != 0)
        return pid;

    /* The child must not outlive a daemon killed with SIGKILL, or the
     * next start would find its socket taken. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    execlp(st->server_bin, st->server_bin, "--port", "0", "--unixsocket",
           st->socket_path, "--unixsocketperm", "700", "--dir",
           st->data_dir, "--appendonly", "yes", "--appendfsync", "everysec",
           "--save", "", "--daemonize", "no", "--logfile", "redis.log",
           (char *)NULL);
    _exit(127);
}

static int ping_sync(const char *path)
{
    struct timeval tv = {0, 200000};
    redisContext *c = redisConnectUnixWithTimeout(path, tv);
    redisReply *r;
    int ok = 0;

    if (c == NULL)
        return 0;
    if (!c->err) {
        r = redisCommand(c, "PING");
        ok = r != NULL && r->type == REDIS_REPLY_STATUS;
        if (r != NULL)
            freeReplyObject(r);
    }
    redisFree(c);
    return ok;
}

static int wait_server(struct store *st, char *err, size_t errlen)
{
    int status;

    for (int waited = 0; waited < STORE_EMBEDDED_WAIT_MS; waited += 50) {
        if (waitpid(st->child, &status, WNOHANG) == st->child) {
            st->child = 0;
            snprintf(err, errlen,
                     "redis.server: \"%s\" exited with status %d before "
                     "answering (see %s/redis.log)", st->server_bin,
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                     st->data_dir);
            return STORE_ERR;
        }
        if (ping_sync(st->socket_path))
            return STORE_OK;
        usleep(50000);
    }
    snprintf(err, errlen, "redis.server: no answer from the embedded "
             "redis-server on %s", st->socket_path);
    return STORE_ERR;
}

static int start_embedded(struct store *st, const struct config *cfg,
                          char *err, size_t errlen)
{
    char resolved[PATH_MAX];

    if (mkdir_p(cfg->redis_data_dir) != 0 ||
        realpath(cfg->redis_data_dir, resolved) == NULL ||
        access(resolved, W_OK) != 0) {
        snprintf(err, errlen, "redis.data_dir: cannot use \"%s\": %s",
                 cfg->redis_data_dir, strerror(errno));
        return STORE_ERR;
    }
    snprintf(st->data_dir, sizeof(st->data_dir), "%s", resolved);
    if (strlen(resolved) + sizeof("/redis.sock") > sizeof(st->socket_path)) {
        snprintf(err, errlen, "redis.data_dir: path too long for a unix "
                 "socket: \"%s\"", resolved);
        return STORE_ERR;
    }
    memcpy(st->socket_path, resolved, strlen(resolved));
    memcpy(st->socket_path + strlen(resolved), "/redis.sock",
           sizeof("/redis.sock"));
    snprintf(st->address, sizeof(st->address), "unix:%s", st->socket_path);

    if (ping_sync(st->socket_path)) {
        snprintf(err, errlen, "redis.data_dir: \"%s\" is in use by another "
                 "running redis-server", resolved);
        return STORE_ERR;
    }
    unlink(st->socket_path);
    st->child = spawn_server(st);
    if (st->child < 0) {
        snprintf(err, errlen, "redis.server: fork: %s", strerror(errno));
        return STORE_ERR;
    }
    if (wait_server(st, err, errlen) != STORE_OK)
        return STORE_ERR;
    log_notice("msg=\"embedded redis started\" pid=%d socket=%s",
               (int)st->child, st->socket_path);
    return STORE_OK;
}

static void on_respawn(evutil_socket_t fd, short what, void *arg)
{
    struct store *st = arg;

    (void)fd;
    (void)what;
    if (st->stopping || st->child > 0)
        return;
    unlink(st->socket_path);
    st->child = spawn_server(st);
    if (st->child < 0) {
        struct timeval tv = {1, 0};
        st->child = 0;
        log_warning("msg=\"embedded redis respawn failed\" error=\"%s\"",
                    strerror(errno));
        evtimer_add(st->respawn_ev, &tv);
        return;
    }
    log_notice("msg=\"embedded redis restarted\" pid=%d", (int)st->child);
}

static void on_sigchld(evutil_socket_t fd, short what, void *arg)
{
    struct store *st = arg;
    struct timeval tv = {1, 0};
    int status;

    (void)fd;
    (void)what;
    if (st->child <= 0 || waitpid(st->child, &status, WNOHANG) != st->child)
        return;
    st->child = 0;
    if (st->stopping)
        return;
    log_warning("msg=\"embedded redis exited\" status=%d; restarting",
                WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
    evtimer_add(st->respawn_ev, &tv);
}

static void stop_embedded(struct store *st)
{
    int status;

    if (st->child <= 0)
        return;
    kill(st->child, SIGTERM);

    /* Redis writes and syncs its AOF on SIGTERM; give it a moment. */
    for (int i = 0; i < 60; i++) {
        if (waitpid(st->child, &status, WNOHANG) == st->child) {
            st->child = 0;
            return;
        }
        usleep(50000);
    }
    log_warning("msg=\"embedded redis did not stop; killing\" pid=%d",
                (int)st->child);
    kill(st->child, SIGKILL);
    waitpid(st->child, &status, 0);
    st->child = 0;
}

/* ---------------------------------------------------------------------
 * The async link
 * ------------------------------------------------------------------ */

static void schedule_retry(struct store *st)
{
    struct timeval tv;

    if (st->stopping)
        return;
    tv.tv_sec = st->backoff_ms / 1000;
    tv.tv_usec = (st->backoff_ms % 1000) * 1000;
    evtimer_add(st->retry_ev, &tv);
    st->backoff_ms *= 2;
    if (st->backoff_ms > STORE_BACKOFF_MAX_MS)
        st->backoff_ms = STORE_BACKOFF_MAX_MS;
}

static void set_up(struct store *st, int up)
{
    if (st->up == up)
        return;
    st->up = up;
    metrics_set(redis_up, (uint64_t)up);
    if (st->state_cb != NULL)
        st->state_cb(st, up, st->state_arg);
}

static void on_script_loaded(redisAsyncContext *ac, void *r, void *arg)
{
    struct store *st = ac->data;
    redisReply *reply = r;
    struct store_script *s = arg;

    s->loading = 0;
    /* A Redis still loading its AOF refuses SCRIPT LOAD; until one is
     * confirmed, store_script() sends the whole source with EVAL. */
    if (reply != NULL && reply->type == REDIS_REPLY_STRING &&
        strcmp(reply->str, s->sha) == 0) {
        s->loaded = 1;
        return;
    }
    log_verbose("msg=\"SCRIPT LOAD refused; using EVAL\" address=%s "
                "error=\"%s\"", st->address,
                reply != NULL && reply->str != NULL ? reply->str : "lost");
}

static void load_script(struct store *st, struct store_script *s)
{
    s->loaded = 0;
    if (s->loading)
        return;
    s->loading = 1;
    redisAsyncCommand(st->ac, on_script_loaded, s, "SCRIPT LOAD %s",
                      s->source);
}

static void load_scripts(struct store *st)
{
    for (int i = 0; i < st->nscripts; i++)
        load_script(st, &st->scripts[i]);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct store *st = ac->data;

    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        log_verbose("msg=\"redis connect failed\" address=%s error=\"%s\"",
                    st->address, ac->errstr);
        st->ac = NULL;
        metrics_add(redis_errors, 1);
        schedule_retry(st);
        return;
    }
    log_notice("msg=\"redis connected\" address=%s", st->address);
    st->backoff_ms = STORE_BACKOFF_MIN_MS;
    load_scripts(st);
    set_up(st, 1);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct store *st = ac->data;

    st->ac = NULL;
    if (!st->stopping) {
        log_warning("msg=\"redis connection lost\" address=%s error=\"%s\"",
                    st->address, status == REDIS_OK ? "closed" : ac->errstr);
        metrics_add(redis_reconnects, 1);
    }
    set_up(st, 0);
    schedule_retry(st);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    connect_now(arg);
}

static void connect_now(struct store *st)
{
    redisAsyncContext *ac;

    if (st->stopping || st->ac != NULL)
        return;
    if (st->embedded)
        ac = redisAsyncConnectUnix(st->socket_path);
    else
        ac = redisAsyncConnect(st->host, st->port);
    if (ac == NULL || ac->err) {
        log_verbose("msg=\"redis connect failed\" address=%s error=\"%s\"",
                    st->address, ac ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        metrics_add(redis_errors, 1);
        schedule_retry(st);
        return;
    }
    ac->data = st;
    st->ac = ac;
    redisLibeventAttach(ac, st->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
}

static int parse_address(struct store *st, const char *address, char *err,
                         size_t errlen)
{
    const char *colon = strrchr(address, ':');
    char *end;
    long port;

    if (colon == NULL || colon == address ||
        (size_t)(colon - address) >= sizeof(st->host))
        goto bad;
    port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port <= 0 || port > 65535)
        goto bad;
    memcpy(st->host, address, (size_t)(colon - address));
    st->host[colon - address] = '\0';
    st->port = (int)port;
    snprintf(st->address, sizeof(st->address), "%s", address);
    return STORE_OK;

bad:
    snprintf(err, errlen, "redis.address: bad address \"%s\"", address);
    return STORE_ERR;
}

struct store *store_new(struct event_base *base, const struct config *cfg,
                        char *err, size_t errlen)
{
    struct store *st = calloc(1, sizeof(*st));

    if (st == NULL) {
        snprintf(err, errlen, "store: out of memory");
        return NULL;
    }
    st->base = base;
    st->backoff_ms = STORE_BACKOFF_MIN_MS;
    st->retry_ev = evtimer_new(base, on_retry, st);
    st->respawn_ev = evtimer_new(base, on_respawn, st);
    snprintf(st->server_bin, sizeof(st->server_bin), "%s", cfg->redis_server);
    st->embedded = strcmp(cfg->redis_address, "embedded") == 0;

    if (st->embedded) {
        st->child_ev = evsignal_new(base, SIGCHLD, on_sigchld, st);
        evsignal_add(st->child_ev, NULL);
        if (start_embedded(st, cfg, err, errlen) != STORE_OK)
            goto fail;
    } else if (cfg->redis_cluster) {
        if (cluster_start(st, cfg, err, errlen) != STORE_OK)
            goto fail;
        return st;
    } else if (parse_address(st, cfg->redis_address, err, errlen)) {
        goto fail;
    }
    connect_now(st);
    return st;

fail:
    store_free(st);
    return NULL;
}

void store_set_state_cb(struct store *st, store_state_cb cb, void *arg)
{
    st->state_cb = cb;
    st->state_arg = arg;
}

/* ---------------------------------------------------------------------
 * Commands
 * ------------------------------------------------------------------ */

/* Accounts for a finished command and hands its reply on. node is the
 * cluster node that answered, NULL on a single Redis. */
static void call_finish(struct store_call *call, struct store_node *node,
                        redisReply *reply)
{
    call->st->pending--;
    call->st->progress_ms = mono_ms();
    metrics_add(redis_latency_us_sum, (uint64_t)elapsed_us(&call->t0));
    metrics_add(redis_latency_count, 1);
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
        metrics_add(redis_errors, 1);
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        for (int i = 0; i < call->st->nscripts; i++)
            call->st->scripts[i].loaded = 0;
        if (node != NULL)
            node->loaded = 0;
    }
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR)
        log_warning("msg=\"redis error\" error=\"%.*s\"", (int)reply->len,
                    reply->str);
    if (call->cb != NULL)
        call->cb(call->st, reply, call->arg);
    free(call->cmd);
    if (call->retry_ev != NULL)
        event_free(call->retry_ev);
    free(call);
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    (void)ac;
    call_finish(privdata, NULL, r);
}

static struct store_call *call_new(struct store *st, store_reply_cb cb,
                                   void *arg)
{
    struct store_call *call;

    if (!store_is_up(st) || (st->ac == NULL && !st->cluster))
        return NULL;
    call = calloc(1, sizeof(*call));
    if (call == NULL)
        return NULL;
    call->st = st;
    call->cb = cb;
    call->arg = arg;
    clock_gettime(CLOCK_MONOTONIC, &call->t0);
    return call;
}

static int call_sent(struct store *st, struct store_call *call, int rc)
{
    if (rc != REDIS_OK) {
        free(call->cmd);
        free(call);
        metrics_add(redis_errors, 1);
        return STORE_ERR;
    }
    if (st->pending++ == 0)
        st->progress_ms = mono_ms();
    metrics_add(redis_commands, 1);
    return STORE_OK;
}

/* ---------------------------------------------------------------------
 * Redis Cluster: one link per master, commands routed by slot
 * ------------------------------------------------------------------ */

static void node_connect(struct store_node *n);
static void map_refresh(struct store *st);
static void call_route(struct store_call *call);

/* Up when the slot map is known and every master it names answers. */
static void cluster_update_up(struct store *st)
{
    int up = st->map_ok;

    for (int i = 0; i < st->nnodes && up; i++)
        if (st->nodes[i]->mapped && !st->nodes[i]->up)
            up = 0;
    set_up(st, up);
}

static void node_schedule_retry(struct store_node *n)
{
    struct timeval tv;

    if (n->st->stopping)
        return;
    tv.tv_sec = n->backoff_ms / 1000;
    tv.tv_usec = (n->backoff_ms % 1000) * 1000;
    evtimer_add(n->retry_ev, &tv);
    n->backoff_ms *= 2;
    if (n->backoff_ms > STORE_BACKOFF_MAX_MS)
        n->backoff_ms = STORE_BACKOFF_MAX_MS;
}

static void on_node_script_loaded(redisAsyncContext *ac, void *r, void *arg)
{
    struct store_node *n = ac->data;
    redisReply *reply = r;
    int i = (int)(intptr_t)arg;

    n->loading &= ~(1u << i);
    if (reply != NULL && reply->type == REDIS_REPLY_STRING &&
        strcmp(reply->str, n->st->scripts[i].sha) == 0)
        n->loaded |= 1u << i;
}

static void node_load_script(struct store_node *n, int i)
{
    if (n->ac == NULL || !n->up || (n->loading & (1u << i)))
        return;
    n->loading |= 1u << i;
    redisAsyncCommand(n->ac, on_node_script_loaded, (void *)(intptr_t)i,
                      "SCRIPT LOAD %s", n->st->scripts[i].source);
}

static void on_node_connect(const redisAsyncContext *ac, int status)
{
    struct store_node *n = ac->data;
    struct store *st = n->st;

    if (status != REDIS_OK) {
        log_verbose("msg=\"redis node connect failed\" node=%s:%d "
                    "error=\"%s\"", n->host, n->port, ac->errstr);
        n->ac = NULL;
        metrics_add(redis_errors, 1);
        node_schedule_retry(n);
        return;
    }
    log_notice("msg=\"redis node connected\" node=%s:%d", n->host, n->port);
    n->up = 1;
    n->backoff_ms = STORE_BACKOFF_MIN_MS;
    n->loaded = n->loading = 0;
    for (int i = 0; i < st->nscripts; i++)
        node_load_script(n, i);
    if (!st->map_ok)
        map_refresh(st);
    cluster_update_up(st);
}

static void on_node_disconnect(const redisAsyncContext *ac, int status)
{
    struct store_node *n = ac->data;
    struct store *st = n->st;

    n->ac = NULL;
    n->up = 0;
    n->loaded = n->loading = 0;
    if (st->stopping)
        return;
    log_warning("msg=\"redis node connection lost\" node=%s:%d error=\"%s\"",
                n->host, n->port, status == REDIS_OK ? "closed" : ac->errstr);
    metrics_add(redis_reconnects, 1);
    cluster_update_up(st);
    /* A master that went away may have been replaced by its replica. */
    map_refresh(st);
    node_schedule_retry(n);
}

static void on_node_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    node_connect(arg);
}

static void node_connect(struct store_node *n)
{
    redisAsyncContext *ac;

    if (n->st->stopping || n->ac != NULL)
        return;
    ac = redisAsyncConnect(n->host, n->port);
    if (ac == NULL || ac->err) {
        if (ac != NULL)
            redisAsyncFree(ac);
        metrics_add(redis_errors, 1);
        node_schedule_retry(n);
        return;
    }
    ac->data = n;
    n->ac = ac;
    redisLibeventAttach(ac, n->st->base);
    redisAsyncSetConnectCallback(ac, on_node_connect);
    redisAsyncSetDisconnectCallback(ac, on_node_disconnect);
}

/* The node of host:port, connecting to it the first time; -1 when the
 * table is full. */
static int node_get(struct store *st, const char *host, int port)
{
    struct store_node *n;

    for (int i = 0; i < st->nnodes; i++)
        if (st->nodes[i]->port == port &&
            strcmp(st->nodes[i]->host, host) == 0)
            return i;
    if (st->nnodes == STORE_MAX_NODES || strlen(host) >= CLUSTER_HOSTLEN ||
        (n = calloc(1, sizeof(*n))) == NULL) {
        log_warning("msg=\"too many redis nodes\" node=%s:%d max=%d", host,
                    port, STORE_MAX_NODES);
        return -1;
    }
    n->st = st;
    snprintf(n->host, sizeof(n->host), "%s", host);
    n->port = port;
    n->backoff_ms = STORE_BACKOFF_MIN_MS;
    n->retry_ev = evtimer_new(st->base, on_node_retry, n);
    st->nodes[st->nnodes] = n;
    node_connect(n);
    return st->nnodes++;
}

static struct store_node *any_up_node(struct store *st)
{
    for (int i = 0; i < st->nnodes; i++)
        if (st->nodes[i]->up)
            return st->nodes[i];
    return NULL;
}

static void apply_map(struct store *st, struct store_node *from,
                      const struct cluster_range *r, int n)
{
    for (int i = 0; i < CLUSTER_SLOTS; i++)
        st->slots[i] = -1;
    for (int i = 0; i < st->nnodes; i++)
        st->nodes[i]->mapped = 0;
    for (int i = 0; i < n; i++) {
        /* An empty or "?" endpoint means the node that answered. */
        const char *host = r[i].host[0] != '\0' && strcmp(r[i].host, "?")
                               ? r[i].host : from->host;
        int idx = node_get(st, host, r[i].port);

        if (idx < 0)
            continue;
        st->nodes[idx]->mapped = 1;
        for (int s = r[i].from; s <= r[i].to; s++)
            st->slots[s] = (int16_t)idx;
    }
    st->map_ok = n > 0;
}

static void on_slots(redisAsyncContext *ac, void *r, void *arg)
{
    struct store_node *from = ac->data;
    struct store *st = from->st;
    redisReply *reply = r;
    struct cluster_range *ranges;
    int n = -1;

    (void)arg;
    st->map_loading = 0;
    if (st->stopping)
        return;
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY &&
        (ranges = calloc(reply->elements + 1, sizeof(*ranges))) != NULL) {
        n = cluster_parse_slots(reply, ranges, (int)reply->elements);
        if (n > 0)
            apply_map(st, from, ranges, n);
        free(ranges);
    }
    if (n <= 0)
        log_warning("msg=\"no cluster slot map\" node=%s:%d error=\"%s\"",
                    from->host, from->port,
                    reply != NULL && reply->str != NULL ? reply->str
                                                        : "bad reply");
    else
        log_verbose("msg=\"cluster slot map read\" node=%s:%d ranges=%d",
                    from->host, from->port, n);
    cluster_update_up(st);
}

/* Asks one answering node for the slot map; one request at a time. */
static void map_refresh(struct store *st)
{
    struct store_node *n = any_up_node(st);

    if (st->stopping || st->map_loading || n == NULL)
        return;
    if (redisAsyncCommand(n->ac, on_slots, NULL, "CLUSTER SLOTS") ==
        REDIS_OK)
        st->map_loading = 1;
}

static void on_map_timer(evutil_socket_t fd, short what, void *arg)
{
    struct store *st = arg;
    struct timeval tv = {STORE_MAP_REFRESH_MS / 1000,
                         (STORE_MAP_REFRESH_MS % 1000) * 1000};

    (void)fd;
    (void)what;
    map_refresh(st);
    evtimer_add(st->map_ev, &tv);
}

static void on_cluster_reply(redisAsyncContext *ac, void *r, void *privdata);

/* Sends the call to node n, after ASKING when an ASK sent it there. */
static int call_send_to(struct store_call *call, struct store_node *n)
{
    if (n == NULL || !n->up || n->ac == NULL)
        return REDIS_ERR;
    if (call->ask_node >= 0 &&
        redisAsyncCommand(n->ac, NULL, NULL, "ASKING") != REDIS_OK)
        return REDIS_ERR;
    return redisAsyncFormattedCommand(n->ac, on_cluster_reply, call,
                                      call->cmd, call->len);
}

static struct store_node *call_target(struct store_call *call)
{
    struct store *st = call->st;

    if (call->ask_node >= 0)
        return st->nodes[call->ask_node];
    if (call->slot < 0)
        return any_up_node(st);
    return st->slots[call->slot] >= 0 ? st->nodes[st->slots[call->slot]]
                                      : NULL;
}

static void waiting_remove(struct store_call *call)
{
    struct store_call **p = &call->st->waiting;

    while (*p != NULL && *p != call)
        p = &(*p)->next_waiting;
    if (*p != NULL)
        *p = call->next_waiting;
}

static void on_call_retry(evutil_socket_t fd, short what, void *arg)
{
    struct store_call *call = arg;

    (void)fd;
    (void)what;
    waiting_remove(call);
    call_route(call);
}

/* Resends a call later: after TRYAGAIN or CLUSTERDOWN, or while the
 * node it must go to is still connecting. Gives up with a NULL reply
 * after STORE_MAX_RETRIES. */
static void call_later(struct store_call *call)
{
    int ms = 50 << (call->retries < 5 ? call->retries : 5);
    struct timeval tv;

    if (ms > STORE_RETRY_MAX_MS)
        ms = STORE_RETRY_MAX_MS;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;

    if (call->st->stopping || ++call->retries > STORE_MAX_RETRIES ||
        (call->retry_ev == NULL &&
         (call->retry_ev = evtimer_new(call->st->base, on_call_retry,
                                       call)) == NULL)) {
        log_warning("msg=\"redis command given up\" slot=%d retries=%d",
                    call->slot, call->retries);
        call_finish(call, NULL, NULL);
        return;
    }
    metrics_add(redis_retries, 1);
    /* During a slot's migration a multi-key script goes ASK, then
     * TRYAGAIN on the importing master, and round again: each resend
     * starts its redirections afresh, the retries bound the whole. */
    call->redirects = 0;
    call->next_waiting = call->st->waiting;
    call->st->waiting = call;
    evtimer_add(call->retry_ev, &tv);
}

static void call_route(struct store_call *call)
{
    if (call_send_to(call, call_target(call)) != REDIS_OK)
        call_later(call);
}

/* Follows a redirection; returns 0 when the reply was not one (and is
 * the caller's). */
static int follow_redirect(struct store_call *call, struct store_node *from,
                           const redisReply *reply)
{
    struct store *st = call->st;
    char host[CLUSTER_HOSTLEN];
    int slot, port, idx;
    enum cluster_redirect kind;

    if (reply == NULL || reply->type != REDIS_REPLY_ERROR)
        return 0;
    kind = cluster_parse_redirect(reply->str, reply->len, &slot, host,
                                  sizeof(host), &port);
    if (kind == CLUSTER_NONE || st->stopping)
        return 0;
    metrics_add(redis_redirects, 1);
    if (kind == CLUSTER_RETRY) {
        call->ask_node = -1;
        call_later(call);
        return 1;
    }
    if (++call->redirects > STORE_MAX_REDIRECTS)
        return 0;
    idx = node_get(st, host[0] != '\0' ? host : from->host, port);
    if (idx < 0)
        return 0;
    if (kind == CLUSTER_MOVED) {
        /* The slot moved for good: route it there now and read the
         * whole map again, other slots likely moved with it. */
        st->slots[slot] = (int16_t)idx;
        call->ask_node = -1;
        map_refresh(st);
    } else {
        call->ask_node = idx;
    }
    call_route(call);
    return 1;
}

static void on_cluster_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_call *call = privdata;
    struct store_node *n = ac->data;

    /* A redirection is an answer too: the cluster is not stalled. */
    call->st->progress_ms = mono_ms();
    if (follow_redirect(call, n, r))
        return;
    call_finish(call, n, r);
}

/* Sends a formatted command (taking cmd) to the master of its slot. */
static int cluster_send(struct store *st, store_reply_cb cb, void *arg,
                        char *cmd, size_t len)
{
    const char *argv[STORE_MAX_ARGS];
    size_t lens[STORE_MAX_ARGS];
    struct store_call *call;
    int argc = cluster_resp_args(cmd, len, argv, lens, STORE_MAX_ARGS);
    int key = argc > 0 ? cluster_command_key(argc, argv, lens) : -1;

    if (argc <= 0 || (call = call_new(st, cb, arg)) == NULL) {
        free(cmd);
        return STORE_ERR;
    }
    call->cmd = cmd;
    call->len = len;
    call->slot = key >= 0 ? cluster_key_slot(argv[key], lens[key]) : -1;
    call->ask_node = -1;
    return call_sent(st, call, call_send_to(call, call_target(call)));
}

static int cluster_start(struct store *st, const struct config *cfg,
                         char *err, size_t errlen)
{
    struct timeval tv = {STORE_MAP_REFRESH_MS / 1000,
                         (STORE_MAP_REFRESH_MS % 1000) * 1000};

    if (parse_address(st, cfg->redis_address, err, errlen) != STORE_OK)
        return STORE_ERR;
    st->cluster = 1;
    for (int i = 0; i < CLUSTER_SLOTS; i++)
        st->slots[i] = -1;
    st->map_ev = evtimer_new(st->base, on_map_timer, st);
    evtimer_add(st->map_ev, &tv);
    if (node_get(st, st->host, st->port) < 0) {
        snprintf(err, errlen, "redis.address: bad seed \"%s\"",
                 cfg->redis_address);
        return STORE_ERR;
    }
    return STORE_OK;
}

static void cluster_free(struct store *st)
{
    while (st->waiting != NULL) {
        struct store_call *call = st->waiting;

        st->waiting = call->next_waiting;
        call_finish(call, NULL, NULL);
    }
    for (int i = 0; i < st->nnodes; i++) {
        struct store_node *n = st->nodes[i];

        if (n->ac != NULL)
            redisAsyncFree(n->ac);
        event_free(n->retry_ev);
        free(n);
    }
    st->nnodes = 0;
    if (st->map_ev != NULL)
        event_free(st->map_ev);
}

int store_same_slot(const struct store *st, const char *a, const char *b)
{
    return !st->cluster || cluster_key_slot(a, strlen(a)) ==
                               cluster_key_slot(b, strlen(b));
}

int store_is_cluster(const struct store *st)
{
    return st->cluster;
}

int store_command(struct store *st, store_reply_cb cb, void *arg,
                  const char *fmt, ...)
{
    struct store_call *call = st->cluster ? NULL : call_new(st, cb, arg);
    va_list ap;
    int rc;

    if (st->cluster) {
        char *cmd = NULL;

        va_start(ap, fmt);
        rc = redisvFormatCommand(&cmd, fmt, ap);
        va_end(ap);
        return rc < 0 ? STORE_ERR : cluster_send(st, cb, arg, cmd,
                                                 (size_t)rc);
    }
    if (call == NULL)
        return STORE_ERR;
    va_start(ap, fmt);
    rc = redisvAsyncCommand(st->ac, on_reply, call, fmt, ap);
    va_end(ap);
    return call_sent(st, call, rc);
}

int store_command_argv(struct store *st, store_reply_cb cb, void *arg,
                       int argc, const char **argv, const size_t *lens)
{
    struct store_call *call;

    if (st->cluster) {
        char *cmd = NULL;
        long long n = redisFormatCommandArgv(&cmd, argc, argv, lens);

        return n < 0 ? STORE_ERR : cluster_send(st, cb, arg, cmd, (size_t)n);
    }
    call = call_new(st, cb, arg);
    if (call == NULL)
        return STORE_ERR;
    return call_sent(st, call, redisAsyncCommandArgv(st->ac, on_reply, call,
                                                     argc, argv, lens));
}

int store_script_add(struct store *st, const char *source)
{
    struct store_script *s;
    unsigned char digest[SHA_DIGEST_LENGTH];

    if (st->nscripts == STORE_MAX_SCRIPTS)
        return -1;
    s = &st->scripts[st->nscripts];
    s->source = source;
    SHA1((const unsigned char *)source, strlen(source), digest);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(s->sha + 2 * i, 3, "%02x", digest[i]);
    if (st->ac != NULL && st->up)
        load_script(st, s);
    for (int i = 0; i < st->nnodes; i++)
        node_load_script(st->nodes[i], st->nscripts);
    return st->nscripts++;
}

/* On a cluster, each master confirms its own SCRIPT LOAD: EVALSHA goes
 * to a master that has, EVAL (and a load) to one that has not. */
static void script_pick_node(struct store *st, int script, int nkeys,
                             const char **argv, const size_t *lens,
                             const char **full)
{
    struct store_node *n = NULL;
    int slot, idx;

    if (nkeys > 0) {
        slot = cluster_key_slot(argv[0], lens != NULL ? lens[0]
                                                      : strlen(argv[0]));
        idx = st->slots[slot];
        n = idx >= 0 ? st->nodes[idx] : NULL;
    }
    if (n != NULL && (n->loaded & (1u << script))) {
        full[0] = "EVALSHA";
        full[1] = st->scripts[script].sha;
        return;
    }
    full[0] = "EVAL";
    full[1] = st->scripts[script].source;
    if (n != NULL)
        node_load_script(n, script);
}

/* Scripts are loaded first thing on every connection; once Redis has
 * confirmed one, EVALSHA saves sending its source each time, and before
 * that (or when the load was refused) EVAL sends it whole. A NOSCRIPT
 * after a SCRIPT FLUSH reaches the caller as an error reply, is retried
 * like any failed write, and reloads the script. */
int store_script(struct store *st, int script, store_reply_cb cb,
                 void *arg, int nkeys, int argc, const char **argv,
                 const size_t *lens)
{
    const char *full[STORE_MAX_ARGS];
    size_t full_lens[STORE_MAX_ARGS];
    char nkeys_buf[16];

    if (script < 0 || script >= st->nscripts || argc + 3 > STORE_MAX_ARGS)
        return STORE_ERR;
    snprintf(nkeys_buf, sizeof(nkeys_buf), "%d", nkeys);
    if (st->cluster) {
        script_pick_node(st, script, nkeys, argv, lens, full);
    } else if (st->scripts[script].loaded) {
        full[0] = "EVALSHA";
        full[1] = st->scripts[script].sha;
    } else {
        full[0] = "EVAL";
        full[1] = st->scripts[script].source;
        if (st->ac != NULL && st->up)
            load_script(st, &st->scripts[script]);
    }
    full[2] = nkeys_buf;
    full_lens[0] = strlen(full[0]);
    full_lens[1] = strlen(full[1]);
    full_lens[2] = strlen(nkeys_buf);
    for (int i = 0; i < argc; i++) {
        full[i + 3] = argv[i];
        full_lens[i + 3] = lens != NULL ? lens[i] : strlen(argv[i]);
    }
    return store_command_argv(st, cb, arg, argc + 3, full, full_lens);
}

/* ---------------------------------------------------------------------
 * The subscriber link
 * ------------------------------------------------------------------ */

static void sub_connect(struct store *st);

static void sub_schedule_retry(struct store *st)
{
    struct timeval tv;

    if (st->stopping)
        return;
    tv.tv_sec = st->sub_backoff_ms / 1000;
    tv.tv_usec = (st->sub_backoff_ms % 1000) * 1000;
    evtimer_add(st->sub_retry_ev, &tv);
    st->sub_backoff_ms *= 2;
    if (st->sub_backoff_ms > STORE_BACKOFF_MAX_MS)
        st->sub_backoff_ms = STORE_BACKOFF_MAX_MS;
}

static void on_sub_message(redisAsyncContext *ac, void *r, void *arg)
{
    struct store *st = arg;
    redisReply *reply = r;

    (void)ac;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY ||
        reply->elements != 3 || reply->element[0]->type !=
        REDIS_REPLY_STRING || strcmp(reply->element[0]->str, "message") ||
        reply->element[2]->type != REDIS_REPLY_STRING)
        return;
    if (st->sub_cb != NULL)
        st->sub_cb(st, reply->element[2]->str, reply->element[2]->len,
                   st->sub_arg);
}

static void on_sub_connect(const redisAsyncContext *ac, int status)
{
    struct store *st = ac->data;

    if (status != REDIS_OK) {
        st->sub_ac = NULL;
        sub_schedule_retry(st);
        return;
    }
    st->sub_backoff_ms = STORE_BACKOFF_MIN_MS;
    log_verbose("msg=\"redis subscriber connected\" channel=%s",
                st->sub_channel);
}

static void on_sub_disconnect(const redisAsyncContext *ac, int status)
{
    struct store *st = ac->data;

    (void)status;
    st->sub_ac = NULL;
    if (st->stopping)
        return;
    log_warning("msg=\"redis subscriber lost\" channel=%s", st->sub_channel);
    sub_schedule_retry(st);
}

static void on_sub_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sub_connect(arg);
}

/* On a cluster each attempt tries the next known node, so one master
 * that is down does not keep the subscriber away. */
static void sub_connect(struct store *st)
{
    redisAsyncContext *ac;

    if (st->stopping || st->sub_ac != NULL)
        return;
    if (st->cluster) {
        struct store_node *n = st->nodes[st->sub_attempt++ % st->nnodes];
        ac = redisAsyncConnect(n->host, n->port);
    } else if (st->embedded) {
        ac = redisAsyncConnectUnix(st->socket_path);
    } else {
        ac = redisAsyncConnect(st->host, st->port);
    }
    if (ac == NULL || ac->err) {
        if (ac != NULL)
            redisAsyncFree(ac);
        sub_schedule_retry(st);
        return;
    }
    ac->data = st;
    st->sub_ac = ac;
    redisLibeventAttach(ac, st->base);
    redisAsyncSetConnectCallback(ac, on_sub_connect);
    redisAsyncSetDisconnectCallback(ac, on_sub_disconnect);
    /* Queued until the connection is up. */
    redisAsyncCommand(ac, on_sub_message, st, "SUBSCRIBE %s",
                      st->sub_channel);
}

int store_subscribe(struct store *st, const char *channel,
                    store_message_cb cb, void *arg)
{
    if (st->sub_retry_ev != NULL || strlen(channel) >= sizeof(st->sub_channel))
        return STORE_ERR;
    snprintf(st->sub_channel, sizeof(st->sub_channel), "%s", channel);
    st->sub_cb = cb;
    st->sub_arg = arg;
    st->sub_backoff_ms = STORE_BACKOFF_MIN_MS;
    st->sub_retry_ev = evtimer_new(st->base, on_sub_retry, st);
    if (st->sub_retry_ev == NULL)
        return STORE_ERR;
    sub_connect(st);
    return STORE_OK;
}

static void sub_free(struct store *st)
{
    if (st->sub_ac != NULL) {
        redisAsyncFree(st->sub_ac);
        st->sub_ac = NULL;
    }
    if (st->sub_retry_ev != NULL)
        event_free(st->sub_retry_ev);
    st->sub_retry_ev = NULL;
}

int store_is_up(const struct store *st)
{
    if (!st->up)
        return 0;
    return st->pending == 0 || mono_ms() - st->progress_ms < STORE_STALL_MS;
}

int store_pending(const struct store *st)
{
    return st->pending;
}

const char *store_address(const struct store *st)
{
    return st->address;
}

void store_free(struct store *st)
{
    if (st == NULL)
        return;
    st->stopping = 1;
    cluster_free(st);
    sub_free(st);
    if (st->ac != NULL) {
        /* Runs the pending callbacks with NULL replies, then frees. */
        redisAsyncFree(st->ac);
        st->ac = NULL;
    }
    stop_embedded(st);
    if (st->retry_ev != NULL)
        event_free(st->retry_ev);
    if (st->respawn_ev != NULL)
        event_free(st->respawn_ev);
    if (st->child_ev != NULL)
        event_free(st->child_ev);
    free(st);
}
