/* The ledger's Lua scripts. Each runs atomically inside Redis and touches
 * one learner's keys (plus pd:events, see ledger.h); the crediting ones
 * are idempotent by a check id recorded in the session hash, so a
 * retried or replayed call adds nothing, to the ledger or to the
 * events. */
#include "ledger.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* Opens each script that writes a global key (pd:events, the flag
 * indexes). On a single Redis those keys are among the KEYS from index
 * G on and g() writes them in the script, atomically with the learner's
 * keys. On Redis Cluster they live in other slots, so ledger_run()
 * leaves them out of KEYS: g() then collects the writes, done() returns
 * them beside the reply, and ledger_run() sends each to its own slot
 * once the script has run. */
#define GLOBALS_LUA(first)                                               \
    "local deferred, G = {}, " #first "\n"                               \
    "local function g(cmd, k, ...)\n"                                    \
    "  if KEYS[G] then return redis.call(cmd, KEYS[k], ...) end\n"       \
    "  deferred[#deferred + 1] = {cmd, k, ...}\n"                        \
    "end\n"                                                              \
    "local function done(r)\n"                                           \
    "  if KEYS[G] then return r end\n"                                   \
    "  return {r, deferred}\n"                                           \
    "end\n"

/* KEYS: resume key of the asked session, course hash, days hash, enrol
 *       hash, resume key and session hash of the new sid, session hash
 *       of the asked sid (the new one's again when none is asked),
 *       profile: every key it touches, declared, in the learner's slot.
 * ARGV: new sid, asked sid ("" for none), resume_window ms, learner,
 *       course, today (YYYY-MM-DD), org, now ms, role.
 * Returns {sid, course total ms, today's ms, model, embedding, resumed}.
 * The organisation's set is in another slot: the caller adds to it. */
static const char HELLO_LUA[] =
    "local sid, rk, sk = ARGV[1], KEYS[5], KEYS[6]\n"
    "local resumed = 0\n"
    "if ARGV[2] ~= '' and redis.call('GET', KEYS[1]) == ARGV[5] then\n"
    "  sid, rk, sk = ARGV[2], KEYS[1], KEYS[7]\n"
    "  resumed = 1\n"
    "end\n"
    "redis.call('SET', rk, ARGV[5], 'PX', ARGV[3])\n"
    "if redis.call('HSETNX', sk, 'started_ms', ARGV[8]) == 1 then\n"
    "  redis.call('HSET', sk, 'course', ARGV[5], 'org', ARGV[7])\n"
    "end\n"
    "redis.call('HSET', sk, 'last_ms', ARGV[8])\n"
    "redis.call('HSET', KEYS[8], 'org', ARGV[7], 'role', ARGV[9])\n"
    "local total = redis.call('HGET', KEYS[2], 'total_ms') or '0'\n"
    "local today = redis.call('HGET', KEYS[3], ARGV[6]) or '0'\n"
    "local e = redis.call('HMGET', KEYS[4], 'model', 'emb')\n"
    "return {sid, tonumber(total), tonumber(today), e[1] or '', e[2] or '',"
    " resumed}\n";

/* KEYS: session hash, course hash, days hash, stream, pd:events.
 * ARGV: check id, day, ms, daily cap ms (negative: none), course, sid,
 *       now ms, learner, org, events maxlen.
 * Returns {credited ms, course total ms, day total ms, 1 if a repeat}. */
