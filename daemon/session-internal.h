/* The session structure and the helpers shared by the core-thread files
 * that act on it: session.c (table, Hello, messages), challenge.c (face
 * checks: scheduling, snapshots, verdicts) and credit.c (writing what the
 * policy decided to the ledger). Not an interface for other modules. */
#ifndef PROCTORD_SESSION_INTERNAL_H
#define PROCTORD_SESSION_INTERNAL_H

#include <stdint.h>

#include "auth.h"
#include "core.h"
#include "policy.h"
#include "proctor.pb-c.h"

struct session {
    struct session *next_conn;
    struct session *next_learner;
    uint64_t conn;
    uint64_t serial;
    char id[33];
    struct auth_claims claims;
    uint64_t ack_seq;
    int64_t started_ms;
    int64_t last_seen_ms;
    int64_t last_active_ms;     /* last heartbeat that accrued */
    int64_t alive_ms;           /* lease and resume key last written */

    struct policy_session pol;
    int64_t credited_ms;        /* the course's committed total */
    int64_t today_ms;           /* committed today over all courses */
    int64_t today;              /* local day index of today_ms */

    float *emb;                 /* owned: the enrolled embedding */
    int dim;

    /* The outstanding challenge (0: none) and the next one's time. */
    uint64_t challenge_id;
    int64_t challenge_deadline_ms;
    int64_t next_challenge_ms;
    uint32_t challenges;
    /* The outstanding challenge's Action (liveness): NONE or a turn. */
    int challenge_action;

    /* The frame that began a face-less stretch, kept as evidence. */
    char absent_evidence[33];

    /* Decided commits waiting in the commit buffer for Redis. */
    int64_t pending_ms;

    /* The challenge whose snapshot is being analysed (0: unsolicited),
     * so that an erasure meanwhile can still answer it. */
    uint64_t analysing_id;

    unsigned welcomed : 1;
    /* Statuses owed for heartbeats that came before the Welcome. */
    uint8_t status_pending;
    unsigned analysing : 1;
    unsigned exam : 1;
};

/* Finds the live session on conn with serial, or NULL when it is gone. */
struct session *session_find(struct core *core, uint64_t conn,
                             uint64_t serial);

void session_send(struct core *core, struct session *s,
                  Proctor__V1__ServerMessage *m);
void session_send_status(struct core *core, struct session *s);
void session_send_verdict(struct core *core, struct session *s,
                          uint64_t challenge_id, int outcome,
                          float similarity, uint32_t faces);
struct credit_reply;
/* The Verdict of reply, with its hint when it has one. */
void session_send_reply(struct core *core, struct session *s,
                        const struct credit_reply *reply);

/* The best similarity of the face to another enrolled learner of the
 * session's organisation, from the core's cache; -1 when none is known. */
float session_best_other(struct core *core, const struct session *s,
                         const float *emb, int dim);

/* policy.timezone's UTC offset at now_ms. */
int32_t session_utc_offset(int64_t now_ms);

/* ---- challenge.c ---- */

/* Schedules the next challenge: soon (after a face-less or poor check) or
 * after an exponential gap with the configured mean. */
void challenge_schedule(struct core *core, struct session *s, int64_t now,
                        int soon);

/* Sends due challenges and handles deadlines passed. */
void challenge_tick(struct core *core, struct session *s, int64_t now);

/* A Snapshot from the learner. */
void challenge_on_snapshot(struct core *core, struct session *s,
                           Proctor__V1__Snapshot *snap, int64_t now);

/* The vision job challenge_on_snapshot() submits for snap, before any
 * session state is looked at; NULL when out of memory. Exposed for the
 * frame fuzz target (tests/fuzz), which has no core to submit to. */
struct vision_job;
struct vision_job *challenge_snapshot_job(const Proctor__V1__Snapshot *snap,
                                          int action);

/* ---- credit.c ---- */

/* What to send once the decision's writes are in Redis. */
struct credit_reply {
    int has_verdict;
    uint64_t challenge_id;
    int outcome;
    float similarity;
    uint32_t faces;
    /* LOW_QUALITY: what to fix (a static string), or NULL. */
    const char *hint;
};

/* Writes decision d (commits, flags with their evidence) for session s
 * under check, then sends the verdict in reply (may be NULL) and a
 * Status. jpeg (may be NULL) is stored as evidence of any flag opened. */
void credit_apply(struct core *core, struct session *s,
                  const struct policy_decision *d, const char *check,
                  const unsigned char *jpeg, size_t jpeg_len,
                  const struct credit_reply *reply);

/* Keeps jpeg as evidence of a face-less stretch that may become a
 * no_face flag later (the first frame of the stretch only). */
void credit_keep_absence(struct core *core, struct session *s,
                         const unsigned char *jpeg, size_t len);

/* Opens a flag the policy does not decide (concurrent_session). */
void credit_flag(struct core *core, struct session *s,
                 enum policy_flag kind, int64_t withheld_ms,
                 const char *check, int64_t now);

/* Sends what the commit buffer holds, oldest first, while Redis is up
 * (once per tick: writes whose replies were lost, and all that was
 * decided while Redis was down). */
void credit_drain(struct core *core);

/* 1 when one more decision's writes can be made now: Redis is up with
 * nothing buffered before them, or the buffer has room for them. */
int credit_can_defer(struct core *core);

/* 1 when crediting must pause: writes are being buffered and the buffer
 * is full but for a reserve kept for decisions made while paused. */
int credit_paused(struct core *core);

/* The Status reason of such a pause: "commit_buffer_full", or "paused"
 * when no buffer is configured (redis.commit_buffer = 0). */
const char *credit_pause_reason(struct core *core);

#endif
