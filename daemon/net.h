/* The network threads: one libwebsockets context per thread, all
 * listening on server.ws_listen (SO_REUSEPORT spreads the connections).
 * They own the sockets, framing, size and rate limits, protobuf decoding
 * and token checks, and never touch session state: decoded messages go
 * to the core through one bounded queue, frames come back per thread. */
#ifndef PROCTORD_NET_H
#define PROCTORD_NET_H

#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "proctor.pb-c.h"
#include "queue.h"

#define NET_OK 0
#define NET_ERR -1

enum net_event_type {
    NET_EV_HELLO,       /* msg is a Hello, claims verified */
    NET_EV_MESSAGE,     /* any later message */
    NET_EV_CLOSED,      /* the connection is gone; msg is NULL */
};

/* One item of the queue into the core. msg and claims are owned by the
 * receiver: proctor__v1__client_message__free_unpacked() and free(). */
struct net_event {
    uint64_t conn;
    int type;
    int64_t received_ms;
    Proctor__V1__ClientMessage *msg;
    struct auth_claims *claims;
};

typedef void (*net_wake_cb)(void *arg);

/* The loop under each thread's context. uv and ev are loops of ours,
 * handed to lws as foreign loops through its event-library plugins. */
enum net_event_lib {
    NET_EVENT_LIB_POLL,
    NET_EVENT_LIB_UV,
    NET_EVENT_LIB_EV,
};

struct net_options {
    const char *listen;         /* "address:port" */
    int threads;
    int event_lib;              /* enum net_event_lib */
    size_t max_frame;
    int64_t hello_timeout_ms;
    double msg_rate;
    int msg_burst;
    int max_connections;
    const struct auth_keys *keys;
    struct queue *to_core;      /* of struct net_event */
    net_wake_cb wake;           /* called after a push into an empty queue */
    void *wake_arg;
    /* PEM files, both NULL for plain ws://; checked to load and match
     * before net_new() is called. */
    const char *tls_cert;
    const char *tls_key;
};

struct net;

/* Creates the contexts and binds the port (so a taken port fails here,
 * at start-up). Returns NULL with a message in err. */
struct net *net_new(const struct net_options *opt, char *err, size_t errlen);

/* Starts the service threads. */
int net_start(struct net *net);

/* A payload buffer with the headroom libwebsockets needs before it.
 * Ownership passes to net_send(); free unsent ones with net_frame_free. */
unsigned char *net_frame_new(size_t len);
void net_frame_free(unsigned char *payload);

/* Queues payload for conn and takes ownership of it. close_code, when
 * not 0, closes the connection with that code after the frame (payload
 * may then be NULL). Safe from any thread; a gone connection drops it. */
int net_send(struct net *net, uint64_t conn, unsigned char *payload,
             size_t len, int close_code);

/* Stops accepting, closes every connection with 1001 and ends the
 * threads within timeout_ms. Blocks until they are joined. */
void net_shutdown(struct net *net, int64_t timeout_ms);

void net_free(struct net *net);

/* Frames waiting in the per-thread outbound queues, for /metrics. */
size_t net_outbound_depth(struct net *net);

#endif
