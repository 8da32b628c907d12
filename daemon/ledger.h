/* The ledger in Redis: key layout and the Lua scripts that write credit,
 * verdicts, flags, reviews, enrolments and erasures atomically and
 * idempotently. Every key of one learner carries the hash tag {learner},
 * so each script's learner keys sit in one cluster slot; the few global
 * indexes are written beside them.
 *
 *   pd:{L}:profile            hash  org, role (from the last Hello),
 *                                   erased_ms (the last erasure)
 *   pd:{L}:enrol              hash  model, emb (float32 LE), photo_sha256,
 *                                   enrolled_at_ms, org, box
 *   pd:{L}:stream             stream of every credit, verdict, flag,
 *                                   review, enrolment, erasure and exam
 *                                   result (field "type")
 *   pd:{L}:course:<C>         hash  total_ms, d:<YYYY-MM-DD> -> ms,
 *                                   flags_open, flags_confirmed
 *   pd:{L}:days               hash  <YYYY-MM-DD> -> ms over all courses
 *                                   (what the daily cap applies to)
 *   pd:{L}:session:<sid>      hash  course, org, started_ms, last_ms,
 *                                   c:<check> (commits done),
 *                                   f:<check> -> flag id (flags opened),
 *                                   n:checks, n:matches, n:credited_ms,
 *                                   n:flag:<kind> (the exam result's)
 *   pd:{L}:flag:<fid>         hash  the flag's fields (see SPEC, Flags);
 *                                   counted = 1 when the course's flag
 *                                   counters include it
 *   pd:{L}:flags              zset  the learner's flag ids by opened ms
 *   pd:{L}:evidence:<eid>     string JPEG, expires after evidence_ttl
 *   pd:{L}:evidence           set   evidence ids, for erasure; expires
 *                                   after the last JPEG added
 *   pd:{L}:sigs               list  recent replay signatures, newest first
 *   pd:{L}:resume:<sid>       string course; expires after resume_window
 *   pd:{L}:lease              string "<daemon id> <sid>": the daemon and
 *                                   session crediting the learner now;
 *                                   taken at every Hello (SET ... GET),
 *                                   extended by its holder only, expires
 *                                   after 3 x heartbeat_grace (10 s at
 *                                   least) without it
 *   pd:takeover               pub/sub channel: "<old daemon> <old sid>
 *                                   <new sid> <learner>" tells the old
 *                                   holder of a lease to let go
 *   pd:flagindex              hash  flag id -> learner id
 *   pd:flags:all, pd:flags:open  zset  flag ids by opened ms
 *   pd:evidx:<eid>            string learner id (expires with the JPEG)
 *   pd:sid:<sid>              string learner id
 *   pd:org:{<O>}:learners     set   learners of an organisation (added at
 *                                   enrolment and at every Hello)
 *   pd:org:{<O>}:roster       zset  the same learners, all at score 0 for
 *                                   paging by id; rebuilt from the set by
 *                                   LEDGER_ROSTER when their sizes differ
 *   pd:events                 stream every credit, flag, review, erasure
 *                                   and exam result of every learner, for
 *                                   platforms reading with consumer
 *                                   groups; trimmed to about
 *                                   redis.events_maxlen entries
 *
 * On a single Redis, pd:events and the flag indexes (pd:flagindex,
 * pd:flags:all, pd:flags:open) are declared among the KEYS of the scripts
 * that write them, so the event and what it reports are written
 * atomically. On Redis Cluster they live in other slots than the
 * learner's keys, and a script may touch one slot only: there the
 * scripts hand those writes back and ledger_run() sends them, each to its
 * own slot, right after the script's reply. That is not atomic: a daemon
 * dying in between (or a master down) loses the event or index entry,
 * never the credit or the flag, which the learner's keys and stream (the
 * record) hold; nothing is written twice, the learner's script being
 * idempotent by check id and the deferred writes following it once.
 *
 * Every script declares the keys it touches, except where their names
 * come from data read inside it: REVIEW (the flag's course and days
 * hashes) and ERASE (the JPEGs its evidence set names). Those carry the
 * same learner's hash tag, so they are in the declared keys' slot, which
 * Redis Cluster checks for every key a script touches.
 */
#ifndef PROCTORD_LEDGER_H
#define PROCTORD_LEDGER_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define LEDGER_OK 0
#define LEDGER_ERR -1

#define LEDGER_SIG_KEEP 16

/* The stream of events out, read by platforms with consumer groups. */
#define LEDGER_EVENTS_KEY "pd:events"

enum ledger_script {
    LEDGER_HELLO,
    LEDGER_COMMIT,
    LEDGER_FLAG,
    LEDGER_REVIEW,
    LEDGER_ENROL,
    LEDGER_VERDICT,
    LEDGER_EVIDENCE,
    LEDGER_EXAM,
    LEDGER_ERASE,
    LEDGER_ROSTER,
    LEDGER_REFRESH,
    LEDGER_SCRIPTS
};

/* Sessions kept alive by one LEDGER_REFRESH call at most. */
#define LEDGER_REFRESH_BATCH 64

/* Registers the scripts with the store (once, at start-up). */
int ledger_init(struct store *st);

/* Runs one of the scripts; argv is keys then arguments, as documented
 * beside each script in ledger.c. */
int ledger_run(struct store *st, enum ledger_script script,
               store_reply_cb cb, void *arg, int nkeys, int argc,
               const char **argv, const size_t *lens);

/* Writes "pd:{<learner>}:<suffix>" into buf. Returns LEDGER_ERR when it
 * does not fit. */
int ledger_key(char *buf, size_t buflen, const char *learner,
               const char *suffix);

/* Appends the exam_result event of session sid at now_ms (its checks,
 * matches, flags by kind and credit, from the counters in its session
 * hash) to the learner's stream and pd:events, trimmed to about
 * events_maxlen. Nothing is written for a session Redis never saw.
 * Returns LEDGER_ERR when the command could not be sent. */
int ledger_exam_result(struct store *st, const char *learner,
                       const char *sid, int64_t now_ms,
                       long long events_maxlen);

/* A random 128-bit id as 32 lower-case hex characters. */
void ledger_random_id(char out[33]);

/* Formats ms since the epoch as RFC 3339 UTC with milliseconds. */
void ledger_rfc3339(int64_t ms, char *buf, size_t buflen);

#endif
