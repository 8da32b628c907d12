/* The bounded, ordered buffer of ledger writes kept while Redis is down:
 * a ring of owned entries, each one allocation. */
#include "backlog.h"

#include <stdlib.h>
#include <string.h>

struct backlog_entry *backlog_entry_new(int script, int nkeys, int argc,
                                        const char **argv,
                                        const size_t *lens)
{
    size_t data = 0, head, size;
    struct backlog_entry *e;
    char *p;

    if (argc <= 0)
        return NULL;
    for (int i = 0; i < argc; i++)
        data += (lens != NULL ? lens[i] : strlen(argv[i])) + 1;
    head = sizeof(*e) + (size_t)argc * (sizeof(char *) + sizeof(size_t));
    size = head + data;
    e = calloc(1, size);
    if (e == NULL)
        return NULL;
    e->script = script;
    e->nkeys = nkeys;
    e->argc = argc;
    e->argv = (const char **)(e + 1);
    e->lens = (size_t *)(e->argv + argc);
    e->bytes = size;

    /* Each copy keeps a NUL after it, so a string argument stays one. */
    p = (char *)e + head;
    for (int i = 0; i < argc; i++) {
        size_t n = lens != NULL ? lens[i] : strlen(argv[i]);

        memcpy(p, argv[i], n);
        p[n] = '\0';
        e->argv[i] = p;
        e->lens[i] = n;
        p += n + 1;
    }
    return e;
}

void backlog_entry_free(struct backlog_entry *e)
{
    free(e);
}

int backlog_init(struct backlog *b, size_t max_entries, size_t max_bytes)
{
    memset(b, 0, sizeof(*b));
    b->max_bytes = max_bytes;
    if (max_entries == 0)
        return BACKLOG_OK;
    b->ring = calloc(max_entries, sizeof(*b->ring));
    if (b->ring == NULL)
        return BACKLOG_FULL;
    b->cap = max_entries;
    return BACKLOG_OK;
}

void backlog_free(struct backlog *b)
{
    struct backlog_entry *e;

    while ((e = backlog_pop(b)) != NULL)
        backlog_entry_free(e);
    free(b->ring);
    memset(b, 0, sizeof(*b));
}

int backlog_room(const struct backlog *b, size_t entries, size_t bytes)
{
    return b->depth + entries <= b->cap && b->bytes + bytes <= b->max_bytes;
}

int backlog_push(struct backlog *b, struct backlog_entry *e)
{
    if (!backlog_room(b, 1, e->bytes))
        return BACKLOG_FULL;
    b->ring[(b->head + b->depth) % b->cap] = e;
    b->depth++;
    b->bytes += e->bytes;
    return BACKLOG_OK;
}

int backlog_unpop(struct backlog *b, struct backlog_entry *e)
{
    if (!backlog_room(b, 1, e->bytes))
        return BACKLOG_FULL;
    b->head = (b->head + b->cap - 1) % b->cap;
    b->ring[b->head] = e;
    b->depth++;
    b->bytes += e->bytes;
    return BACKLOG_OK;
}

struct backlog_entry *backlog_pop(struct backlog *b)
{
    struct backlog_entry *e;

    if (b->depth == 0)
        return NULL;
    e = b->ring[b->head];
    b->ring[b->head] = NULL;
    b->head = (b->head + 1) % b->cap;
    b->depth--;
    b->bytes -= e->bytes;
    return e;
}
