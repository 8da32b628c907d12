/* The core thread's shared context: configuration, the libevent base and
 * the modules wired to it. Everything here is owned and touched by the
 * core thread only, except the queues, which other threads push into. */
#ifndef PROCTORD_CORE_H
#define PROCTORD_CORE_H

#include <event2/event.h>
#include <stdint.h>

#include "auth.h"
#include "config.h"
#include "queue.h"

struct net;
struct store;
struct http;
struct session_table;
struct vision_pool;
struct ssl_ctx_st;

struct core {
    struct config cfg;
    const char *config_path;
    struct event_base *base;
    struct auth_keys keys;
    struct net *net;
    struct store *store;
    struct http *http;
    struct session_table *sessions;
    struct vision_pool *vision;
    struct ssl_ctx_st *tls;     /* NULL without server.tls_cert */
    struct queue inbox;         /* struct net_event, from network threads */
    struct event *inbox_ev;
    int draining;
};

/* Milliseconds since the epoch, wall clock. */
int64_t core_now_ms(void);

#endif
