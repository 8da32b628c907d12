/* The commit buffer (redis.commit_buffer): ledger writes kept in order
 * while Redis is down, to be sent once it is back. It is bounded twice,
 * by entries and by bytes (evidence JPEGs travel in it too), and owns
 * what it holds. Only the core thread touches it; it does no I/O. */
#ifndef PROCTORD_BACKLOG_H
#define PROCTORD_BACKLOG_H

#include <stddef.h>
#include <stdint.h>

#define BACKLOG_OK 0
#define BACKLOG_FULL -1

/* Bytes one buffer may hold whatever its entry bound: a few dozen
 * evidence frames, which is what an outage of minutes brings. */
#define BACKLOG_MAX_BYTES (64u * 1024 * 1024)

struct core;

/* One write, with copies of its arguments. script is a ledger script
 * (enum ledger_script), or -1 for a plain command. A commit also names
 * its session (found again by conn and serial) and amount, so that the
 * reply can update the session when it comes. */
struct backlog_entry {
    struct core *core;
    int script;
    int nkeys;
    int argc;
    const char **argv;
    size_t *lens;
    size_t bytes;

    int commit;
    uint64_t conn;
    uint64_t serial;
    int64_t day;
    int64_t ms;
    char check[48];

    int pending;                /* counted in the session's pending_ms */
    int attempts;               /* error replies so far */
    int buffered;               /* it has been in the buffer */
};

struct backlog {
    struct backlog_entry **ring;
    size_t cap;
    size_t head;
    size_t depth;
    size_t bytes;
    size_t max_bytes;
};

/* An entry owning copies of argv (lens NULL: NUL-terminated strings), in
 * one allocation; NULL when out of memory. Free with backlog_entry_free. */
struct backlog_entry *backlog_entry_new(int script, int nkeys, int argc,
                                        const char **argv,
                                        const size_t *lens);
void backlog_entry_free(struct backlog_entry *e);

/* A buffer of at most max_entries entries and max_bytes bytes. A buffer
 * of 0 entries refuses everything. Returns BACKLOG_FULL out of memory. */
int backlog_init(struct backlog *b, size_t max_entries, size_t max_bytes);

/* Frees the buffer and every entry still in it. */
void backlog_free(struct backlog *b);

/* Appends (push) or puts back at the head (unpop); the buffer owns e
 * then. BACKLOG_FULL, leaving e to the caller, past either bound. */
int backlog_push(struct backlog *b, struct backlog_entry *e);
int backlog_unpop(struct backlog *b, struct backlog_entry *e);

/* The oldest entry (the caller owns it), or NULL when empty. */
struct backlog_entry *backlog_pop(struct backlog *b);

/* 1 when entries more entries of bytes bytes in all would fit. */
int backlog_room(const struct backlog *b, size_t entries, size_t bytes);

#endif
