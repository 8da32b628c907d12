/* The supervisor console: the static files under server.console_dir
 * (index.html, console.js, console.css, ...) served at /console/. GET and
 * HEAD only. A path that could leave the folder is refused before the
 * file system sees it, and what the file system resolves is checked to
 * lie inside the folder again. Files are read as they are on each request,
 * so an upgrade of the console needs no restart. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http-internal.h"
#include "log.h"

#define CONSOLE_PREFIX "/console"
#define CONSOLE_PREFIX_LEN 8
#define CONSOLE_INDEX "index.html"
/* The console is a few small files; anything larger is not one of them. */
#define CONSOLE_FILE_MAX (4 * 1024 * 1024)

/* The console talks to this daemon only: its own scripts and styles, the
 * API on the same origin, and evidence JPEGs as blob: URLs made from
 * fetch() (an <img src> cannot send the bearer token). */
#define CONSOLE_CSP                                                        \
    "default-src 'self'; img-src 'self' blob:; connect-src 'self'; "      \
    "object-src 'none'; base-uri 'none'; form-action 'self'; "            \
    "frame-ancestors 'none'"

#define CONSOLE_OK 0
#define CONSOLE_ERR -1
/* console_resolve(): the path exists but lies outside the folder. */
#define CONSOLE_OUTSIDE -2

struct console_type {
    const char *ext;
    const char *type;
};

/* Only these are served: a stray README or editor backup in the folder
 * is not the console's and stays unreachable. */
static const struct console_type console_types[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".json", "application/json"},
};

#define CONSOLE_NTYPES (sizeof(console_types) / sizeof(console_types[0]))

/* ---------------------------------------------------------------------
 * Paths
 * ------------------------------------------------------------------ */

static const char *console_type(const char *name)
{
    const char *dot = strrchr(name, '.');

    if (dot == NULL || strchr(dot, '/') != NULL)
        return NULL;
    for (size_t i = 0; i < CONSOLE_NTYPES; i++)
        if (strcmp(dot, console_types[i].ext) == 0)
            return console_types[i].type;
    return NULL;
}

/* The decoded path below /console/, len bytes as evhttp_uridecode() gave
 * them. Letters, digits, '.', '_', '-' and '/' only: that refuses a NUL, a
 * backslash, a '%' left by double encoding and anything else unusual.
 * No empty segment (a doubled '/', or a leading one) and no segment that
 * starts with '.', which covers ".", ".." and hidden files. */
static int console_rel_valid(const char *rel, size_t len)
{
    const char *seg = rel;

    if (strlen(rel) != len)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = rel[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' ||
              ch == '-' || ch == '/'))
            return 0;
    }
    for (const char *p = rel;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        /* The last segment may be empty: "dir/" names its index. */
        if (p == seg && *p == '/')
            return 0;
        if (*seg == '.')
            return 0;
        if (*p == '\0')
            return 1;
        seg = p + 1;
    }
}

/* Resolves rel (already valid) inside dir into out, PATH_MAX bytes.
 * Returns CONSOLE_OK; CONSOLE_ERR when there is no such file (or no
 * folder: errno says why); CONSOLE_OUTSIDE when it resolves outside dir,
 * through a symbolic link. */
static int console_resolve(const char *dir, const char *rel, char *out)
{
    char base[PATH_MAX], joined[PATH_MAX + 64];
    size_t blen, rlen = strlen(rel);
    int n;

    if (realpath(dir, base) == NULL)
        return CONSOLE_ERR;
    n = snprintf(joined, sizeof(joined), "%s/%s%s", base, rel,
                 rlen == 0 || rel[rlen - 1] == '/' ? CONSOLE_INDEX : "");
    if (n < 0 || (size_t)n >= sizeof(joined) || realpath(joined, out) == NULL)
        return CONSOLE_ERR;
    blen = strlen(base);
    if (strncmp(out, base, blen) != 0 || out[blen] != '/')
        return CONSOLE_OUTSIDE;
    return CONSOLE_OK;
}

/* ---------------------------------------------------------------------
 * Files
 * ------------------------------------------------------------------ */

/* Reads the whole of path into buf. This blocks the core thread, which
 * is acceptable for a few KiB of local static files read when a
 * supervisor opens the console; they are not worth a cache that would
 * have to notice an upgrade. Returns CONSOLE_OK, or CONSOLE_ERR with
 * errno (EFBIG for a file over CONSOLE_FILE_MAX, ENOENT for anything but
 * a regular file). */
static int console_read(const char *path, struct evbuffer *buf)
{
    char chunk[16384];
    struct stat st;
    size_t total = 0;
    ssize_t n;
    int fd, saved;

    /* O_NONBLOCK: a FIFO planted in the folder must not hang the open. */
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return CONSOLE_ERR;
    if (fstat(fd, &st) != 0)
        goto fail;
    if (!S_ISREG(st.st_mode)) {
        errno = ENOENT;
        goto fail;
    }
    if (st.st_size > CONSOLE_FILE_MAX) {
        errno = EFBIG;
        goto fail;
    }
    while ((n = read(fd, chunk, sizeof(chunk))) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto fail;
        /* The file may have grown since fstat(). */
        total += (size_t)n;
        if (total > CONSOLE_FILE_MAX) {
            errno = EFBIG;
            goto fail;
        }
        evbuffer_add(buf, chunk, (size_t)n);
    }
    close(fd);
    return CONSOLE_OK;

fail:
    saved = errno;
    close(fd);
    errno = saved;
    return CONSOLE_ERR;
}

