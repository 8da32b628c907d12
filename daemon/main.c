/* proctord: start-up, signals, wiring and the shutdown order. The main
 * thread becomes the core thread once the network threads run. */
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "core.h"
#include "http.h"
#include "ledger.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "session.h"
#include "store.h"
#include "tls.h"
#include "vision_pool.h"

#define INBOX_CAPACITY 131072
#define INBOX_BATCH 256
#define EXIT_CONFIG 2

static struct event *sig_term, *sig_int, *sig_hup, *tick_ev;

int64_t core_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: proctord [-c FILE] [--help] [--version]\n"
            "  -c, --config FILE  read the configuration from FILE\n"
            "                     (without it: the embedded defaults, and\n"
            "                     auth.jwt_secret from PROCTORD_JWT_SECRET)\n"
            "  -h, --help         show this help\n"
            "  -V, --version      print the version\n");
}

static int parse_args(int argc, char **argv, const char **path)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int c;

    /* One line for a bad flag, as for a bad config: getopt stays quiet. */
    opterr = 0;
    while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            *path = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("proctord %s\n", PROCTORD_VERSION);
            exit(0);
        default:
            fprintf(stderr, "proctord: bad option \"%s\" (see --help)\n",
                    argv[optind - 1]);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "proctord: unexpected argument \"%s\"\n",
                argv[optind]);
        return -1;
    }
    return 0;
}

static int load_config(struct config *cfg, const char *path)
{
    char err[CONFIG_ERRLEN];
    const char *secret;

    config_defaults(cfg);
    if (path != NULL) {
        if (config_load(cfg, path, err, sizeof(err)) != CONFIG_OK) {
            fprintf(stderr, "proctord: %s\n", err);
            return -1;
        }
        return 0;
    }
    secret = getenv("PROCTORD_JWT_SECRET");
    if (secret == NULL || strlen(secret) < 16 ||
        strlen(secret) >= sizeof(cfg->jwt_secret)) {
        fprintf(stderr, "proctord: auth.jwt_secret: required (give -c FILE "
                "or set PROCTORD_JWT_SECRET, 16 bytes or more)\n");
        return -1;
    }
    snprintf(cfg->jwt_secret, sizeof(cfg->jwt_secret), "%s", secret);
    return 0;
}

/* A certificate and key that do not load or do not match are a
 * configuration error, found before anything starts. */
static int load_tls(struct core *core)
{
    char err[CONFIG_ERRLEN];

    if (core->cfg.tls_cert[0] == '\0')
        return 0;
    core->tls = tls_server_ctx_new(core->cfg.tls_cert, core->cfg.tls_key,
                                   err, sizeof(err));
    if (core->tls == NULL) {
        fprintf(stderr, "proctord: %s\n", err);
        return -1;
    }
    return 0;
}

static void apply_timezone(const char *tz)
{
    setenv("TZ", tz, 1);
    tzset();
}

/* Enough descriptors for every connection the config allows. */
static void raise_fd_limit(int want)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur >= (rlim_t)want + 256)
        return;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 ||
        rl.rlim_cur < (rlim_t)want + 256)
        log_warning("msg=\"descriptor limit below server.max_connections\" "
                    "limit=%llu want=%d", (unsigned long long)rl.rlim_cur,
                    want);
}

/* ---------------------------------------------------------------------
 * Events on the core thread
 * ------------------------------------------------------------------ */

static void on_wake(void *arg)
{
    struct core *core = arg;

    event_active(core->inbox_ev, EV_READ, 0);
}

static void on_inbox(evutil_socket_t fd, short what, void *arg)
{
    struct core *core = arg;
    struct net_event batch[INBOX_BATCH];
    size_t n;

    (void)fd;
    (void)what;
    n = queue_pop_many(&core->inbox, batch, INBOX_BATCH);
    for (size_t i = 0; i < n; i++)
        session_handle(core, &batch[i]);

    /* Yield to timers and HTTP between batches. */
    if (queue_depth(&core->inbox) > 0)
        event_active(core->inbox_ev, EV_READ, 0);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    session_tick(arg);
}

