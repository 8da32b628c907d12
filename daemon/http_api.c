/* The /v1 routes of the platform and supervisor API. */
#include <string.h>

#include "http-internal.h"

int http_api_route(struct core *core, struct evhttp_request *req,
                   const char *path)
{
    (void)core;
    (void)req;
    if (strncmp(path, "/v1/", 4) != 0)
        return HTTP_UNHANDLED;
    return HTTP_UNHANDLED;
}
