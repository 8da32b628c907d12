/* libFuzzer target: token verification (auth.c) under a fixed secret.
 *
 * The first byte picks how the rest is used:
 *   even: the rest is a token as sent, verified as a learner's and as an
 *         HTTP token;
 *   odd:  the rest is a header and a payload separated by the first NUL
 *         (or the default HS256 header when there is none), which the
 *         harness base64url-encodes and signs with the secret. These are
 *         correctly signed tokens with hostile claims, so the claim
 *         parsing after the signature check is reached, which random
 *         bytes never would.
 * Bit 1 of the first byte leaves the signature off (a two-part token),
 * bit 2 flips one bit of it. */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "fuzz_token.h"

#define FUZZ_NOW 1760000000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void verify(const struct auth_keys *keys, const char *token)
{
    struct auth_claims claims;
    const char *why = NULL;

    auth_verify_learner(keys, token, FUZZ_NOW, &claims, &why);
    if (auth_verify_http(keys, token, FUZZ_NOW, &claims, &why) == AUTH_OK)
        auth_role_name(claims.role);
}

/* header "." payload "." HMAC-SHA256, each part base64url. */
static char *signed_token(const uint8_t *hdr, size_t hlen,
                          const uint8_t *pay, size_t plen, int mode)
{
    size_t cap = (hlen + plen) * 4 / 3 + 128, n;
    char *tok = malloc(cap);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;

    if (tok == NULL)
        return NULL;
    n = b64url(hdr, hlen, tok);
    tok[n++] = '.';
    n += b64url(pay, plen, tok + n);
    if (!(mode & 2)) {
        HMAC(EVP_sha256(), FUZZ_SECRET, (int)strlen(FUZZ_SECRET),
             (const unsigned char *)tok, n, mac, &maclen);
        if (mode & 4)
            mac[0] ^= 1;
        tok[n++] = '.';
        n += b64url(mac, maclen, tok + n);
    }
    tok[n] = '\0';
    return tok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char hs256[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    static struct auth_keys keys;
    static int ready;
    const uint8_t *rest = data + 1, *nul;
    size_t rlen;
    char *token;

    if (!ready) {
        auth_keys_init(&keys, FUZZ_SECRET, 30);
        ready = 1;
    }
    if (size < 1)
        return 0;
    rlen = size - 1;
    if (!(data[0] & 1)) {
        token = malloc(rlen + 1);
        if (token == NULL)
            return 0;
        memcpy(token, rest, rlen);
        token[rlen] = '\0';
    } else if ((nul = memchr(rest, 0, rlen)) != NULL) {
        token = signed_token(rest, (size_t)(nul - rest), nul + 1,
                             rlen - (size_t)(nul - rest) - 1, data[0]);
    } else {
        token = signed_token((const uint8_t *)hs256, strlen(hs256), rest,
                             rlen, data[0]);
    }
    if (token != NULL)
        verify(&keys, token);
    free(token);
    return 0;
}