static const char COMMIT_LUA[] =
    GLOBALS_LUA(5)
    "local function n(v) return tonumber(v or '0') end\n"
    "if redis.call('HSETNX', KEYS[1], 'c:' .. ARGV[1], ARGV[3]) == 0 then\n"
    "  return done({0, n(redis.call('HGET', KEYS[2], 'total_ms')),\n"
    "          n(redis.call('HGET', KEYS[3], ARGV[2])), 1})\n"
    "end\n"
    "local already = n(redis.call('HGET', KEYS[3], ARGV[2]))\n"
    "local add = n(ARGV[3])\n"
    "local cap = n(ARGV[4])\n"
    "if cap >= 0 and already + add > cap then\n"
    "  add = math.max(0, cap - already)\n"
    "end\n"
    "if add > 0 then\n"
    "  redis.call('HINCRBY', KEYS[3], ARGV[2], add)\n"
    "  redis.call('HINCRBY', KEYS[2], 'total_ms', add)\n"
    "  redis.call('HINCRBY', KEYS[2], 'd:' .. ARGV[2], add)\n"
    "  redis.call('HINCRBY', KEYS[1], 'n:credited_ms', add)\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'last_ms', ARGV[7])\n"
    "local id = redis.call('XADD', KEYS[4], '*', 'type', 'credit',\n"
    "  'session', ARGV[6], 'course', ARGV[5], 'check', ARGV[1],\n"
    "  'day', ARGV[2], 'requested_ms', ARGV[3], 'credited_ms', add,\n"
    "  'at_ms', ARGV[7])\n"
    "g('XADD', 5, 'MAXLEN', '~', ARGV[10], '*',\n"
    "  'type', 'credit', 'learner_id', ARGV[8], 'org', ARGV[9],\n"
    "  'course', ARGV[5], 'session_id', ARGV[6], 'check', ARGV[1],\n"
    "  'day', ARGV[2], 'requested_ms', ARGV[3], 'credited_ms', add,\n"
    "  'at_ms', ARGV[7], 'event_id', id)\n"
    "return done({add, n(redis.call('HGET', KEYS[2], 'total_ms')),\n"
    "        already + add, 0})\n";

/* KEYS: session hash, flag hash, learner's flag zset, stream, course
 *       hash, pd:events, pd:flagindex, pd:flags:all, pd:flags:open (the
 *       last four are global: on Redis Cluster they sit in other slots,
 *       like pd:events).
 * ARGV: check id, flag id, kind, learner, org, course, sid, opened ms,
 *       evidence ids (comma separated), withheld ms, day, events maxlen.
 * Returns {flag id, 1 if it existed already}. The course's flags_open
 * counter counts it, so a report needs no scan of the flags. */
static const char FLAG_LUA[] =
    GLOBALS_LUA(6)
    "local prior = redis.call('HGET', KEYS[1], 'f:' .. ARGV[1])\n"
    "if prior then return done({prior, 1}) end\n"
    "redis.call('HSET', KEYS[1], 'f:' .. ARGV[1], ARGV[2])\n"
    "redis.call('HINCRBY', KEYS[1], 'n:flag:' .. ARGV[3], 1)\n"
    "redis.call('HSET', KEYS[2], 'id', ARGV[2], 'kind', ARGV[3],\n"
    "  'learner_id', ARGV[4], 'org', ARGV[5], 'course', ARGV[6],\n"
    "  'session_id', ARGV[7], 'opened_ms', ARGV[8], 'evidence', ARGV[9],\n"
    "  'withheld_ms', ARGV[10], 'day', ARGV[11], 'status', 'open',\n"
    "  'counted', '1')\n"
    "redis.call('ZADD', KEYS[3], ARGV[8], ARGV[2])\n"
    "g('HSET', 7, ARGV[2], ARGV[4])\n"
    "g('ZADD', 8, ARGV[8], ARGV[2])\n"
    "g('ZADD', 9, ARGV[8], ARGV[2])\n"
    "redis.call('HINCRBY', KEYS[5], 'flags_open', 1)\n"
    "local id = redis.call('XADD', KEYS[4], '*', 'type', 'flag',\n"
    "  'flag', ARGV[2], 'kind', ARGV[3], 'session', ARGV[7],\n"
    "  'course', ARGV[6], 'evidence', ARGV[9], 'withheld_ms', ARGV[10],\n"
    "  'at_ms', ARGV[8])\n"
    "g('XADD', 6, 'MAXLEN', '~', ARGV[12], '*',\n"
    "  'type', 'flag', 'learner_id', ARGV[4], 'org', ARGV[5],\n"
    "  'course', ARGV[6], 'session_id', ARGV[7], 'flag_id', ARGV[2],\n"
    "  'kind', ARGV[3], 'evidence', ARGV[9], 'withheld_ms', ARGV[10],\n"
    "  'day', ARGV[11], 'at_ms', ARGV[8], 'event_id', id)\n"
    "return done({ARGV[2], 0})\n";

