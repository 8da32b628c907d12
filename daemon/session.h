/* Sessions: the table of live learner sessions keyed by connection and by
 * learner, their lifecycle (Hello, resume, take-over, close) and the
 * handling of every protocol message on the core thread. */
#ifndef PROCTORD_SESSION_H
#define PROCTORD_SESSION_H

#include <stddef.h>

#include "core.h"
#include "net.h"

#define SESSION_OK 0
#define SESSION_ERR -1

struct session_table *session_table_new(struct core *core);

/* Frees every session (without sending anything). */
void session_table_free(struct session_table *t);

/* Handles one event from a network thread; takes ownership of its
 * message and claims. */
void session_handle(struct core *core, struct net_event *ev);

/* Drives time: deadlines, absence, heartbeat grace. Called every second. */
void session_tick(struct core *core);

size_t session_count(const struct session_table *t);

/* The commit buffer at shutdown: flush sends what it holds while Redis
 * is up (before the last replies are awaited); free, after the store is
 * gone, logs what it still held, which was never written, and frees it. */
void session_commits_flush(struct core *core);
void session_commits_free(struct core *core);

/* A learner was (re-)enrolled: live sessions of the learner and the
 * organisation's cache of embeddings take the new one. emb holds dim
 * floats; model is the engine's model id. */
void session_enrolled(struct core *core, const char *learner,
                      const char *org, const char *model, const float *emb,
                      int dim);

/* A learner's biometric data was erased: a live session drops its
 * embedding (its checks are answered NOT_ENROLLED until the learner
 * enrols again, and nothing is credited before a match against the new
 * enrolment) and the organisations' caches forget the learner. */
void session_erased(struct core *core, const char *learner);

#endif
