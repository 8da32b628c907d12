/* Process-wide counters for /metrics. Any thread may bump them; they are
 * relaxed atomics because a scrape needs no ordering between them. */
#ifndef PROCTORD_METRICS_H
#define PROCTORD_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

/* Message kinds, in the order of the ClientMessage oneof. */
enum metrics_kind {
    METRICS_HELLO,
    METRICS_HEARTBEAT,
    METRICS_SNAPSHOT,
    METRICS_BYE,
    METRICS_KINDS
};

/* Close codes we count; anything else lands in "other". */
enum metrics_close {
    METRICS_CLOSE_1000,
    METRICS_CLOSE_1001,
    METRICS_CLOSE_4400,
    METRICS_CLOSE_4401,
    METRICS_CLOSE_4403,
    METRICS_CLOSE_4408,
    METRICS_CLOSE_4409,
    METRICS_CLOSE_4413,
    METRICS_CLOSE_4429,
    METRICS_CLOSE_OTHER,
    METRICS_CLOSES
};

struct metrics {
    atomic_uint_fast64_t connections_open;
    atomic_uint_fast64_t connections_total;
    atomic_uint_fast64_t messages_in[METRICS_KINDS];
    atomic_uint_fast64_t messages_out;
    atomic_uint_fast64_t messages_duplicate;
    atomic_uint_fast64_t closes[METRICS_CLOSES];
    atomic_uint_fast64_t queue_refused;
    atomic_uint_fast64_t redis_commands;
    atomic_uint_fast64_t redis_errors;
    atomic_uint_fast64_t redis_reconnects;
    atomic_uint_fast64_t redis_redirects;   /* MOVED, ASK, TRYAGAIN... */
    atomic_uint_fast64_t redis_retries;     /* resends after a delay */
    atomic_uint_fast64_t takeovers_remote;  /* sessions another daemon took */
    atomic_uint_fast64_t redis_latency_us_sum;
    atomic_uint_fast64_t redis_latency_count;
    atomic_uint_fast64_t redis_up;
    atomic_uint_fast64_t http_requests;
    atomic_uint_fast64_t sessions_live;
    atomic_uint_fast64_t snapshots_analyzed;
    atomic_uint_fast64_t vision_busy;
    atomic_uint_fast64_t credited_ms;
    atomic_uint_fast64_t flags_opened;
    atomic_uint_fast64_t commit_buffer_depth;
    atomic_uint_fast64_t commit_buffer_bytes;
    atomic_uint_fast64_t commit_buffer_buffered;
    atomic_uint_fast64_t commit_buffer_applied;
    atomic_uint_fast64_t commit_buffer_dropped;
};

extern struct metrics metrics;

#define metrics_add(field, n) \
    atomic_fetch_add_explicit(&metrics.field, (n), memory_order_relaxed)
#define metrics_sub(field, n) \
    atomic_fetch_sub_explicit(&metrics.field, (n), memory_order_relaxed)
#define metrics_get(field) \
    atomic_load_explicit(&metrics.field, memory_order_relaxed)
#define metrics_set(field, v) \
    atomic_store_explicit(&metrics.field, (v), memory_order_relaxed)

void metrics_count_close(int code);
const char *metrics_close_label(int index);

#endif