/* KEYS: flag hash, stream, pd:events.
 * ARGV: decision (confirmed | dismissed), reviewer, note, now ms, daily
 *       cap ms (negative: none), events maxlen.
 * Returns {status, credited ms, 1 if it was reviewed already}, or an
 * error reply "NOFLAG" or "CONFLICT <status>". Dismissal credits the
 * withheld time to the flag's day and course, within the day's cap. A
 * flag the course's counters count moves from flags_open (to
 * flags_confirmed when confirmed); one written before the counters
 * existed changes no counter. */
static const char REVIEW_LUA[] =
    GLOBALS_LUA(3)
    "local f = redis.call('HMGET', KEYS[1], 'status', 'learner_id',\n"
    "  'course', 'day', 'withheld_ms', 'credited_ms', 'counted', 'org',\n"
    "  'session_id', 'kind', 'id')\n"
    "if not f[1] then return redis.error_reply('NOFLAG') end\n"
    "if f[1] ~= 'open' then\n"
    "  if f[1] == ARGV[1] then\n"
    "    return done({f[1], tonumber(f[6] or '0'), 1})\n"
    "  end\n"
    "  return redis.error_reply('CONFLICT ' .. f[1])\n"
    "end\n"
    "for i = 2, 11 do f[i] = f[i] or '' end\n"
    "local tag = 'pd:{' .. f[2] .. '}:'\n"
    "local course = tag .. 'course:' .. f[3]\n"
    "local add = 0\n"
    "if ARGV[1] == 'dismissed' then\n"
    "  local days = tag .. 'days'\n"
    "  local already = tonumber(redis.call('HGET', days, f[4]) or '0')\n"
    "  add = tonumber(f[5] ~= '' and f[5] or '0')\n"
    "  local cap = tonumber(ARGV[5])\n"
    "  if cap >= 0 and already + add > cap then\n"
    "    add = math.max(0, cap - already)\n"
    "  end\n"
    "  if add > 0 then\n"
    "    redis.call('HINCRBY', days, f[4], add)\n"
    "    redis.call('HINCRBY', course, 'total_ms', add)\n"
    "    redis.call('HINCRBY', course, 'd:' .. f[4], add)\n"
    "  end\n"
    "end\n"
    "if f[7] == '1' then\n"
    "  redis.call('HINCRBY', course, 'flags_open', -1)\n"
    "  if ARGV[1] == 'confirmed' then\n"
    "    redis.call('HINCRBY', course, 'flags_confirmed', 1)\n"
    "  end\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'status', ARGV[1], 'reviewed_by', ARGV[2],\n"
    "  'reviewed_ms', ARGV[4], 'note', ARGV[3], 'credited_ms', add)\n"
    "local id = redis.call('XADD', KEYS[2], '*', 'type', 'review',\n"
    "  'flag', f[11], 'decision', ARGV[1], 'reviewer', ARGV[2],\n"
    "  'note', ARGV[3], 'credited_ms', add, 'at_ms', ARGV[4])\n"
    "g('XADD', 3, 'MAXLEN', '~', ARGV[6], '*',\n"
    "  'type', 'review', 'learner_id', f[2], 'org', f[8],\n"
    "  'course', f[3], 'session_id', f[9], 'flag_id', f[11],\n"
    "  'kind', f[10], 'decision', ARGV[1], 'reviewer', ARGV[2],\n"
    "  'credited_ms', add, 'day', f[4], 'at_ms', ARGV[4],\n"
    "  'event_id', id)\n"
    "return done({ARGV[1], add, 0})\n";

/* KEYS: enrol hash, stream.
 * ARGV: model, embedding, photo sha256 (hex), now ms, org, box (JSON).
 * Returns 1 when an earlier enrolment was replaced. The photo's hash
 * stays out of the stream, which outlives an erasure. */
static const char ENROL_LUA[] =
    "local replaced = redis.call('EXISTS', KEYS[1])\n"
    "redis.call('DEL', KEYS[1])\n"
    "redis.call('HSET', KEYS[1], 'model', ARGV[1], 'emb', ARGV[2],\n"
    "  'photo_sha256', ARGV[3], 'enrolled_at_ms', ARGV[4], 'org', ARGV[5],\n"
    "  'box', ARGV[6])\n"
    "redis.call('XADD', KEYS[2], '*', 'type', 'enrolment', 'model',\n"
    "  ARGV[1], 'replaced', replaced, 'at_ms', ARGV[4])\n"
    "return replaced\n";

