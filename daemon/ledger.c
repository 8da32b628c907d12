/* The ledger's Lua scripts. Each runs atomically inside Redis, touches
 * one learner's keys only, and is idempotent by a check id recorded in
 * the session hash, so a retried or replayed call adds nothing. */
#include "ledger.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* KEYS: resume key of the asked session, course hash, days hash, enrol
 *       hash.
 * ARGV: new sid, asked sid ("" for none), resume_window ms, learner,
 *       course, today (YYYY-MM-DD), org, now ms, role.
 * Returns {sid, course total ms, today's ms, model, embedding, resumed}. */
static const char HELLO_LUA[] =
    "local sid = ARGV[1]\n"
    "local resumed = 0\n"
    "if ARGV[2] ~= '' and redis.call('GET', KEYS[1]) == ARGV[5] then\n"
    "  sid = ARGV[2]\n"
    "  resumed = 1\n"
    "end\n"
    "local tag = 'pd:{' .. ARGV[4] .. '}:'\n"
    "redis.call('SET', tag .. 'resume:' .. sid, ARGV[5], 'PX', ARGV[3])\n"
    "local sk = tag .. 'session:' .. sid\n"
    "if redis.call('HSETNX', sk, 'started_ms', ARGV[8]) == 1 then\n"
    "  redis.call('HSET', sk, 'course', ARGV[5], 'org', ARGV[7])\n"
    "end\n"
    "redis.call('HSET', sk, 'last_ms', ARGV[8])\n"
    "redis.call('HSET', tag .. 'profile', 'org', ARGV[7], 'role', ARGV[9])\n"
    "local total = redis.call('HGET', KEYS[2], 'total_ms') or '0'\n"
    "local today = redis.call('HGET', KEYS[3], ARGV[6]) or '0'\n"
    "local e = redis.call('HMGET', KEYS[4], 'model', 'emb')\n"
    "return {sid, tonumber(total), tonumber(today), e[1] or '', e[2] or '',"
    " resumed}\n";

/* KEYS: session hash, course hash, days hash, stream.
 * ARGV: check id, day, ms, daily cap ms (negative: none), course, sid,
 *       now ms.
 * Returns {credited ms, course total ms, day total ms, 1 if a repeat}. */
static const char COMMIT_LUA[] =
    "local function n(v) return tonumber(v or '0') end\n"
    "if redis.call('HSETNX', KEYS[1], 'c:' .. ARGV[1], ARGV[3]) == 0 then\n"
    "  return {0, n(redis.call('HGET', KEYS[2], 'total_ms')),\n"
    "          n(redis.call('HGET', KEYS[3], ARGV[2])), 1}\n"
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
    "end\n"
    "redis.call('HSET', KEYS[1], 'last_ms', ARGV[7])\n"
    "redis.call('XADD', KEYS[4], '*', 'type', 'credit', 'session', ARGV[6],\n"
    "  'course', ARGV[5], 'check', ARGV[1], 'day', ARGV[2],\n"
    "  'requested_ms', ARGV[3], 'credited_ms', add, 'at_ms', ARGV[7])\n"
    "return {add, n(redis.call('HGET', KEYS[2], 'total_ms')),\n"
    "        already + add, 0}\n";

/* KEYS: session hash, flag hash, learner's flag zset, stream.
 * ARGV: check id, flag id, kind, learner, org, course, sid, opened ms,
 *       evidence ids (comma separated), withheld ms, day.
 * Returns {flag id, 1 if it existed already}. */
static const char FLAG_LUA[] =
    "local prior = redis.call('HGET', KEYS[1], 'f:' .. ARGV[1])\n"
    "if prior then return {prior, 1} end\n"
    "redis.call('HSET', KEYS[1], 'f:' .. ARGV[1], ARGV[2])\n"
    "redis.call('HSET', KEYS[2], 'id', ARGV[2], 'kind', ARGV[3],\n"
    "  'learner_id', ARGV[4], 'org', ARGV[5], 'course', ARGV[6],\n"
    "  'session_id', ARGV[7], 'opened_ms', ARGV[8], 'evidence', ARGV[9],\n"
    "  'withheld_ms', ARGV[10], 'day', ARGV[11], 'status', 'open')\n"
    "redis.call('ZADD', KEYS[3], ARGV[8], ARGV[2])\n"
    "redis.call('XADD', KEYS[4], '*', 'type', 'flag', 'flag', ARGV[2],\n"
    "  'kind', ARGV[3], 'session', ARGV[7], 'course', ARGV[6],\n"
    "  'evidence', ARGV[9], 'withheld_ms', ARGV[10], 'at_ms', ARGV[8])\n"
    "return {ARGV[2], 0}\n";

/* KEYS: flag hash, stream.
 * ARGV: decision (confirmed | dismissed), reviewer, note, now ms, daily
 *       cap ms (negative: none).
 * Returns {status, credited ms, 1 if it was reviewed already}, or an
 * error reply "NOFLAG" or "CONFLICT <status>". Dismissal credits the
 * withheld time to the flag's day and course, within the day's cap. */
static const char REVIEW_LUA[] =
    "local f = redis.call('HMGET', KEYS[1], 'status', 'learner_id',\n"
    "  'course', 'day', 'withheld_ms', 'credited_ms')\n"
    "if not f[1] then return redis.error_reply('NOFLAG') end\n"
    "if f[1] ~= 'open' then\n"
    "  if f[1] == ARGV[1] then return {f[1], tonumber(f[6] or '0'), 1} end\n"
    "  return redis.error_reply('CONFLICT ' .. f[1])\n"
    "end\n"
    "local add = 0\n"
    "if ARGV[1] == 'dismissed' then\n"
    "  local tag = 'pd:{' .. f[2] .. '}:'\n"
    "  local days = tag .. 'days'\n"
    "  local course = tag .. 'course:' .. f[3]\n"
    "  local already = tonumber(redis.call('HGET', days, f[4]) or '0')\n"
    "  add = tonumber(f[5] or '0')\n"
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
    "redis.call('HSET', KEYS[1], 'status', ARGV[1], 'reviewed_by', ARGV[2],\n"
    "  'reviewed_ms', ARGV[4], 'note', ARGV[3], 'credited_ms', add)\n"
    "redis.call('XADD', KEYS[2], '*', 'type', 'review', 'flag',\n"
    "  redis.call('HGET', KEYS[1], 'id'), 'decision', ARGV[1],\n"
    "  'reviewer', ARGV[2], 'note', ARGV[3], 'credited_ms', add,\n"
    "  'at_ms', ARGV[4])\n"
    "return {ARGV[1], add, 0}\n";

/* KEYS: enrol hash, stream.
 * ARGV: model, embedding, photo sha256 (hex), now ms, org, box (JSON).
 * Returns 1 when an earlier enrolment was replaced. */
static const char ENROL_LUA[] =
    "local replaced = redis.call('EXISTS', KEYS[1])\n"
    "redis.call('DEL', KEYS[1])\n"
    "redis.call('HSET', KEYS[1], 'model', ARGV[1], 'emb', ARGV[2],\n"
    "  'photo_sha256', ARGV[3], 'enrolled_at_ms', ARGV[4], 'org', ARGV[5],\n"
    "  'box', ARGV[6])\n"
    "redis.call('XADD', KEYS[2], '*', 'type', 'enrolment', 'model',\n"
    "  ARGV[1], 'photo_sha256', ARGV[3], 'replaced', replaced,\n"
    "  'at_ms', ARGV[4])\n"
    "return replaced\n";

static int handles[LEDGER_SCRIPTS] = {-1, -1, -1, -1, -1};

int ledger_init(struct store *st)
{
    static const char *const sources[LEDGER_SCRIPTS] = {
        HELLO_LUA, COMMIT_LUA, FLAG_LUA, REVIEW_LUA, ENROL_LUA,
    };

    for (int i = 0; i < LEDGER_SCRIPTS; i++) {
        handles[i] = store_script_add(st, sources[i]);
        if (handles[i] < 0)
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
