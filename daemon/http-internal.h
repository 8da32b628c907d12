/* Shared by the HTTP files: replies, token checks and the API router. */
#ifndef PROCTORD_HTTP_INTERNAL_H
#define PROCTORD_HTTP_INTERNAL_H

#include <event2/http.h>
#include <jansson.h>

#include "auth.h"
#include "core.h"

#define HTTP_ALLOWED 0
#define HTTP_DENIED -1
#define HTTP_HANDLED 0
#define HTTP_UNHANDLED -1

/* Sends body (and takes its reference) with the status code. */
void http_reply_json(struct evhttp_request *req, int code, json_t *body);

/* Sends {"error": why}. */
void http_reply_error(struct evhttp_request *req, int code, const char *why);

/* Verifies the bearer token; its scope must be want or also. Returns
 * HTTP_ALLOWED, or HTTP_DENIED after replying 401 or 403. */
int http_require(struct core *core, struct evhttp_request *req,
                 enum auth_scope want, enum auth_scope also,
                 struct auth_claims *claims);

/* Dispatches the /v1 routes. Returns HTTP_UNHANDLED when no route matched
 * (nothing was sent), HTTP_HANDLED when the request was taken. */
int http_api_route(struct core *core, struct evhttp_request *req,
                   const char *path);

#endif
