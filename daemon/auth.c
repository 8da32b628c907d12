/* Token verification for learners (WebSocket Hello) and the HTTP API.
 * The header is decoded and its alg checked before libjwt sees the token,
 * and checked again after, so neither "none" nor another HMAC size can be
 * slipped past signature checking; libjwt verifies the signature. Nothing
 * here logs: a token is a credential, and the reasons never quote it. */
#include "auth.h"

#include <jansson.h>
#include <jwt.h>
#include <stdlib.h>
#include <string.h>

/* Anything larger is not one of ours, and decoding it costs memory. */
#define AUTH_TOKEN_MAX 8192

/* One string claim: where it goes and what to say when it is wrong. */
struct claim_def {
    const char *name;
    size_t offset;
    size_t cap;
    int learner_required;
    const char *why_missing;
    const char *why_bad;
    const char *why_long;
};

#define C(field) offsetof(struct auth_claims, field), \
    sizeof(((struct auth_claims *)0)->field)

static const struct claim_def claim_defs[] = {
    {"sub", C(sub), 1, "no sub", "sub not a string", "sub too long"},
    {"course", C(course), 1, "no course", "course not a string",
     "course too long"},
    {"org", C(org), 1, "no org", "org not a string", "org too long"},
    {"sid", C(sid), 0, NULL, "sid not a string", "sid too long"},
    {"mode", C(mode), 0, NULL, "mode not a string", "mode too long"},
};

#define CLAIM_COUNT (sizeof(claim_defs) / sizeof(claim_defs[0]))

static const char *const role_names[] = {"none", "manager", "safety_officer",
                                         "team_leader"};

void auth_keys_init(struct auth_keys *keys, const char *secret,
                    int64_t leeway_s)
{
    size_t n = strlen(secret);

    memset(keys, 0, sizeof(*keys));
    if (n > sizeof(keys->secret))
        n = sizeof(keys->secret);
    memcpy(keys->secret, secret, n);
    keys->secret_len = n;
    keys->leeway_s = leeway_s > 0 ? leeway_s : 0;
}

const char *auth_role_name(enum auth_role role)
{
    if ((size_t)role >= sizeof(role_names) / sizeof(role_names[0]))
        return "none";
    return role_names[role];
}

/* ------------------------------------------------------------------------
 * Shape and header
 * --------------------------------------------------------------------- */

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Unpadded base64url, as JWT writes it. Returns the decoded length or -1
 * on a character outside the alphabet or an impossible length. */
static long b64url_decode(const char *s, size_t len, unsigned char *out)
{
    unsigned long acc = 0;
    size_t n = 0;
    int bits = 0;

    if (len % 4 == 1)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value((unsigned char)s[i]);

        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned long)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
            acc &= (1UL << bits) - 1;
        }
    }
    return (long)n;
}

/* Decodes one segment and parses it as a JSON object; caller frees. */
static json_t *segment_json(const char *s, size_t len)
{
    unsigned char buf[AUTH_TOKEN_MAX / 4 * 3 + 3];
    json_t *js;
    long n;

    if (len == 0 || (n = b64url_decode(s, len, buf)) <= 0)
        return NULL;
    /* A repeated key could read one way here and another in libjwt. */
    js = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES,
                    NULL);
    if (js != NULL && !json_is_object(js)) {
        json_decref(js);
        return NULL;
    }
    return js;
}

/* Three dot-separated segments whose first two are JSON objects, and a
 * header naming HS256. Run before libjwt so its handling of other
 * algorithms is never reached. Returns the payload (caller frees) or
 * NULL. */
static json_t *check_shape(const char *token, const char **why)
{
    const char *dot1 = strchr(token, '.');
    const char *dot2 = dot1 != NULL ? strchr(dot1 + 1, '.') : NULL;
    json_t *head, *body;
    const char *alg;

    *why = "malformed token";
    if (dot2 == NULL || strchr(dot2 + 1, '.') != NULL)
        return NULL;
    head = segment_json(token, (size_t)(dot1 - token));
    body = segment_json(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    if (head == NULL || body == NULL)
        goto fail;

    alg = json_string_value(json_object_get(head, "alg"));
    if (alg == NULL || strcmp(alg, "HS256") != 0) {
        *why = "alg not HS256";
        goto fail;
    }
    if (dot2[1] == '\0') {
        *why = "no signature";
        goto fail;
    }
    for (const char *p = dot2 + 1; *p != '\0'; p++) {
        if (b64url_value((unsigned char)*p) < 0)
            goto fail;
    }
    json_decref(head);
    return body;

fail:
    json_decref(head);
    json_decref(body);
    return NULL;
}

/* ------------------------------------------------------------------------
 * Claims
 *
 * Read from the payload decoded above, once libjwt has verified the
 * signature over those very bytes. libjwt 1.10's own getters cannot tell
 * a claim of the wrong type from a zero (errno stays 0), so "exp":"soon"
 * would read as 0 and "iat":"x" would pass as absent.
 * --------------------------------------------------------------------- */

/* A NumericDate: integer, or real as some issuers write it, truncated.
 * *present is 0 when the claim is absent. */
static int time_claim(json_t *body, const char *name, int64_t *out,
                      int *present)
{
    json_t *v = json_object_get(body, name);
    double d;

    *present = v != NULL;
    if (v == NULL)
        return AUTH_OK;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return AUTH_OK;
    }
    if (!json_is_real(v))
        return AUTH_ERR;
    d = json_real_value(v);
    if (!(d > -9e18 && d < 9e18))
        return AUTH_ERR;
    *out = (int64_t)d;
    return AUTH_OK;
}

