/* Bounded ring of fixed-size items under one mutex. The critical
 * sections are a memcpy each, so a lock-free design would buy little
 * at the rates the core handles, and this one is easy to reason about. */
#include "queue.h"

#include <stdlib.h>
#include <string.h>

int queue_init(struct queue *q, size_t capacity, size_t item_size)
{
    memset(q, 0, sizeof(*q));
    if (capacity == 0 || item_size == 0)
        return QUEUE_ERR;
    q->items = calloc(capacity, item_size);
    if (q->items == NULL)
        return QUEUE_ERR;
    q->capacity = capacity;
    q->item_size = item_size;
    pthread_mutex_init(&q->lock, NULL);
    return QUEUE_OK;
}

void queue_cleanup(struct queue *q)
{
    if (q->items == NULL)
        return;
    pthread_mutex_destroy(&q->lock);
    free(q->items);
    q->items = NULL;
}

int queue_push(struct queue *q, const void *item, int *was_empty)
{
    size_t tail;

    pthread_mutex_lock(&q->lock);
    if (q->count == q->capacity) {
        q->refused++;
        pthread_mutex_unlock(&q->lock);
        return QUEUE_FULL;
    }
    if (was_empty != NULL)
        *was_empty = q->count == 0;
    tail = (q->head + q->count) % q->capacity;
    memcpy(q->items + tail * q->item_size, item, q->item_size);
    q->count++;
    q->pushed++;
    pthread_mutex_unlock(&q->lock);
    return QUEUE_OK;
}

size_t queue_pop_many(struct queue *q, void *out, size_t max)
{
    unsigned char *dst = out;
    size_t n = 0;

    pthread_mutex_lock(&q->lock);
    while (n < max && q->count > 0) {
        memcpy(dst + n * q->item_size, q->items + q->head * q->item_size,
               q->item_size);
        q->head = (q->head + 1) % q->capacity;
        q->count--;
        n++;
    }
    pthread_mutex_unlock(&q->lock);
    return n;
}

size_t queue_depth(struct queue *q)
{
    size_t n;

    pthread_mutex_lock(&q->lock);
    n = q->count;
    pthread_mutex_unlock(&q->lock);
    return n;
}
