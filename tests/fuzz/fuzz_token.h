/* Tokens for the fuzz targets: base64url without padding, and an HS256
 * token signed with the targets' secret, as a platform signs one. */
#ifndef PROCTORD_FUZZ_TOKEN_H
#define PROCTORD_FUZZ_TOKEN_H

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <string.h>

#define FUZZ_SECRET "fuzz-secret-0123456789abcdef"

/* Writes 4/3 of len (rounded up) characters, no terminator. */
static inline size_t b64url(const uint8_t *in, size_t len, char *out)
{
    static const char abc[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;

    for (size_t i = 0; i < len; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[n++] = abc[(acc >> bits) & 63];
        }
    }
    if (bits > 0)
        out[n++] = abc[(acc << (6 - bits)) & 63];
    return n;
}

/* header "." payload "." HMAC-SHA256 of both, terminated; out must hold
 * (strlen(payload) + 30) * 4 / 3 + 64 bytes. */
static inline void fuzz_sign(char *out, const char *payload)
{
    static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    size_t n;

    n = b64url((const uint8_t *)hdr, strlen(hdr), out);
    out[n++] = '.';
    n += b64url((const uint8_t *)payload, strlen(payload), out + n);
    HMAC(EVP_sha256(), FUZZ_SECRET, (int)strlen(FUZZ_SECRET),
         (const unsigned char *)out, n, mac, &maclen);
    out[n++] = '.';
    n += b64url(mac, maclen, out + n);
    out[n] = '\0';
}

#endif