/* KEYS: session hash, stream.
 * ARGV: sid, course, challenge id, outcome, similarity, faces, now ms,
 *       check id.
 * Returns the stream entry's id. Counts the session's checks and
 * matches for its exam result. */
static const char VERDICT_LUA[] =
    "redis.call('HINCRBY', KEYS[1], 'n:checks', 1)\n"
    "if ARGV[4] == 'MATCH' then\n"
    "  redis.call('HINCRBY', KEYS[1], 'n:matches', 1)\n"
    "end\n"
    "return redis.call('XADD', KEYS[2], '*', 'type', 'verdict',\n"
    "  'session', ARGV[1], 'course', ARGV[2], 'challenge', ARGV[3],\n"
    "  'outcome', ARGV[4], 'similarity', ARGV[5], 'faces', ARGV[6],\n"
    "  'check', ARGV[8], 'at_ms', ARGV[7])\n";

/* KEYS: evidence JPEG, learner's evidence set.
 * ARGV: JPEG, ttl ms, evidence id.
 * The set outlives every JPEG it names, whatever evidence_ttl was when
 * each was stored, so an erasure finds them all. */
static const char EVIDENCE_LUA[] =
    "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
    "redis.call('SADD', KEYS[2], ARGV[3])\n"
    "if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then\n"
    "  redis.call('PEXPIRE', KEYS[2], ARGV[2])\n"
    "end\n"
    "return 1\n";

/* KEYS: session hash, stream, pd:events.
 * ARGV: learner, sid, now ms, events maxlen.
 * Returns the stream entry's id, or nil when the session is unknown.
 * flags is "kind:n,kind:n" sorted by kind; session_credited_ms is not
 * named credited_ms so that sums over a stream count each credit once. */
static const char EXAM_LUA[] =
    GLOBALS_LUA(3)
    "local h = redis.call('HGETALL', KEYS[1])\n"
    "if #h == 0 then return done(false) end\n"
    "local v, kinds = {}, {}\n"
    "for i = 1, #h, 2 do\n"
    "  v[h[i]] = h[i + 1]\n"
    "  local k = string.match(h[i], '^n:flag:(.+)$')\n"
    "  if k then kinds[#kinds + 1] = k end\n"
    "end\n"
    "table.sort(kinds)\n"
    "local parts, total = {}, 0\n"
    "for _, k in ipairs(kinds) do\n"
    "  parts[#parts + 1] = k .. ':' .. v['n:flag:' .. k]\n"
    "  total = total + tonumber(v['n:flag:' .. k])\n"
    "end\n"
    "local flags = table.concat(parts, ',')\n"
    "local checks = v['n:checks'] or '0'\n"
    "local matches = v['n:matches'] or '0'\n"
    "local credited = v['n:credited_ms'] or '0'\n"
    "local course, org = v['course'] or '', v['org'] or ''\n"
    "local id = redis.call('XADD', KEYS[2], '*', 'type', 'exam_result',\n"
    "  'session', ARGV[2], 'course', course, 'checks', checks,\n"
    "  'matches', matches, 'flags', flags, 'flags_total', total,\n"
    "  'session_credited_ms', credited, 'at_ms', ARGV[3])\n"
    "g('XADD', 3, 'MAXLEN', '~', ARGV[4], '*',\n"
    "  'type', 'exam_result', 'learner_id', ARGV[1], 'org', org,\n"
    "  'course', course, 'session_id', ARGV[2], 'checks', checks,\n"
    "  'matches', matches, 'flags', flags, 'flags_total', total,\n"
    "  'session_credited_ms', credited, 'at_ms', ARGV[3],\n"
    "  'event_id', id)\n"
    "return done(id)\n";

