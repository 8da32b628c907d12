/* The Redis link: one hiredis async connection on the core's libevent
 * base, reconnected with back-off whenever Redis is down or goes away,
 * and, for redis.address = embedded, a private redis-server child with
 * AOF under redis.data_dir. With redis.cluster the address is a seed
 * node of a Redis Cluster: the store reads the slot map, keeps one link
 * per master and sends each command to the master of its key's slot,
 * following MOVED and ASK. Only the core thread calls in here. */
#ifndef PROCTORD_STORE_H
#define PROCTORD_STORE_H

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define STORE_OK 0
#define STORE_ERR -1

struct store;

/* Called once per command with the reply, or with reply NULL when the
 * command failed (not connected, or the connection dropped). hiredis
 * frees the reply after the callback: copy what must outlive it. */
typedef void (*store_reply_cb)(struct store *st, redisReply *reply,
                               void *arg);

/* Called whenever the link comes up (up = 1) or goes down (up = 0). */
typedef void (*store_state_cb)(struct store *st, int up, void *arg);

/* Starts the embedded redis-server when configured (waiting until it
 * answers) and begins connecting. Returns NULL with err filled only for
 * what an operator must fix (no redis-server, data_dir not writable);
 * an external Redis that is down is retried, not fatal. */
struct store *store_new(struct event_base *base, const struct config *cfg,
                        char *err, size_t errlen);

void store_set_state_cb(struct store *st, store_state_cb cb, void *arg);

/* Called for each message published on the subscribed channel. */
typedef void (*store_message_cb)(struct store *st, const char *msg,
                                 size_t len, void *arg);

/* Subscribes to one channel on a link of its own, kept subscribed
 * across reconnects (on a cluster, any node: PUBLISH reaches all).
 * Messages sent while the link was down are lost. */
int store_subscribe(struct store *st, const char *channel,
                    store_message_cb cb, void *arg);

/* 1 when keys a and b may go in one multi-key command: always on a
 * single Redis, on a cluster when they share a slot. */
int store_same_slot(const struct store *st, const char *a, const char *b);

/* 1 when the store speaks Redis Cluster. */
int store_is_cluster(const struct store *st);

/* Sends a command (printf-style as in redisAsyncCommand). Returns
 * STORE_ERR, without calling cb, when Redis is not connected (on a
 * cluster: the master of the key's slot). */
int store_command(struct store *st, store_reply_cb cb, void *arg,
                  const char *fmt, ...);

/* Same with an argument vector (binary-safe). */
int store_command_argv(struct store *st, store_reply_cb cb, void *arg,
                       int argc, const char **argv, const size_t *lens);

/* Registers a Lua script by name; it is loaded (SCRIPT LOAD) on every
 * connect. Returns a handle for store_script(), or -1. */
int store_script_add(struct store *st, const char *source);

/* Runs script handle with EVALSHA (falling back to EVAL when Redis lost
 * it). argv holds the keys first, then the arguments. */
int store_script(struct store *st, int script, store_reply_cb cb,
                 void *arg, int nkeys, int argc, const char **argv,
                 const size_t *lens);

/* Connected, and answering: a Redis that has let commands wait for two
 * seconds without a reply counts as down until it answers again. */
int store_is_up(const struct store *st);

/* Commands sent and not yet answered. */
int store_pending(const struct store *st);

/* Disconnects (after pending replies when possible) and stops the
 * embedded server. */
void store_free(struct store *st);

/* The address the embedded server listens on (a unix socket path), or
 * the configured host:port. */
const char *store_address(const struct store *st);

#endif