static void console_headers(struct evhttp_request *req, const char *type,
                            int is_index)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);

    evhttp_add_header(h, "Content-Type", type);
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    evhttp_add_header(h, "Content-Security-Policy", CONSOLE_CSP);
    evhttp_add_header(h, "Referrer-Policy", "no-referrer");
    evhttp_add_header(h, "X-Frame-Options", "DENY");
    /* The page is never kept; scripts and styles are checked each time,
     * since their names do not change between versions. */
    evhttp_add_header(h, "Cache-Control", is_index ? "no-store" : "no-cache");
}

/* ---------------------------------------------------------------------
 * Replies
 * ------------------------------------------------------------------ */

/* Sends body with its length. evhttp writes whatever body it is given,
 * even to a HEAD, and then leaves the length out: a HEAD gets the length
 * and no body, so a kept-alive connection stays in step. */
static void console_send(struct evhttp_request *req, int code,
                         const char *reason, struct evbuffer *body)
{
    char length[24];

    snprintf(length, sizeof(length), "%zu", evbuffer_get_length(body));
    evhttp_add_header(evhttp_request_get_output_headers(req),
                      "Content-Length", length);
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD)
        evhttp_send_reply(req, code, reason, NULL);
    else
        evhttp_send_reply(req, code, reason, body);
}

/* {key: value} as JSON. Both are constants of this file, in need of no
 * escaping. */
static void console_json(struct evhttp_request *req, int code,
                         const char *key, const char *value)
{
    struct evbuffer *body = evbuffer_new();

    if (body == NULL) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    evbuffer_add_printf(body, "{\"%s\":\"%s\"}", key, value);
    evhttp_add_header(evhttp_request_get_output_headers(req),
                      "Content-Type", "application/json");
    console_send(req, code, NULL, body);
    evbuffer_free(body);
}

/* {"error": why}, as everywhere in the API. */
static void console_error(struct evhttp_request *req, int code,
                          const char *why)
{
    console_json(req, code, "error", why);
}

static void console_refuse(struct evhttp_request *req, int code,
                           const char *why, const char *raw)
{
    char q[160];

    log_verbose("msg=\"console request refused\" status=%d why=\"%s\" "
                "path=\"%s\"", code, why, log_quote(raw, q, sizeof(q)));
    console_error(req, code, why);
}

/* ---------------------------------------------------------------------
 * The route
 * ------------------------------------------------------------------ */

/* Serves the decoded, valid rel from the console folder. */
static void console_serve(struct core *core, struct evhttp_request *req,
                          const char *rel, const char *raw)
{
    static int warned;
    char path[PATH_MAX];
    struct evbuffer *body;
    const char *type;
    int rc;

    rc = console_resolve(core->cfg.console_dir, rel, path);
    if (rc == CONSOLE_OUTSIDE) {
        console_refuse(req, 403, "outside the console folder", raw);
        return;
    }
    if (rc != CONSOLE_OK) {
        if (!warned && access(core->cfg.console_dir, F_OK) != 0) {
            log_warning("msg=\"console folder missing\" "
                        "server.console_dir=\"%s\" error=\"%s\"",
                        core->cfg.console_dir, strerror(errno));
            warned = 1;
        }
        console_error(req, 404, "no such file");
        return;
    }
    type = console_type(path);
    if (type == NULL) {
        console_error(req, 404, "no such file");
        return;
    }

    body = evbuffer_new();
    if (body == NULL) {
        console_error(req, 500, "out of memory");
        return;
    }
    if (console_read(path, body) != CONSOLE_OK) {
        if (errno == EFBIG)
            console_refuse(req, 403, "file too large", raw);
        else
            console_error(req, 404, "no such file");
        evbuffer_free(body);
        return;
    }
    console_headers(req, type,
                    strcmp(strrchr(path, '/') + 1, CONSOLE_INDEX) == 0);
    console_send(req, 200, "OK", body);
    evbuffer_free(body);
}

int http_console_route(struct core *core, struct evhttp_request *req,
                       const char *path)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    char *rel;
    size_t len = 0;

    /* "/consoles" is not the console's; it falls through to a 404. */
    if (strncmp(path, CONSOLE_PREFIX, CONSOLE_PREFIX_LEN) != 0 ||
        (path[CONSOLE_PREFIX_LEN] != '\0' && path[CONSOLE_PREFIX_LEN] != '/'))
        return HTTP_UNHANDLED;
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
                          "GET, HEAD");
        console_error(req, 405, "method not allowed");
        return HTTP_HANDLED;
    }
    if (path[CONSOLE_PREFIX_LEN] == '\0') {
        evhttp_add_header(evhttp_request_get_output_headers(req),
                          "Location", CONSOLE_PREFIX "/");
        console_json(req, 301, "location", CONSOLE_PREFIX "/");
        return HTTP_HANDLED;
    }

    rel = evhttp_uridecode(path + CONSOLE_PREFIX_LEN + 1, 0, &len);
    if (rel == NULL) {
        console_error(req, 500, "out of memory");
        return HTTP_HANDLED;
    }
    if (!console_rel_valid(rel, len))
        console_refuse(req, 400, "bad path", path);
    else
        console_serve(core, req, rel, path);
    free(rel);
    return HTTP_HANDLED;
}
