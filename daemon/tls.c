/* The server TLS context: certificate chain, private key, the pair
 * checked against each other, TLS 1.2 as the oldest version offered.
 * OpenSSL's own reason goes into every error, after the key it concerns. */
#include "tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>

/* The oldest queued OpenSSL error as text; the queue is emptied so that a
 * later failure does not report this one. */
static unsigned long ssl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_get_error();

    if (e == 0)
        snprintf(buf, len, "unknown error");
    else
        ERR_error_string_n(e, buf, len);
    ERR_clear_error();
    return e;
}

struct ssl_ctx_st *tls_server_ctx_new(const char *cert, const char *key,
                                      char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    char why[160];

    if (ctx == NULL) {
        ssl_reason(why, sizeof(why));
        snprintf(err, errlen, "server.tls_cert: no TLS context: %s", why);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        ssl_reason(why, sizeof(why));
        snprintf(err, errlen, "server.tls_cert: cannot load \"%s\": %s", cert,
                 why);
        goto fail;
    }
    /* The key is checked against the certificate as it loads; a key that
     * parses but belongs elsewhere is named as such. */
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        unsigned long e = ssl_reason(why, sizeof(why));

        if (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)
            goto mismatch;
        snprintf(err, errlen, "server.tls_key: cannot load \"%s\": %s", key,
                 why);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ssl_reason(why, sizeof(why));
        goto mismatch;
    }
    return ctx;

mismatch:
    snprintf(err, errlen, "server.tls_key: \"%s\" does not match "
             "server.tls_cert \"%s\" (%s)", key, cert, why);
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

void tls_ctx_free(struct ssl_ctx_st *ctx)
{
    SSL_CTX_free(ctx);
}
