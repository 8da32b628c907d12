/* Redis Cluster routing, without I/O: the key's hash slot (CRC16 of its
 * {hash tag}), which argument of a command is its key, the slot map from
 * a CLUSTER SLOTS reply, and MOVED / ASK redirections. hiredis 0.14 has
 * no cluster client; store.c does the sending with these. */
#ifndef PROCTORD_CLUSTER_H
#define PROCTORD_CLUSTER_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

#define CLUSTER_SLOTS 16384
#define CLUSTER_HOSTLEN 64

/* CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with. */
uint16_t cluster_crc16(const char *buf, size_t len);

/* The slot of a key: of the part between the first '{' and the next '}'
 * when that part is not empty, else of the whole key. */
int cluster_key_slot(const char *key, size_t len);

/* Which argument of a command is the key that routes it, or -1 for a
 * command without one (PING, SCRIPT, PUBLISH...). EVAL and EVALSHA route
 * by their first key; every key of one call must share its slot. */
int cluster_command_key(int argc, const char *const *argv,
                        const size_t *lens);

/* Splits a formatted command (a RESP array of bulk strings, as
 * redisFormatCommand writes it) into argument pointers into cmd.
 * Returns the argument count, or -1 when it is malformed or has more
 * than max arguments. */
int cluster_resp_args(const char *cmd, size_t len, const char **argv,
                      size_t *lens, int max);

/* One range of slots and the master that serves it. */
struct cluster_range {
    int from, to;
    char host[CLUSTER_HOSTLEN];
    int port;
};

/* Reads a CLUSTER SLOTS reply into at most max ranges. Returns how many,
 * or -1 when the reply is not a slot map. */
int cluster_parse_slots(const redisReply *r, struct cluster_range *out,
                        int max);

enum cluster_redirect {
    CLUSTER_NONE,
    CLUSTER_MOVED,       /* the slot lives elsewhere now */
    CLUSTER_ASK,         /* this one command goes elsewhere, after ASKING */
    CLUSTER_RETRY,       /* TRYAGAIN, CLUSTERDOWN: the same, a bit later */
};

/* Classifies an error reply; for MOVED and ASK fills slot, host and
 * port (CLUSTER_NONE when they do not parse). */
enum cluster_redirect cluster_parse_redirect(const char *err, size_t len,
                                             int *slot, char *host,
                                             size_t hostlen, int *port);

#endif
