/* Unit tests for daemon/auth.c. Tokens are minted here with libjwt, and
 * the forgeries (alg none, HS384, tampered parts) are built by hand, so
 * every refusal is tried against the real decoder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jwt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"

#define SECRET "test-secret-0123456789abcdef"
#define NOW 1700000000L
#define LEEWAY 30

/* Claims of a token to mint; NULL strings and has_* 0 are left out. */
struct spec {
    const char *sub;
    const char *course;
    const char *org;
    const char *role;
    const char *scope;
    const char *sid;
    const char *mode;
    long exp;
    long iat;
    long nbf;
    int has_exp;
    int has_iat;
    int has_nbf;
    const char *json;           /* extra grants, as a JSON object */
};

static struct auth_keys keys;

static struct spec learner_spec(void)
{
    struct spec s = {
        .sub = "learner-1", .course = "course-7", .org = "org-3",
        .role = "safety_officer", .exp = NOW + 3600, .iat = NOW - 60,
        .has_exp = 1, .has_iat = 1,
    };

    return s;
}

static struct spec http_spec(const char *scope)
{
    struct spec s = {
        .sub = "platform-a", .scope = scope, .exp = NOW + 600, .iat = NOW,
        .has_exp = 1, .has_iat = 1,
    };

    return s;
}

static void add(jwt_t *jwt, const char *name, const char *value)
{
    if (value != NULL)
        assert_int_equal(jwt_add_grant(jwt, name, value), 0);
}

/* Mints a token signed with secret under alg; caller frees. */
static char *mint(const struct spec *s, jwt_alg_t alg, const char *secret)
{
    jwt_t *jwt = NULL;
    char *token;

    assert_int_equal(jwt_new(&jwt), 0);
    add(jwt, "sub", s->sub);
    add(jwt, "course", s->course);
    add(jwt, "org", s->org);
    add(jwt, "role", s->role);
    add(jwt, "scope", s->scope);
    add(jwt, "sid", s->sid);
    add(jwt, "mode", s->mode);
    if (s->has_exp)
        assert_int_equal(jwt_add_grant_int(jwt, "exp", s->exp), 0);
    if (s->has_iat)
        assert_int_equal(jwt_add_grant_int(jwt, "iat", s->iat), 0);
    if (s->has_nbf)
        assert_int_equal(jwt_add_grant_int(jwt, "nbf", s->nbf), 0);
    if (s->json != NULL)
        assert_int_equal(jwt_add_grants_json(jwt, s->json), 0);
    assert_int_equal(jwt_set_alg(jwt, alg, (const unsigned char *)secret,
                                 (int)strlen(secret)), 0);
    token = jwt_encode_str(jwt);
    assert_non_null(token);
    jwt_free(jwt);
    return token;
}

static char *mint_learner(const struct spec *s)
{
    return mint(s, JWT_ALG_HS256, SECRET);
}

static void b64url(const char *in, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"
                              "qrstuvwxyz0123456789-_";
    size_t len = strlen(in), n = 0;
    unsigned long acc = 0;
    int bits = 0;

    for (size_t i = 0; i < len; i++) {
        acc = (acc << 8) | (unsigned char)in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[n++] = abc[(acc >> bits) & 63];
        }
    }
    if (bits > 0)
        out[n++] = abc[(acc << (6 - bits)) & 63];
    out[n] = '\0';
}

/* header.payload.signature from raw JSON and a given signature. */
static void forge(const char *header, const char *payload, const char *sig,
                  char *out, size_t len)
{
    char h[512], p[1024];

    b64url(header, h);
    b64url(payload, p);
    snprintf(out, len, "%s.%s.%s", h, p, sig);
}

static void expect_learner_refused(const char *token, const char *why_want)
{
    struct auth_claims c;
    const char *why = NULL;

    memset(&c, 0x5a, sizeof(c));
    assert_int_equal(auth_verify_learner(&keys, token, NOW, &c, &why),
                     AUTH_ERR);
    assert_non_null(why);
    assert_string_equal(why, why_want);
    /* Nothing half-verified is left for the caller to trust. */
    assert_string_equal(c.sub, "");
    assert_int_equal(c.role, AUTH_ROLE_NONE);
}

