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

#include "log.h"
#include "metrics.h"

#define STORE_MAX_SCRIPTS 16
#define STORE_BACKOFF_MIN_MS 100
#define STORE_BACKOFF_MAX_MS 5000
#define STORE_EMBEDDED_WAIT_MS 10000
/* A connected Redis that has answered nothing for this long while
 * commands wait is treated as down (a stopped or wedged server). */
#define STORE_STALL_MS 2000

struct store_script {
    const char *source;
    char sha[41];
    int loaded;                 /* SCRIPT LOAD answered on this link */
    int loading;                /* a SCRIPT LOAD is on its way */
};

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
};

/* What travels with each command, to time it and forward the reply. */
struct store_call {
    struct store *st;
    store_reply_cb cb;
    void *arg;
    struct timespec t0;
};

static void connect_now(struct store *st);

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

static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_call *call = privdata;
    redisReply *reply = r;

    (void)ac;
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
    }
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR)
        log_warning("msg=\"redis error\" error=\"%.*s\"", (int)reply->len,
                    reply->str);
    if (call->cb != NULL)
        call->cb(call->st, reply, call->arg);
    free(call);
}

static struct store_call *call_new(struct store *st, store_reply_cb cb,
                                   void *arg)
{
    struct store_call *call;

    if (!store_is_up(st) || st->ac == NULL)
        return NULL;
    call = malloc(sizeof(*call));
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
        free(call);
        metrics_add(redis_errors, 1);
        return STORE_ERR;
    }
    if (st->pending++ == 0)
        st->progress_ms = mono_ms();
    metrics_add(redis_commands, 1);
    return STORE_OK;
}

int store_command(struct store *st, store_reply_cb cb, void *arg,
                  const char *fmt, ...)
{
    struct store_call *call = call_new(st, cb, arg);
    va_list ap;
    int rc;

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
    struct store_call *call = call_new(st, cb, arg);

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
    return st->nscripts++;
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
    const char *full[64];
    size_t full_lens[64];
    char nkeys_buf[16];

    if (script < 0 || script >= st->nscripts || argc + 3 > 64)
        return STORE_ERR;
    snprintf(nkeys_buf, sizeof(nkeys_buf), "%d", nkeys);
    if (st->scripts[script].loaded) {
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
