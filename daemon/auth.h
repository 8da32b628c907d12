/* Token verification: JWT HS256 through libjwt. The header's alg must be
 * HS256, exp is required, and a small leeway absorbs clock skew between
 * the platform and this daemon. */
#ifndef PROCTORD_AUTH_H
#define PROCTORD_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define AUTH_OK 0
#define AUTH_ERR -1

#define AUTH_IDLEN 128

enum auth_scope {
    AUTH_SCOPE_NONE = 0,   /* a learner token: no HTTP scope */
    AUTH_SCOPE_PLATFORM,
    AUTH_SCOPE_SUPERVISOR,
};

enum auth_role {
    AUTH_ROLE_NONE = 0,
    AUTH_ROLE_MANAGER,
    AUTH_ROLE_SAFETY_OFFICER,
    AUTH_ROLE_TEAM_LEADER,
};

/* What a verified token says. Strings are NUL-terminated copies. */
struct auth_claims {
    char sub[AUTH_IDLEN];
    char course[AUTH_IDLEN];
    char org[AUTH_IDLEN];
    char sid[AUTH_IDLEN];       /* optional; "" when absent */
    char mode[16];              /* optional ("exam"); "" when absent */
    enum auth_role role;
    enum auth_scope scope;
    int64_t exp;                /* seconds since the epoch */
    int64_t iat;
};

struct auth_keys {
    unsigned char secret[256];
    size_t secret_len;
    int64_t leeway_s;
};

void auth_keys_init(struct auth_keys *keys, const char *secret,
                    int64_t leeway_s);

/* Verifies a learner token at time now (seconds): signature, alg, exp,
 * and sub, course, org and a known role present. Returns AUTH_OK with
 * out filled, or AUTH_ERR with a short reason in *why (a static string,
 * never the token). */
int auth_verify_learner(const struct auth_keys *keys, const char *token,
                        int64_t now, struct auth_claims *out,
                        const char **why);

/* Verifies an HTTP token: as above but requires scope platform or
 * supervisor; a learner token (no scope) fails with why "no scope". */
int auth_verify_http(const struct auth_keys *keys, const char *token,
                     int64_t now, struct auth_claims *out, const char **why);

const char *auth_role_name(enum auth_role role);

#endif