static void expect_http_refused(const char *token, const char *why_want)
{
    struct auth_claims c;
    const char *why = NULL;

    assert_int_equal(auth_verify_http(&keys, token, NOW, &c, &why),
                     AUTH_ERR);
    assert_non_null(why);
    assert_string_equal(why, why_want);
    assert_int_equal(c.scope, AUTH_SCOPE_NONE);
}

static void refuse_spec(const struct spec *s, const char *why_want)
{
    char *token = mint_learner(s);

    expect_learner_refused(token, why_want);
    free(token);
}

static int setup(void **state)
{
    (void)state;
    auth_keys_init(&keys, SECRET, LEEWAY);
    return 0;
}

/* ------------------------------------------------------------------------
 * Accepted tokens
 * --------------------------------------------------------------------- */

static void test_valid_learner(void **state)
{
    struct spec s = learner_spec();
    struct auth_claims c;
    const char *why = "unset";
    char *token;

    (void)state;
    s.sid = "sess-42";
    s.mode = "exam";
    token = mint_learner(&s);
    assert_int_equal(auth_verify_learner(&keys, token, NOW, &c, &why),
                     AUTH_OK);
    assert_string_equal(c.sub, "learner-1");
    assert_string_equal(c.course, "course-7");
    assert_string_equal(c.org, "org-3");
    assert_string_equal(c.sid, "sess-42");
    assert_string_equal(c.mode, "exam");
    assert_int_equal(c.role, AUTH_ROLE_SAFETY_OFFICER);
    assert_int_equal(c.scope, AUTH_SCOPE_NONE);
    assert_int_equal(c.exp, NOW + 3600);
    assert_int_equal(c.iat, NOW - 60);
    free(token);

    /* Every role; sid, mode and iat are optional. */
    s = learner_spec();
    s.has_iat = 0;
    for (int r = AUTH_ROLE_MANAGER; r <= AUTH_ROLE_TEAM_LEADER; r++) {
        s.role = auth_role_name((enum auth_role)r);
        token = mint_learner(&s);
        assert_int_equal(auth_verify_learner(&keys, token, NOW, &c, NULL),
                         AUTH_OK);
        assert_int_equal(c.role, r);
        assert_string_equal(c.sid, "");
        assert_string_equal(c.mode, "");
        assert_int_equal(c.iat, 0);
        free(token);
    }
}

static void test_valid_http(void **state)
{
    struct spec s = http_spec("platform");
    struct auth_claims c;
    const char *why = NULL;
    char *token;

    (void)state;
    token = mint_learner(&s);
    assert_int_equal(auth_verify_http(&keys, token, NOW, &c, &why), AUTH_OK);
    assert_int_equal(c.scope, AUTH_SCOPE_PLATFORM);
    assert_string_equal(c.sub, "platform-a");
    free(token);

    s = http_spec("supervisor");
    s.sub = NULL;
    s.org = "org-3";
    token = mint_learner(&s);
    assert_int_equal(auth_verify_http(&keys, token, NOW, &c, &why), AUTH_OK);
    assert_int_equal(c.scope, AUTH_SCOPE_SUPERVISOR);
    assert_string_equal(c.sub, "");
    assert_string_equal(c.org, "org-3");
    free(token);
}

static void test_leeway(void **state)
{
    struct spec s = learner_spec();
    struct auth_claims c;
    char *token;

    (void)state;
    /* Expired ten seconds ago: within the leeway, accepted. */
    s.exp = NOW - 10;
    token = mint_learner(&s);
    assert_int_equal(auth_verify_learner(&keys, token, NOW, &c, NULL),
                     AUTH_OK);
    free(token);

    /* Issued a little in the future (clock skew): accepted. */
    s = learner_spec();
    s.iat = NOW + 20;
    s.has_nbf = 1;
    s.nbf = NOW + 20;
    token = mint_learner(&s);
    assert_int_equal(auth_verify_learner(&keys, token, NOW, &c, NULL),
                     AUTH_OK);
    free(token);
}