/* KEYS: enrol hash, sigs list, evidence set, stream, profile,
 *       pd:events.
 * ARGV: learner, now ms, events maxlen.
 * Returns {enrolment deleted, signatures deleted, JPEGs deleted,
 * enrolment entries removed, 1 if recorded, evidence id...}; the caller
 * deletes the pd:evidx keys of those ids (other slots). Deletes the
 * biometric data and keeps the ledger: credits, flags (their evidence
 * ids then name nothing) and reviews. Enrolment entries that older
 * versions wrote with the photo's hash are removed from the stream,
 * which costs one pass over it. The erasure is recorded the first time
 * and whenever something was deleted, so a repeat adds nothing. */
static const char ERASE_LUA[] =
    GLOBALS_LUA(6)
    "local tag = 'pd:{' .. ARGV[1] .. '}:'\n"
    "local enrol = redis.call('DEL', KEYS[1])\n"
    "local sigs = redis.call('DEL', KEYS[2])\n"
    "local eids = redis.call('SMEMBERS', KEYS[3])\n"
    "local images = 0\n"
    "for _, e in ipairs(eids) do\n"
    "  images = images + redis.call('DEL', tag .. 'evidence:' .. e)\n"
    "end\n"
    "redis.call('DEL', KEYS[3])\n"
    "local redacted, from = 0, '-'\n"
    "while true do\n"
    "  local batch = redis.call('XRANGE', KEYS[4], from, '+', 'COUNT', 1000)\n"
    "  for _, e in ipairs(batch) do\n"
    "    local f, enrolment, hashed = e[2], false, false\n"
    "    for i = 1, #f, 2 do\n"
    "      if f[i] == 'type' and f[i + 1] == 'enrolment' then\n"
    "        enrolment = true\n"
    "      elseif f[i] == 'photo_sha256' then\n"
    "        hashed = true\n"
    "      end\n"
    "    end\n"
    "    if enrolment and hashed then\n"
    "      redacted = redacted + redis.call('XDEL', KEYS[4], e[1])\n"
    "    end\n"
    "  end\n"
    "  if #batch < 1000 then break end\n"
    "  from = '(' .. batch[#batch][1]\n"
    "end\n"
    "local recorded = 0\n"
    "local first = redis.call('HEXISTS', KEYS[5], 'erased_ms') == 0\n"
    "if first or enrol + sigs + #eids + redacted > 0 then\n"
    "  redis.call('HSET', KEYS[5], 'erased_ms', ARGV[2])\n"
    "  local id = redis.call('XADD', KEYS[4], '*', 'type', 'erasure',\n"
    "    'enrolment', enrol, 'signatures', sigs, 'evidence_ids', #eids,\n"
    "    'evidence_images', images, 'enrolment_entries', redacted,\n"
    "    'at_ms', ARGV[2])\n"
    "  g('XADD', 6, 'MAXLEN', '~', ARGV[3], '*',\n"
    "    'type', 'erasure', 'learner_id', ARGV[1], 'enrolment', enrol,\n"
    "    'evidence_images', images, 'at_ms', ARGV[2], 'event_id', id)\n"
    "  recorded = 1\n"
    "end\n"
    "local out = {enrol, sigs, images, redacted, recorded}\n"
    "for _, e in ipairs(eids) do out[#out + 1] = e end\n"
    "return done(out)\n";

/* KEYS: organisation's set, its roster zset.
 * ARGV: ZRANGE BYLEX start ("-" or "(<last id>"), count.
 * Returns up to count learner ids after start, in byte order. Hello and
 * enrolment add to the set only; the roster catches up here, with one
 * ZUNIONSTORE whenever the two differ in size (members are never
 * removed, so equal sizes mean equal members). */
static const char ROSTER_LUA[] =
    "if redis.call('SCARD', KEYS[1]) ~= redis.call('ZCARD', KEYS[2]) then\n"
    "  redis.call('ZUNIONSTORE', KEYS[2], 2, KEYS[2], KEYS[1],\n"
    "             'WEIGHTS', 0, 0)\n"
    "end\n"
    "return redis.call('ZRANGE', KEYS[2], ARGV[1], '+', 'BYLEX', 'LIMIT',\n"
    "                  0, ARGV[2])\n";

