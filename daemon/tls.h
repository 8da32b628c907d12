/* TLS for both listeners. The core holds one server context made from
 * server.tls_cert and server.tls_key, checked at start-up so a wrong pair
 * stops the daemon before any port opens; the HTTP API wraps its sockets
 * with it. libwebsockets loads the same two files into its own contexts. */
#ifndef PROCTORD_TLS_H
#define PROCTORD_TLS_H

#include <stddef.h>

#define TLS_OK 0
#define TLS_ERR -1

/* OpenSSL's SSL_CTX, kept opaque so that only tls.c and http.c need
 * OpenSSL's headers. */
struct ssl_ctx_st;

/* Loads the PEM certificate chain at cert and the private key at key and
 * checks that they belong together. Returns a context the caller frees
 * with tls_ctx_free(), or NULL with a message in err that names the
 * failing key (server.tls_cert or server.tls_key) and OpenSSL's reason. */
struct ssl_ctx_st *tls_server_ctx_new(const char *cert, const char *key,
                                      char *err, size_t errlen);

/* NULL is ignored. */
void tls_ctx_free(struct ssl_ctx_st *ctx);

#endif