static void on_sigterm(evutil_socket_t fd, short what, void *arg)
{
    struct core *core = arg;

    (void)what;
    log_notice("msg=\"shutting down\" signal=%d sessions=%zu", (int)fd,
               session_count(core->sessions));
    core->draining = 1;
    event_base_loopexit(core->base, NULL);
}

static void on_sighup(evutil_socket_t fd, short what, void *arg)
{
    struct core *core = arg;
    struct config_policy fresh;
    char err[CONFIG_ERRLEN], diff[1024], quoted[1024];
    int changes;

    (void)fd;
    (void)what;
    if (core->config_path == NULL) {
        log_warning("msg=\"reload ignored: no config file\"");
        return;
    }
    if (config_load_policy(&fresh, core->config_path, err, sizeof(err)) !=
        CONFIG_OK) {
        log_warning("msg=\"reload refused; keeping the old policy\" "
                    "error=\"%s\"", log_quote(err, quoted, sizeof(quoted)));
        return;
    }
    changes = config_policy_diff(&core->cfg.policy, &fresh, diff,
                                 sizeof(diff));
    core->cfg.policy = fresh;
    apply_timezone(fresh.timezone);
    log_notice("msg=\"policy reloaded\" changes=%d detail=\"%s\"", changes,
               changes > 0 ? log_quote(diff, quoted, sizeof(quoted)) : "none");
}

/* ---------------------------------------------------------------------
 * Start and stop
 * ------------------------------------------------------------------ */

static int start(struct core *core)
{
    struct net_options no;
    char err[CONFIG_ERRLEN];
    struct timeval one_second = {1, 0};

    core->base = event_base_new();
    if (core->base == NULL ||
        queue_init(&core->inbox, INBOX_CAPACITY, sizeof(struct net_event)))
        return -1;
    core->inbox_ev = event_new(core->base, -1, 0, on_inbox, core);

    /* Signals first: a SIGTERM or SIGHUP that comes while the models load
     * or the ports open is handled once the loop runs, not lost. */
    sig_term = evsignal_new(core->base, SIGTERM, on_sigterm, core);
    sig_int = evsignal_new(core->base, SIGINT, on_sigterm, core);
    sig_hup = evsignal_new(core->base, SIGHUP, on_sighup, core);
    tick_ev = event_new(core->base, -1, EV_PERSIST, on_tick, core);
    evsignal_add(sig_term, NULL);
    evsignal_add(sig_int, NULL);
    evsignal_add(sig_hup, NULL);

    core->store = store_new(core->base, &core->cfg, err, sizeof(err));
    if (core->store == NULL)
        goto fail;
    if (ledger_init(core->store) != LEDGER_OK) {
        snprintf(err, sizeof(err), "ledger: cannot register scripts");
        goto fail;
    }
    core->sessions = session_table_new(core);
    core->vision = vision_pool_new(core, err, sizeof(err));
    if (core->sessions == NULL || core->vision == NULL)
        goto fail;
    core->http = http_new(core, err, sizeof(err));
    if (core->http == NULL)
        goto fail;

    memset(&no, 0, sizeof(no));
    no.listen = core->cfg.ws_listen;
    no.threads = core->cfg.threads;
    no.event_lib = core->cfg.event_lib == CONFIG_EVENT_LIB_UV ? NET_EVENT_LIB_UV
                   : core->cfg.event_lib == CONFIG_EVENT_LIB_EV
                   ? NET_EVENT_LIB_EV : NET_EVENT_LIB_POLL;
    no.max_frame = core->cfg.max_frame;
    no.hello_timeout_ms = core->cfg.hello_timeout_ms;
    no.msg_rate = core->cfg.msg_rate;
    no.msg_burst = core->cfg.msg_burst;
    no.max_connections = core->cfg.max_connections;
    no.keys = &core->keys;
    no.to_core = &core->inbox;
    no.wake = on_wake;
    no.wake_arg = core;
    if (core->tls != NULL) {
        no.tls_cert = core->cfg.tls_cert;
        no.tls_key = core->cfg.tls_key;
    }
    core->net = net_new(&no, err, sizeof(err));
    if (core->net == NULL || net_start(core->net) != NET_OK)
        goto fail;

    evtimer_add(tick_ev, &one_second);
    return 0;

fail:
    fprintf(stderr, "proctord: %s\n", err);
    return -1;
}