/* KEYS: per live session, the learner's lease then the session's resume
 * key.
 * ARGV: lease ttl ms, resume ttl ms ("0": no resume keys), then per
 * session its lease holder ("<daemon id> <session id>") and its course.
 * Returns per session the lease's holder after the call: its own when
 * the lease was its own (or nobody's, after an expiry) and is extended,
 * else the other holder, whose lease is left alone. One call keeps a
 * batch of sessions leased and resumable, so keeping sessions alive
 * costs a round trip per batch rather than two per session. */
static const char REFRESH_LUA[] =
    "local holders = {}\n"
    "for i = 1, #KEYS / 2 do\n"
    "  local holder = ARGV[2 * i + 1]\n"
    "  local v = redis.call('GET', KEYS[2 * i - 1])\n"
    "  if v and v ~= holder then\n"
    "    holders[i] = v\n"
    "  else\n"
    "    redis.call('SET', KEYS[2 * i - 1], holder, 'PX', ARGV[1])\n"
    "    holders[i] = holder\n"
    "  end\n"
    "  if ARGV[2] ~= '0' then\n"
    "    redis.call('SET', KEYS[2 * i], ARGV[2 * i + 2], 'PX', ARGV[2])\n"
    "  end\n"
    "end\n"
    "return holders\n";

static int handles[LEDGER_SCRIPTS];

int ledger_init(struct store *st)
{
    static const char *const sources[LEDGER_SCRIPTS] = {
        HELLO_LUA,   COMMIT_LUA, FLAG_LUA,  REVIEW_LUA, ENROL_LUA,
        VERDICT_LUA, EVIDENCE_LUA, EXAM_LUA, ERASE_LUA, ROSTER_LUA,
        REFRESH_LUA,
    };

    for (int i = 0; i < LEDGER_SCRIPTS; i++) {
        handles[i] = store_script_add(st, sources[i]);
        if (handles[i] < 0)
            return LEDGER_ERR;
    }
    return LEDGER_OK;
}

/* How many of each script's KEYS, at the end, are global keys (see
 * GLOBALS_LUA). */
static const int global_keys[LEDGER_SCRIPTS] = {
    [LEDGER_COMMIT] = 1, [LEDGER_FLAG] = 4, [LEDGER_REVIEW] = 1,
    [LEDGER_EXAM] = 1,   [LEDGER_ERASE] = 1,
};

#define LEDGER_GLOBAL_MAX 4
#define LEDGER_GLOBAL_KEYLEN 64

/* A cluster call whose global writes follow the script's reply. */
struct deferred_call {
    store_reply_cb cb;
    void *arg;
    int first;                  /* KEYS index (1-based) of names[0] */
    int n;
    char names[LEDGER_GLOBAL_MAX][LEDGER_GLOBAL_KEYLEN];
};

/* Sends one deferred write {cmd, key index, args...}. */
static void send_deferred(struct store *st, const struct deferred_call *d,
                          const redisReply *w)
{
    const char *argv[40];
    size_t lens[40];
    char nums[40][24];
    long long k;

    if (w->type != REDIS_REPLY_ARRAY || w->elements < 2 ||
        w->elements > 40 || w->element[0]->type != REDIS_REPLY_STRING ||
        w->element[1]->type != REDIS_REPLY_INTEGER)
        goto bad;
    k = w->element[1]->integer - d->first;
    if (k < 0 || k >= d->n)
        goto bad;
    argv[0] = w->element[0]->str;
    lens[0] = w->element[0]->len;
    argv[1] = d->names[k];
    lens[1] = strlen(d->names[k]);
    for (size_t i = 2; i < w->elements; i++) {
        const redisReply *e = w->element[i];

        if (e->type == REDIS_REPLY_INTEGER) {
            lens[i] = (size_t)snprintf(nums[i], sizeof(nums[i]), "%lld",
                                       e->integer);
            argv[i] = nums[i];
        } else if (e->type == REDIS_REPLY_STRING) {
            argv[i] = e->str;
            lens[i] = e->len;
        } else {
            goto bad;
        }
    }
    /* Not atomic with the script: a daemon dying between the two, or
     * a master that is down, loses this global entry while the
     * learner's keys and stream (the record) keep it. */
    if (store_command_argv(st, NULL, NULL, (int)w->elements, argv, lens) !=
        STORE_OK)
        log_warning("msg=\"global index write not sent\" key=%s",
                    d->names[k]);
    return;

bad:
    log_warning("msg=\"bad deferred write from a script\"");
}

