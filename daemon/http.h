/* The HTTP API on server.http_listen (evhttp on the core's base):
 * health, metrics and the platform and supervisor routes, with JSON
 * bodies (jansson) and token scopes checked before any work. */
#ifndef PROCTORD_HTTP_H
#define PROCTORD_HTTP_H

#include <stddef.h>

#include "core.h"

struct http;

/* Binds http_listen. Returns NULL with a message naming the key. */
struct http *http_new(struct core *core, char *err, size_t errlen);

void http_free(struct http *h);

#endif