/* ------------------------------------------------------------------------
 * Signatures and algorithms
 * --------------------------------------------------------------------- */

static void test_bad_signature(void **state)
{
    struct spec s = learner_spec();
    char *token = mint_learner(&s);
    char *sig = strrchr(token, '.') + 1;

    (void)state;
    /* A middle character: the last one may carry only padding bits. */
    sig[5] = sig[5] == 'A' ? 'B' : 'A';
    expect_learner_refused(token, "bad signature");
    free(token);

    /* Payload swapped under a valid signature. */
    {
        char *good = mint_learner(&s);
        char forged[2048];
        char h[512], p[1024];
        const char *dot1 = strchr(good, '.');

        memcpy(h, good, (size_t)(dot1 - good));
        h[dot1 - good] = '\0';
        b64url("{\"sub\":\"someone-else\",\"course\":\"c\",\"org\":\"o\","
               "\"role\":\"manager\",\"exp\":1800000000}", p);
        snprintf(forged, sizeof(forged), "%s.%s%s", h, p,
                 strrchr(good, '.'));
        expect_learner_refused(forged, "bad signature");
        free(good);
    }
}

static void test_wrong_secret(void **state)
{
    struct spec s = learner_spec();
    char *token = mint(&s, JWT_ALG_HS256, "another-secret-0123456789");

    (void)state;
    expect_learner_refused(token, "bad signature");
    free(token);
}

static void test_alg_none(void **state)
{
    char token[2048];
    const char *payload = "{\"sub\":\"u\",\"course\":\"c\",\"org\":\"o\","
                          "\"role\":\"manager\",\"exp\":1800000000}";

    (void)state;
    forge("{\"alg\":\"none\",\"typ\":\"JWT\"}", payload, "", token,
          sizeof(token));
    expect_learner_refused(token, "alg not HS256");
    expect_http_refused(token, "alg not HS256");

    /* "None" and a header with no alg at all. */
    forge("{\"alg\":\"None\",\"typ\":\"JWT\"}", payload, "", token,
          sizeof(token));
    expect_learner_refused(token, "alg not HS256");
    forge("{\"typ\":\"JWT\"}", payload, "c2ln", token, sizeof(token));
    expect_learner_refused(token, "alg not HS256");

    /* Two alg keys, one of each: refused, not read either way. */
    forge("{\"alg\":\"HS256\",\"alg\":\"none\"}", payload, "", token,
          sizeof(token));
    expect_learner_refused(token, "malformed token");
}

static void test_alg_other(void **state)
{
    struct spec s = learner_spec();
    char *token;

    (void)state;
    /* Signed with the right secret, but not with HS256. */
    token = mint(&s, JWT_ALG_HS384, SECRET);
    expect_learner_refused(token, "alg not HS256");
    free(token);
    token = mint(&s, JWT_ALG_HS512, SECRET);
    expect_learner_refused(token, "alg not HS256");
    free(token);

    {
        char forged[2048];

        forge("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", "{\"exp\":1800000000}",
              "c2ln", forged, sizeof(forged));
        expect_learner_refused(forged, "alg not HS256");
    }
}

static void test_no_secret(void **state)
{
    struct auth_keys empty;
    struct spec s = learner_spec();
    struct auth_claims c;
    const char *why = NULL;
    char *token = mint_learner(&s);

    (void)state;
    auth_keys_init(&empty, "", 0);
    assert_int_equal(auth_verify_learner(&empty, token, NOW, &c, &why),
                     AUTH_ERR);
    assert_string_equal(why, "no secret configured");
    free(token);
}

/* ------------------------------------------------------------------------
 * Times
 * --------------------------------------------------------------------- */