static void on_deferred_reply(struct store *st, redisReply *r, void *arg)
{
    struct deferred_call *d = arg;
    redisReply *reply = r;

    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[1]->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->element[1]->elements; i++)
            send_deferred(st, d, r->element[1]->element[i]);
        reply = r->element[0];
    }
    if (d->cb != NULL)
        d->cb(st, reply, d->arg);
    free(d);
}

/* On a cluster: the script without its global keys, which follow. */
static int run_deferred(struct store *st, int handle, int nglobal,
                        store_reply_cb cb, void *arg, int nkeys, int argc,
                        const char **argv, const size_t *lens)
{
    const char *args[64];
    size_t arglens[64];
    struct deferred_call *d;
    int first = nkeys - nglobal, n = 0;

    if (first < 0 || argc > 64 || (d = calloc(1, sizeof(*d))) == NULL)
        return LEDGER_ERR;
    d->cb = cb;
    d->arg = arg;
    d->first = first + 1;
    d->n = nglobal;
    for (int i = 0; i < argc; i++) {
        size_t len = lens != NULL ? lens[i] : strlen(argv[i]);

        if (i >= first && i < nkeys) {
            if (len >= LEDGER_GLOBAL_KEYLEN) {
                free(d);
                return LEDGER_ERR;
            }
            memcpy(d->names[i - first], argv[i], len);
            continue;
        }
        args[n] = argv[i];
        arglens[n++] = len;
    }
    if (store_script(st, handle, on_deferred_reply, d, first, n, args,
                     arglens) != STORE_OK) {
        free(d);
        return LEDGER_ERR;
    }
    return LEDGER_OK;
}

int ledger_run(struct store *st, enum ledger_script script,
               store_reply_cb cb, void *arg, int nkeys, int argc,
               const char **argv, const size_t *lens)
{
    if (script < 0 || script >= LEDGER_SCRIPTS || handles[script] < 0)
        return LEDGER_ERR;
    if (store_is_cluster(st) && global_keys[script] > 0)
        return run_deferred(st, handles[script], global_keys[script], cb,
                            arg, nkeys, argc, argv, lens);
    if (store_script(st, handles[script], cb, arg, nkeys, argc, argv,
                     lens) != STORE_OK)
        return LEDGER_ERR;
    return LEDGER_OK;
}

int ledger_key(char *buf, size_t buflen, const char *learner,
               const char *suffix)
{
    int n = snprintf(buf, buflen, "pd:{%s}:%s", learner, suffix);

    return n < 0 || (size_t)n >= buflen ? LEDGER_ERR : LEDGER_OK;
}

int ledger_exam_result(struct store *st, const char *learner,
                       const char *sid, int64_t now_ms,
                       long long events_maxlen)
{
    char skey[320], stream[320], suffix[64], now[24], maxlen[24];
    const char *argv[7];

    snprintf(suffix, sizeof(suffix), "session:%s", sid);
    if (ledger_key(skey, sizeof(skey), learner, suffix) != LEDGER_OK ||
        ledger_key(stream, sizeof(stream), learner, "stream") != LEDGER_OK)
        return LEDGER_ERR;
    snprintf(now, sizeof(now), "%lld", (long long)now_ms);
    snprintf(maxlen, sizeof(maxlen), "%lld", events_maxlen);
    argv[0] = skey;
    argv[1] = stream;
    argv[2] = LEDGER_EVENTS_KEY;
    argv[3] = learner;
    argv[4] = sid;
    argv[5] = now;
    argv[6] = maxlen;
    return ledger_run(st, LEDGER_EXAM, NULL, NULL, 3, 7, argv, NULL);
}

void ledger_random_id(char out[33])
{
    unsigned char raw[16];

    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        /* OpenSSL's generator failing is a broken invariant. */
        log_warning("msg=\"RAND_bytes failed\"");
        abort();
    }
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

void ledger_rfc3339(int64_t ms, char *buf, size_t buflen)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    size_t n;

    gmtime_r(&secs, &tm);
    n = strftime(buf, buflen, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, buflen - n, ".%03dZ", (int)(ms % 1000));
}
