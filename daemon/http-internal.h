/* Shared by the HTTP files: replies, token checks and the API router. */
#ifndef PROCTORD_HTTP_INTERNAL_H
#define PROCTORD_HTTP_INTERNAL_H

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "auth.h"
#include "core.h"
#include "store.h"

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

/* ---- Deferred replies (http_api.c) ---------------------------------- */

/* Longest learner, course, organisation, flag or session id in a path. */
#define HTTP_ID_MAX 128

/* A request answered later, from a Redis or vision callback. Embed it
 * first in a route's state. The client may hang up before the answer:
 * req is NULL then and every reply below is a no-op. */
struct http_call {
    struct core *core;
    struct evhttp_request *req;
    struct auth_claims claims;
    int pending;                /* Redis replies outstanding */
    int failed;                 /* a command was not sent, or lost */
};

/* Ties c to req and watches for the client hanging up. */
void http_call_start(struct http_call *c, struct core *core,
                     struct evhttp_request *req,
                     const struct auth_claims *claims);

/* Sends body (taking its reference) and detaches c from the request;
 * c itself stays the caller's to free. */
void http_call_reply(struct http_call *c, int code, json_t *body);
void http_call_error(struct http_call *c, int code, const char *why);

/* Sends len bytes of type as they are (evidence JPEGs). */
void http_call_reply_bytes(struct http_call *c, const char *type,
                           const void *data, size_t len);

/* Sends a command whose callback gets c's enclosing state as arg, and
 * counts it in c->pending; a command not sent sets c->failed. Returns
 * STORE_OK or STORE_ERR. */
int http_call_command(struct http_call *c, store_reply_cb cb, void *arg,
                      int argc, const char **argv, const size_t *lens);

/* 1 when s (len bytes) is 1..HTTP_ID_MAX of [A-Za-z0-9._@-]. */
int http_id_valid(const char *s, size_t len);

/* The decoded value of query parameter name, or NULL. */
const char *http_query_get(const struct evkeyvalq *q, const char *name);

/* The value of field in an HGETALL reply (a flat array of field, value),
 * or NULL when absent. */
const redisReply *http_hash_get(const redisReply *r, const char *field);

/* A reply string's integer value; fallback for NULL, nil or junk. */
long long http_reply_ll(const redisReply *v, long long fallback);

/* 1 when s is 1..HTTP_ID_MAX bytes of UTF-8 without control characters:
 * the platform's own course and organisation names. */
int http_text_valid(const char *s);

/* The [requirements] of a role name ("manager", ...), or NULL. */
const struct config_role *http_role_need(const struct config *cfg,
                                         const char *role);

/* 1 for a stream entry of XRANGE's shape: [id, [field, value, ...]]. */
int http_event_well_formed(const redisReply *e);

/* One well-formed stream entry as {"id", "type", ...}: the *_ms fields
 * as numbers, at_ms also as "at" (RFC 3339). Caller owns the result. */
json_t *http_event_json(const redisReply *entry);

/* ---- Routes in http_flags.c ------------------------------------------ */

void http_flags_list(struct core *core, struct evhttp_request *req,
                     const struct auth_claims *claims, const char *unused);
void http_flag_get(struct core *core, struct evhttp_request *req,
                   const struct auth_claims *claims, const char *id);
void http_flag_review(struct core *core, struct evhttp_request *req,
                      const struct auth_claims *claims, const char *id);
void http_evidence_get(struct core *core, struct evhttp_request *req,
                       const struct auth_claims *claims, const char *id);

/* ---- Routes in http_reports.c ---------------------------------------- */

void http_reports_hours(struct core *core, struct evhttp_request *req,
                        const struct auth_claims *claims, const char *unused);
void http_learner_events(struct core *core, struct evhttp_request *req,
                         const struct auth_claims *claims, const char *id);
void http_learner_erase(struct core *core, struct evhttp_request *req,
                        const struct auth_claims *claims, const char *id);

/* ---- The console in http_console.c ---------------------------------- */

/* Serves /console and /console/... from cfg.console_dir, GET and HEAD.
 * Returns HTTP_UNHANDLED when path is not the console's (nothing was
 * sent), HTTP_HANDLED when it answered. */
int http_console_route(struct core *core, struct evhttp_request *req,
                       const char *path);

/* Dispatches the /v1 routes. Returns HTTP_UNHANDLED when no route matched
 * (nothing was sent), HTTP_HANDLED when the request was taken. */
int http_api_route(struct core *core, struct evhttp_request *req,
                   const char *path);

#endif