static void on_flush_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(int *)arg = 1;
}

/* Lets Redis answer what is in flight (commits above all), within a
 * deadline, so a clean stop loses nothing already sent. */
static void flush_store(struct core *core, int64_t timeout_ms)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    int expired = 0;
    struct event *deadline = evtimer_new(core->base, on_flush_deadline,
                                         &expired);

    evtimer_add(deadline, &tv);
    session_commits_flush(core);
    while (!expired && (store_pending(core->store) > 0 ||
                        vision_pool_busy(core->vision) ||
                        queue_depth(&core->inbox) > 0)) {
        on_inbox(-1, 0, core);
        event_base_loop(core->base, EVLOOP_ONCE);
    }
    if (store_pending(core->store) > 0)
        log_warning("msg=\"stopped with Redis replies outstanding\" "
                    "pending=%d", store_pending(core->store));
    event_free(deadline);
}

static void stop(struct core *core)
{
    int64_t budget = core->cfg.shutdown_timeout_ms;

    if (core->net != NULL) {
        net_shutdown(core->net, budget / 2);
        on_inbox(-1, 0, core);
    }
    if (core->vision != NULL)
        vision_pool_stop(core->vision);
    if (core->store != NULL)
        flush_store(core, budget / 2);

    if (sig_term != NULL) {
        event_free(sig_term);
        event_free(sig_int);
        event_free(sig_hup);
        event_free(tick_ev);
    }
    net_free(core->net);
    {
        struct net_event batch[INBOX_BATCH];
        size_t n;

        /* Whatever the threads posted last is freed, not handled. */
        while ((n = queue_pop_many(&core->inbox, batch, INBOX_BATCH)))
            for (size_t i = 0; i < n; i++) {
                if (batch[i].msg != NULL)
                    proctor__v1__client_message__free_unpacked(batch[i].msg,
                                                               NULL);
                free(batch[i].claims);
            }
    }
    http_free(core->http);
    tls_ctx_free(core->tls);
    vision_pool_free(core->vision);
    session_table_free(core->sessions);
    store_free(core->store);
    if (core->sessions != NULL)
        session_commits_free(core);
    if (core->inbox_ev != NULL)
        event_free(core->inbox_ev);
    queue_cleanup(&core->inbox);
    if (core->base != NULL)
        event_base_free(core->base);
    libevent_global_shutdown();
}

int main(int argc, char **argv)
{
    static struct core core;
    const char *path = NULL;
    int rc = 0;

    if (parse_args(argc, argv, &path) != 0)
        return EXIT_CONFIG;
    if (load_config(&core.cfg, path) != 0)
        return EXIT_CONFIG;
    if (load_tls(&core) != 0)
        return EXIT_CONFIG;
    core.config_path = path;
    log_verbosity = core.cfg.log_level;
    apply_timezone(core.cfg.policy.timezone);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit(core.cfg.max_connections);
    auth_keys_init(&core.keys, core.cfg.jwt_secret,
                   core.cfg.jwt_leeway_ms / 1000);
    evthread_use_pthreads();

    if (start(&core) != 0) {
        stop(&core);
        return 1;
    }
    log_notice("msg=\"proctord started\" version=%s ws=%s http=%s "
               "threads=%d event_lib=%s redis=%s tls=%s", PROCTORD_VERSION,
               core.cfg.ws_listen, core.cfg.http_listen, core.cfg.threads,
               core.cfg.event_lib == CONFIG_EVENT_LIB_UV   ? "uv"
               : core.cfg.event_lib == CONFIG_EVENT_LIB_EV ? "ev"
                                                           : "poll",
               store_address(core.store), core.tls != NULL ? "on" : "off");

    if (event_base_dispatch(core.base) < 0)
        rc = 1;
    stop(&core);
    log_notice("msg=\"proctord stopped\"");
    return rc;
}