static void test_times(void **state)
{
    struct spec s;

    (void)state;
    s = learner_spec();
    s.has_exp = 0;
    refuse_spec(&s, "no exp");

    s = learner_spec();
    s.exp = NOW - LEEWAY - 1;
    refuse_spec(&s, "expired");
    s.exp = NOW - LEEWAY;
    refuse_spec(&s, "expired");

    s = learner_spec();
    s.iat = NOW + LEEWAY + 1;
    refuse_spec(&s, "issued in the future");

    s = learner_spec();
    s.has_nbf = 1;
    s.nbf = NOW + LEEWAY + 1;
    refuse_spec(&s, "not yet valid");

    s = learner_spec();
    s.has_exp = 0;
    s.json = "{\"exp\":\"1800000000\"}";
    refuse_spec(&s, "bad exp");
    s.json = "{\"exp\":true}";
    refuse_spec(&s, "bad exp");
    s.json = "{\"exp\":1e300}";
    refuse_spec(&s, "bad exp");
    s.json = "{\"exp\":1699999000.5}";
    refuse_spec(&s, "expired");

    s = learner_spec();
    s.has_iat = 0;
    s.json = "{\"iat\":\"yesterday\"}";
    refuse_spec(&s, "bad iat");
    s = learner_spec();
    s.json = "{\"nbf\":null}";
    refuse_spec(&s, "bad nbf");
}

/* Some issuers write NumericDate as a real; it is read as whole seconds. */
static void test_real_times(void **state)
{
    struct spec s = learner_spec();
    struct auth_claims c;
    char *token;

    (void)state;
    s.has_exp = 0;
    s.has_iat = 0;
    s.json = "{\"exp\":1700003600.75,\"iat\":1699999999.5}";
    token = mint_learner(&s);
    assert_int_equal(auth_verify_learner(&keys, token, NOW, &c, NULL),
                     AUTH_OK);
    assert_int_equal(c.exp, 1700003600);
    assert_int_equal(c.iat, 1699999999);
    free(token);
}

/* ------------------------------------------------------------------------
 * Malformed tokens
 * --------------------------------------------------------------------- */

static void test_malformed(void **state)
{
    struct spec s = learner_spec();
    char *good = mint_learner(&s);
    char buf[2048];
    struct auth_claims c;
    const char *why = NULL;

    (void)state;
    expect_learner_refused("garbage", "malformed token");
    expect_learner_refused("", "no token");
    assert_int_equal(auth_verify_learner(&keys, NULL, NOW, &c, &why),
                     AUTH_ERR);
    assert_string_equal(why, "no token");

    /* Two segments: the signature dropped. */
    snprintf(buf, sizeof(buf), "%s", good);
    *strrchr(buf, '.') = '\0';
    expect_learner_refused(buf, "malformed token");

    /* Four segments. */
    snprintf(buf, sizeof(buf), "%s.abc", good);
    expect_learner_refused(buf, "malformed token");

    /* Bad base64 in header, payload and signature. */
    expect_learner_refused("@@@@.@@@@.@@@@", "malformed token");
    snprintf(buf, sizeof(buf), "%s", good);
    buf[3] = '*';
    expect_learner_refused(buf, "malformed token");
    snprintf(buf, sizeof(buf), "%s", good);
    strchr(buf, '.')[2] = '=';
    expect_learner_refused(buf, "malformed token");
    snprintf(buf, sizeof(buf), "%s", good);
    strrchr(buf, '.')[3] = '!';
    expect_learner_refused(buf, "malformed token");

    /* Segments that decode but are not JSON objects. */
    forge("hello", "{\"exp\":1800000000}", "c2ln", buf, sizeof(buf));
    expect_learner_refused(buf, "malformed token");
    forge("{\"alg\":\"HS256\"}", "[1,2]", "c2ln", buf, sizeof(buf));
    expect_learner_refused(buf, "malformed token");
    forge("{\"alg\":\"HS256\"}", "{\"exp\":1800000000}", "", buf,
          sizeof(buf));
    expect_learner_refused(buf, "no signature");
    expect_learner_refused("..", "malformed token");
    free(good);
}

static void test_too_long(void **state)
{
    struct spec s = learner_spec();
    char big[9000];
    char *token;

    (void)state;
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    s.course = big;
    token = mint_learner(&s);
    assert_true(strlen(token) > 8192);
    expect_learner_refused(token, "token too long");
    free(token);
}

/* ------------------------------------------------------------------------
 * Claims
 * --------------------------------------------------------------------- */

