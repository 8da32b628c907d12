/* Redis Cluster routing rules, kept free of I/O so the unit tests can
 * pin them: slots, key positions, slot maps and redirections. */
#include "cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

uint16_t cluster_crc16(const char *buf, size_t len)
{
    uint16_t crc = 0;

    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((unsigned char)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021)
                                 : (uint16_t)(crc << 1);
    }
    return crc;
}

int cluster_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);

    if (open != NULL) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);

        if (close != NULL && close > open + 1)
            return cluster_crc16(open + 1, (size_t)(close - open - 1)) &
                   (CLUSTER_SLOTS - 1);
    }
    return cluster_crc16(key, len) & (CLUSTER_SLOTS - 1);
}

static int arg_is(const char *arg, size_t len, const char *name)
{
    return strlen(name) == len && strncasecmp(arg, name, len) == 0;
}

int cluster_command_key(int argc, const char *const *argv,
                        const size_t *lens)
{
    /* The commands the daemon sends that name no key; any node answers
     * them (PUBLISH reaches every node's subscribers). */
    static const char *const keyless[] = {
        "PING", "SCRIPT", "PUBLISH", "INFO", "CLUSTER", "ASKING",
        "SUBSCRIBE", "UNSUBSCRIBE", "TIME", "DBSIZE", "ECHO",
    };

    if (argc < 2)
        return -1;
    for (size_t i = 0; i < sizeof(keyless) / sizeof(keyless[0]); i++)
        if (arg_is(argv[0], lens[0], keyless[i]))
            return -1;
    if (arg_is(argv[0], lens[0], "EVAL") ||
        arg_is(argv[0], lens[0], "EVALSHA")) {
        char n[16];

        if (argc < 4 || lens[2] == 0 || lens[2] >= sizeof(n))
            return -1;
        memcpy(n, argv[2], lens[2]);
        n[lens[2]] = '\0';
        return atoi(n) > 0 ? 3 : -1;
    }
    return 1;
}

/* Reads "<c><digits>\r\n" at *p; returns the number or -1. */
static long resp_header(const char **p, const char *end, char c)
{
    long v = 0;
    const char *q = *p;

    if (q >= end || *q++ != c)
        return -1;
    if (q >= end || *q < '0' || *q > '9')
        return -1;
    while (q < end && *q >= '0' && *q <= '9') {
        v = v * 10 + (*q++ - '0');
        if (v > (long)1 << 40)
            return -1;
    }
    if (end - q < 2 || q[0] != '\r' || q[1] != '\n')
        return -1;
    *p = q + 2;
    return v;
}

int cluster_resp_args(const char *cmd, size_t len, const char **argv,
                      size_t *lens, int max)
{
    const char *p = cmd, *end = cmd + len;
    long n = resp_header(&p, end, '*');

    if (n < 0 || n > max)
        return -1;
    for (long i = 0; i < n; i++) {
        long blen = resp_header(&p, end, '$');

        if (blen < 0 || end - p < blen + 2 || p[blen] != '\r' ||
            p[blen + 1] != '\n')
            return -1;
        argv[i] = p;
        lens[i] = (size_t)blen;
        p += blen + 2;
    }
    return p == end ? (int)n : -1;
}

static int slot_number(const redisReply *r, int *out)
{
    if (r->type != REDIS_REPLY_INTEGER || r->integer < 0 ||
        r->integer >= CLUSTER_SLOTS)
        return -1;
    *out = (int)r->integer;
    return 0;
}

int cluster_parse_slots(const redisReply *r, struct cluster_range *out,
                        int max)
{
    int n = 0;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY)
        return -1;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i], *m;

        /* {from, to, {host, port, id...}, replicas...}: the first node
         * is the master. */
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3)
            return -1;
        m = e->element[2];
        if (m->type != REDIS_REPLY_ARRAY || m->elements < 2 ||
            m->element[0]->type != REDIS_REPLY_STRING ||
            m->element[1]->type != REDIS_REPLY_INTEGER ||
            m->element[0]->len >= CLUSTER_HOSTLEN || n == max)
            return -1;
        if (slot_number(e->element[0], &out[n].from) != 0 ||
            slot_number(e->element[1], &out[n].to) != 0 ||
            out[n].from > out[n].to)
            return -1;
        memcpy(out[n].host, m->element[0]->str, m->element[0]->len);
        out[n].host[m->element[0]->len] = '\0';
        out[n].port = (int)m->element[1]->integer;
        if (out[n].port <= 0 || out[n].port > 65535)
            return -1;
        n++;
    }
    return n;
}

static int prefix(const char *err, size_t len, const char *word)
{
    size_t n = strlen(word);

    return len >= n && memcmp(err, word, n) == 0 &&
           (len == n || err[n] == ' ');
}

enum cluster_redirect cluster_parse_redirect(const char *err, size_t len,
                                             int *slot, char *host,
                                             size_t hostlen, int *port)
{
    enum cluster_redirect kind;
    char buf[160], *p, *colon, *end;
    long v;

    if (prefix(err, len, "TRYAGAIN") || prefix(err, len, "CLUSTERDOWN"))
        return CLUSTER_RETRY;
    if (prefix(err, len, "MOVED"))
        kind = CLUSTER_MOVED;
    else if (prefix(err, len, "ASK"))
        kind = CLUSTER_ASK;
    else
        return CLUSTER_NONE;
    if (len >= sizeof(buf))
        return CLUSTER_NONE;
    memcpy(buf, err, len);
    buf[len] = '\0';

    /* "MOVED <slot> <host>:<port>"; the host may be an IPv6 address,
     * so the port follows the last colon. */
    p = strchr(buf, ' ') + 1;
    v = strtol(p, &end, 10);
    if (end == p || *end != ' ' || v < 0 || v >= CLUSTER_SLOTS)
        return CLUSTER_NONE;
    *slot = (int)v;
    p = end + 1;
    colon = strrchr(p, ':');
    if (colon == NULL || (size_t)(colon - p) >= hostlen)
        return CLUSTER_NONE;
    v = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0' || v <= 0 || v > 65535)
        return CLUSTER_NONE;
    memcpy(host, p, (size_t)(colon - p));
    host[colon - p] = '\0';
    *port = (int)v;
    return kind;
}
