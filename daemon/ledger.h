/* The ledger in Redis: key layout and the Lua scripts that write credit,
 * flags, reviews and enrolments atomically and idempotently. Every key
 * of one learner carries the hash tag {learner}, so each script touches
 * one cluster slot; the few global indexes are written beside them.
 *
 *   pd:{L}:profile            hash  org, role (from the last Hello)
 *   pd:{L}:enrol              hash  model, emb (float32 LE), photo_sha256,
 *                                   enrolled_at_ms, org, box
 *   pd:{L}:stream             stream of every credit, verdict, flag,
 *                                   review and enrolment (field "type")
 *   pd:{L}:course:<C>         hash  total_ms, d:<YYYY-MM-DD> -> ms
 *   pd:{L}:days               hash  <YYYY-MM-DD> -> ms over all courses
 *                                   (what the daily cap applies to)
 *   pd:{L}:session:<sid>      hash  course, org, started_ms, last_ms,
 *                                   c:<check> (commits done),
 *                                   f:<check> -> flag id (flags opened)
 *   pd:{L}:flag:<fid>         hash  the flag's fields (see SPEC, Flags)
 *   pd:{L}:flags              zset  the learner's flag ids by opened ms
 *   pd:{L}:evidence:<eid>     string JPEG, expires after evidence_ttl
 *   pd:{L}:sigs               list  recent replay signatures, newest first
 *   pd:{L}:resume:<sid>       string course; expires after resume_window
 *   pd:flagindex              hash  flag id -> learner id
 *   pd:flags:all, pd:flags:open  zset  flag ids by opened ms
 *   pd:evidx:<eid>            string learner id (expires with the JPEG)
 *   pd:sid:<sid>              string learner id
 *   pd:org:{<O>}:learners     set   learners of an organisation
 */
#ifndef PROCTORD_LEDGER_H
#define PROCTORD_LEDGER_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define LEDGER_OK 0
#define LEDGER_ERR -1

#define LEDGER_SIG_KEEP 16

enum ledger_script {
    LEDGER_HELLO,
    LEDGER_COMMIT,
    LEDGER_FLAG,
    LEDGER_REVIEW,
    LEDGER_ENROL,
    LEDGER_SCRIPTS
};

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

/* A random 128-bit id as 32 lower-case hex characters. */
void ledger_random_id(char out[33]);

/* Formats ms since the epoch as RFC 3339 UTC with milliseconds. */
void ledger_rfc3339(int64_t ms, char *buf, size_t buflen);

#endif