static int check_times(json_t *body, int64_t now, int64_t leeway,
                       struct auth_claims *out, const char **why)
{
    int64_t nbf = 0;
    int present;

    if (time_claim(body, "exp", &out->exp, &present) != AUTH_OK) {
        *why = "bad exp";
        return AUTH_ERR;
    }
    if (!present) {
        *why = "no exp";
        return AUTH_ERR;
    }
    /* Written as a subtraction so a huge exp cannot overflow. */
    if (out->exp <= now - leeway) {
        *why = "expired";
        return AUTH_ERR;
    }

    if (time_claim(body, "iat", &out->iat, &present) != AUTH_OK) {
        *why = "bad iat";
        return AUTH_ERR;
    }
    if (present && out->iat > now + leeway) {
        *why = "issued in the future";
        return AUTH_ERR;
    }

    if (time_claim(body, "nbf", &nbf, &present) != AUTH_OK) {
        *why = "bad nbf";
        return AUTH_ERR;
    }
    if (present && nbf > now + leeway) {
        *why = "not yet valid";
        return AUTH_ERR;
    }
    return AUTH_OK;
}

static int copy_claims(json_t *body, int learner, struct auth_claims *out,
                       const char **why)
{
    for (size_t i = 0; i < CLAIM_COUNT; i++) {
        const struct claim_def *def = &claim_defs[i];
        json_t *v = json_object_get(body, def->name);
        char *dst = (char *)out + def->offset;
        size_t n;

        if (v != NULL && !json_is_string(v)) {
            *why = def->why_bad;
            return AUTH_ERR;
        }
        n = v != NULL ? json_string_length(v) : 0;
        if (n == 0) {
            if (learner && def->learner_required) {
                *why = def->why_missing;
                return AUTH_ERR;
            }
            continue;
        }
        if (n >= def->cap) {
            *why = def->why_long;
            return AUTH_ERR;
        }
        memcpy(dst, json_string_value(v), n + 1);
    }
    return AUTH_OK;
}

static int check_role(json_t *body, struct auth_claims *out,
                      const char **why)
{
    const char *role = json_string_value(json_object_get(body, "role"));

    if (role == NULL || *role == '\0') {
        *why = "no role";
        return AUTH_ERR;
    }
    for (size_t i = AUTH_ROLE_MANAGER; i <= AUTH_ROLE_TEAM_LEADER; i++) {
        if (strcmp(role, role_names[i]) == 0) {
            out->role = (enum auth_role)i;
            return AUTH_OK;
        }
    }
    *why = "unknown role";
    return AUTH_ERR;
}

static int check_scope(json_t *body, struct auth_claims *out,
                       const char **why)
{
    const char *scope = json_string_value(json_object_get(body, "scope"));

    if (scope == NULL || *scope == '\0') {
        *why = "no scope";
        return AUTH_ERR;
    }
    if (strcmp(scope, "platform") == 0)
        out->scope = AUTH_SCOPE_PLATFORM;
    else if (strcmp(scope, "supervisor") == 0)
        out->scope = AUTH_SCOPE_SUPERVISOR;
    else {
        *why = "unknown scope";
        return AUTH_ERR;
    }
    return AUTH_OK;
}

/* ------------------------------------------------------------------------
 * Verification
 * --------------------------------------------------------------------- */

/* libjwt checks the signature; its alg is checked again in case its
 * reading of the header ever differs from ours. */
static int check_signature(const struct auth_keys *keys, const char *token,
                           const char **why)
{
    jwt_t *jwt = NULL;
    int rc = AUTH_ERR;

    if (jwt_decode(&jwt, token, keys->secret, (int)keys->secret_len) != 0) {
        *why = "bad signature";
        return AUTH_ERR;
    }
    if (jwt_get_alg(jwt) != JWT_ALG_HS256)
        *why = "alg not HS256";
    else
        rc = AUTH_OK;
    jwt_free(jwt);
    return rc;
}

static int verify(const struct auth_keys *keys, const char *token,
                  int64_t now, int learner, struct auth_claims *out,
                  const char **why)
{
    json_t *body = NULL;
    int rc = AUTH_ERR;

    memset(out, 0, sizeof(*out));
    /* With no key libjwt would check an HMAC made with an empty one. */
    if (keys->secret_len == 0) {
        *why = "no secret configured";
        return AUTH_ERR;
    }
    if (token == NULL || *token == '\0') {
        *why = "no token";
        return AUTH_ERR;
    }
    if (strnlen(token, AUTH_TOKEN_MAX + 1) > AUTH_TOKEN_MAX) {
        *why = "token too long";
        return AUTH_ERR;
    }
    body = check_shape(token, why);
    if (body == NULL || check_signature(keys, token, why) != AUTH_OK)
        goto done;

    if (check_times(body, now, keys->leeway_s, out, why) != AUTH_OK ||
        copy_claims(body, learner, out, why) != AUTH_OK)
        goto done;
    if (learner)
        rc = check_role(body, out, why);
    else
        rc = check_scope(body, out, why);

done:
    json_decref(body);
    if (rc != AUTH_OK)
        memset(out, 0, sizeof(*out));
    return rc;
}

int auth_verify_learner(const struct auth_keys *keys, const char *token,
                        int64_t now, struct auth_claims *out,
                        const char **why)
{
    const char *dummy;

    return verify(keys, token, now, 1, out, why != NULL ? why : &dummy);
}

int auth_verify_http(const struct auth_keys *keys, const char *token,
                     int64_t now, struct auth_claims *out, const char **why)
{
    const char *dummy;

    return verify(keys, token, now, 0, out, why != NULL ? why : &dummy);
}
