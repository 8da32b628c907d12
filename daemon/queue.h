/* A bounded queue of fixed-size items between threads. Pushing never
 * blocks and never grows memory: a full queue refuses the item and the
 * caller decides (close the connection, answer with back-pressure).
 * Items usually carry owned pointers; whoever pops an item owns them. */
#ifndef PROCTORD_QUEUE_H
#define PROCTORD_QUEUE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define QUEUE_OK 0
#define QUEUE_ERR -1
#define QUEUE_FULL -2

struct queue {
    pthread_mutex_t lock;
    unsigned char *items;
    size_t item_size;
    size_t capacity;
    size_t head;            /* index of the oldest item */
    size_t count;
    uint64_t pushed;        /* totals, for /metrics */
    uint64_t refused;
};

/* Allocates room for capacity items of item_size bytes. */
int queue_init(struct queue *q, size_t capacity, size_t item_size);

/* Frees the storage; items still queued are dropped (their owned
 * pointers leak unless the caller drained them first). */
void queue_cleanup(struct queue *q);

/* Copies item in. Returns QUEUE_OK, or QUEUE_FULL. *was_empty, when not
 * NULL, tells whether the consumer may be asleep and needs a wake-up. */
int queue_push(struct queue *q, const void *item, int *was_empty);

/* Copies up to max items out into out (an array of item_size slots).
 * Returns how many. */
size_t queue_pop_many(struct queue *q, void *out, size_t max);

size_t queue_depth(struct queue *q);

#endif