static void test_missing_claims(void **state)
{
    struct spec s;

    (void)state;
    s = learner_spec();
    s.sub = NULL;
    refuse_spec(&s, "no sub");
    s = learner_spec();
    s.sub = "";
    refuse_spec(&s, "no sub");
    s = learner_spec();
    s.course = NULL;
    refuse_spec(&s, "no course");
    s = learner_spec();
    s.org = NULL;
    refuse_spec(&s, "no org");
    s = learner_spec();
    s.role = NULL;
    refuse_spec(&s, "no role");
    s = learner_spec();
    s.role = "ceo";
    refuse_spec(&s, "unknown role");
    s.role = "Manager";
    refuse_spec(&s, "unknown role");

    s = learner_spec();
    s.sub = NULL;
    s.json = "{\"sub\":12345}";
    refuse_spec(&s, "sub not a string");
    s = learner_spec();
    s.role = NULL;
    s.json = "{\"role\":1}";
    refuse_spec(&s, "no role");
    s = learner_spec();
    s.json = "{\"sid\":[\"a\"]}";
    refuse_spec(&s, "sid not a string");
}

static void test_long_claims(void **state)
{
    struct spec s;
    char id[AUTH_IDLEN + 1];
    struct auth_claims c;
    char *token;

    (void)state;
    memset(id, 'a', sizeof(id) - 1);
    id[sizeof(id) - 1] = '\0';
    s = learner_spec();
    s.sub = id;
    refuse_spec(&s, "sub too long");
    s = learner_spec();
    s.org = id;
    refuse_spec(&s, "org too long");
    s = learner_spec();
    s.sid = id;
    refuse_spec(&s, "sid too long");
    s = learner_spec();
    s.mode = "examination-mode";
    refuse_spec(&s, "mode too long");

    /* One byte shorter fits exactly. */
    id[AUTH_IDLEN - 1] = '\0';
    s = learner_spec();
    s.sub = id;
    token = mint_learner(&s);
    assert_int_equal(auth_verify_learner(&keys, token, NOW, &c, NULL),
                     AUTH_OK);
    assert_string_equal(c.sub, id);
    free(token);
}

static void test_http_scope(void **state)
{
    struct spec s = learner_spec();
    char *token = mint_learner(&s);

    (void)state;
    /* A learner token has no scope and never opens the HTTP API. */
    expect_http_refused(token, "no scope");
    free(token);

    s = http_spec("admin");
    token = mint_learner(&s);
    expect_http_refused(token, "unknown scope");
    free(token);

    s = http_spec("platform");
    s.exp = NOW - LEEWAY - 5;
    token = mint_learner(&s);
    expect_http_refused(token, "expired");
    free(token);

    s = http_spec("supervisor");
    token = mint(&s, JWT_ALG_HS384, SECRET);
    expect_http_refused(token, "alg not HS256");
    free(token);
}

static void test_role_names(void **state)
{
    (void)state;
    assert_string_equal(auth_role_name(AUTH_ROLE_MANAGER), "manager");
    assert_string_equal(auth_role_name(AUTH_ROLE_SAFETY_OFFICER),
                        "safety_officer");
    assert_string_equal(auth_role_name(AUTH_ROLE_TEAM_LEADER), "team_leader");
    assert_string_equal(auth_role_name(AUTH_ROLE_NONE), "none");
    assert_string_equal(auth_role_name((enum auth_role)99), "none");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_learner),
        cmocka_unit_test(test_valid_http),
        cmocka_unit_test(test_leeway),
        cmocka_unit_test(test_bad_signature),
        cmocka_unit_test(test_wrong_secret),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_alg_other),
        cmocka_unit_test(test_no_secret),
        cmocka_unit_test(test_times),
        cmocka_unit_test(test_real_times),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_too_long),
        cmocka_unit_test(test_missing_claims),
        cmocka_unit_test(test_long_claims),
        cmocka_unit_test(test_http_scope),
        cmocka_unit_test(test_role_names),
    };

    return cmocka_run_group_tests(tests, setup, NULL);
}
