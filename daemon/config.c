/* Configuration: reads the INI file through libinih into struct config.
 * Every key is described once in a table (section, name, type, field,
 * bounds), so parsing, range checks and error wording stay uniform: each
 * message names section.key and quotes the value it refused. */
#include "config.h"
#include "log.h"
#include "vision/vision.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define ZONEINFO_DIR "/usr/share/zoneinfo"
#define SECRET_MIN 16
#define QUOTE_MAX 64

enum key_type {
    KEY_ADDR,           /* host:port */
    KEY_REDIS_ADDR,     /* "embedded" or host:port */
    KEY_PATH,           /* non-empty string */
    KEY_SECRET,         /* never echoed in messages */
    KEY_INT,
    KEY_INT64,
    KEY_DURATION,       /* int64_t milliseconds */
    KEY_SIZE,           /* size_t bytes */
    KEY_DOUBLE,
    KEY_SHARE,          /* double, "0.4" or "40%" */
    KEY_BOOL,
    KEY_LEVEL,
    KEY_EVENT_LIB,      /* enum config_event_lib */
    KEY_ROLE,           /* struct config_role, "MIN-MAX" hours */
    KEY_TIMEZONE,
};

/* The lower bound is exclusive when lo_open is set; hi may be INFINITY.
 * Bounds are doubles for every numeric type: all of them are far below
 * 2^53, where the comparison with an int64_t stays exact. */
struct key_def {
    const char *section;
    const char *name;
    enum key_type type;
    size_t offset;
    size_t len;
    double lo;
    double hi;
    int lo_open;
};

#define F(field)                                                          \
    offsetof(struct config, field), sizeof(((struct config *)0)->field)
#define P(field) F(policy.field)
#define MS_H 3600000.0
#define GIB 1073741824.0

static const struct key_def key_defs[] = {
    /* No timeout may be 0: there is no "off", and 0 would close every
     * connection at once. Below 1KiB no snapshot or request fits; above
     * 1GiB one client could hold a large part of the daemon's memory. */
    {"server", "ws_listen", KEY_ADDR, F(ws_listen), 0, 0, 0},
    {"server", "http_listen", KEY_ADDR, F(http_listen), 0, 0, 0},
    {"server", "threads", KEY_INT, F(threads), 0, 1024, 0},
    {"server", "event_lib", KEY_EVENT_LIB, F(event_lib), 0, 0, 0},
    {"server", "hello_timeout", KEY_DURATION, F(hello_timeout_ms), 1,
     INFINITY, 0},
    {"server", "max_frame", KEY_SIZE, F(max_frame), 1024, GIB, 0},
    {"server", "msg_rate", KEY_DOUBLE, F(msg_rate), 0, 1e6, 1},
    {"server", "msg_burst", KEY_INT, F(msg_burst), 1, 1e6, 0},
    {"server", "max_connections", KEY_INT, F(max_connections), 1, 1e7, 0},
    {"server", "http_timeout", KEY_DURATION, F(http_timeout_ms), 1,
     INFINITY, 0},
    {"server", "http_max_body", KEY_SIZE, F(http_max_body), 1024, GIB, 0},
    {"server", "shutdown_timeout", KEY_DURATION, F(shutdown_timeout_ms), 1,
     INFINITY, 0},
    {"server", "console_dir", KEY_PATH, F(console_dir), 0, 0, 0},
    {"server", "tls_cert", KEY_PATH, F(tls_cert), 0, 0, 0},
    {"server", "tls_key", KEY_PATH, F(tls_key), 0, 0, 0},

    /* commit_buffer 0: crediting pauses as soon as Redis is gone. */
    {"redis", "address", KEY_REDIS_ADDR, F(redis_address), 0, 0, 0},
    {"redis", "data_dir", KEY_PATH, F(redis_data_dir), 0, 0, 0},
    {"redis", "server", KEY_PATH, F(redis_server), 0, 0, 0},
    {"redis", "cluster", KEY_BOOL, F(redis_cluster), 0, 0, 0},
    {"redis", "commit_buffer", KEY_INT, F(commit_buffer), 0, 1e7, 0},
    {"redis", "events_maxlen", KEY_INT64, F(events_maxlen), 1, 1e12, 0},

    /* More than an hour of skew is a broken clock, and a leeway that long
     * would keep every expired token alive for as long. */
    {"auth", "jwt_secret", KEY_SECRET, F(jwt_secret), 0, 0, 0},
    {"auth", "leeway", KEY_DURATION, F(jwt_leeway_ms), 0, MS_H, 0},

    {"log", "level", KEY_LEVEL, F(log_level), 0, 0, 0},

    /* max_pixels is a count (width x height), not a size in bytes. */
    {"vision", "models_dir", KEY_PATH, F(models_dir), 0, 0, 0},
    {"vision", "workers", KEY_INT, F(vision_workers), 0, 1024, 0},
    {"vision", "second_face_ratio", KEY_DOUBLE, F(second_face_ratio), 0, 1,
     1},
    {"vision", "max_pixels", KEY_INT64, F(max_pixels), 1, 1e9, 0},
    {"vision", "queue", KEY_INT, F(vision_queue), 1, 1e6, 0},
    {"vision", "nice", KEY_INT, F(vision_nice), 0, 19, 0},
    /* The quality gate: face width in pixels, grey levels 0-255, the
     * Laplacian's variance, BRISQUE's 0 (best) to 100. */
    {"vision", "min_face_px", KEY_DOUBLE, F(min_face_px), 0, 16384, 0},
    {"vision", "min_brightness", KEY_DOUBLE, F(min_brightness), 0, 255, 0},
    {"vision", "min_contrast", KEY_DOUBLE, F(min_contrast), 0, 128, 0},
    {"vision", "min_sharpness", KEY_DOUBLE, F(min_sharpness), 0, 1e6, 0},
    {"vision", "max_brisque", KEY_DOUBLE, F(max_brisque), 0, 100, 0},

    /* Credit hours as the regulator counts them, not durations. */
    {"requirements", "manager", KEY_ROLE, F(manager), 0, 1e4, 0},
    {"requirements", "safety_officer", KEY_ROLE, F(safety_officer), 0, 1e4,
     0},
    {"requirements", "team_leader", KEY_ROLE, F(team_leader), 0, 1e4, 0},
    {"requirements", "online_share", KEY_SHARE, F(online_share), 0, 1, 1},

    /* match_threshold spans the cosine similarity range; a negative value
     * keeps the model's own. resume_window 0 never resumes a session. */
    {"policy", "heartbeat_interval", KEY_DURATION, P(heartbeat_interval_ms),
     1, INFINITY, 0},
    {"policy", "heartbeat_grace", KEY_DURATION, P(heartbeat_grace_ms), 1,
     INFINITY, 0},
    {"policy", "idle_after", KEY_DURATION, P(idle_after_ms), 1, INFINITY, 0},
    {"policy", "check_interval", KEY_DURATION, P(check_interval_ms), 1,
     INFINITY, 0},
    {"policy", "exam_check_interval", KEY_DURATION,
     P(exam_check_interval_ms), 1, INFINITY, 0},
    {"policy", "challenge_deadline", KEY_DURATION, P(challenge_deadline_ms),
     1, INFINITY, 0},
    {"policy", "match_threshold", KEY_DOUBLE, P(match_threshold), -1, 1, 0},
    {"policy", "minutes_per_credit_hour", KEY_INT,
     P(minutes_per_credit_hour), 1, 600, 0},
    {"policy", "daily_cap", KEY_DURATION, P(daily_cap_ms), 1, 24 * MS_H, 0},
    {"policy", "absent_after", KEY_DURATION, P(absent_after_ms), 1,
     INFINITY, 0},
    {"policy", "evidence_ttl", KEY_DURATION, P(evidence_ttl_ms), 1,
     INFINITY, 0},
    {"policy", "liveness_share", KEY_SHARE, P(liveness_share), 0, 1, 0},
    {"policy", "resume_window", KEY_DURATION, P(resume_window_ms), 0,
     INFINITY, 0},
    {"policy", "timezone", KEY_TIMEZONE, P(timezone), 0, 0, 0},
    {"policy", "idle_window", KEY_DURATION, P(idle_window_ms), 1, INFINITY,
     0},
    {"policy", "idle_share", KEY_SHARE, P(idle_share), 0, 1, 1},
};

#define KEY_COUNT (sizeof(key_defs) / sizeof(key_defs[0]))

/* One parse: where lines come from, and the first error met. */
struct config_parse {
    struct config *cfg;
    FILE *fp;
    const char *path;           /* for messages; NULL for a string */
    const char *text;
    int line;
    int grace_given;
    int failed;
    int err_line;
    char err[CONFIG_ERRLEN];
};

struct unit {
    const char *name;
    uint64_t scale;
};

static const struct unit duration_units[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
    {NULL, 0},
};

/* An empty unit means plain bytes; decimal KB/MB are refused on purpose,
 * so "2MB" cannot silently mean something other than what was meant. */
static const struct unit size_units[] = {
    {"", 1}, {"B", 1}, {"KiB", 1024}, {"MiB", 1048576},
    {"GiB", 1073741824}, {NULL, 0},
};

/* ------------------------------------------------------------------------
 * Numbers with units
 * --------------------------------------------------------------------- */

/* Digits, an optional fraction of up to nine significant digits, then one
 * unit from the table. The result must be a whole number of the base unit
 * and at most max. */
static int parse_scaled(const char *s, const struct unit *units,
                        uint64_t max, uint64_t *out)
{
    uint64_t whole = 0, frac = 0, pow10 = 1, v;
    const char *p = s;
    int digits = 0;

    if (!isdigit((unsigned char)*p))
        return CONFIG_ERR;
    for (; isdigit((unsigned char)*p); p++) {
        if (whole > (UINT64_MAX - 9) / 10)
            return CONFIG_ERR;
        whole = whole * 10 + (uint64_t)(*p - '0');
    }
    if (*p == '.') {
        if (!isdigit((unsigned char)*++p))
            return CONFIG_ERR;
        for (; isdigit((unsigned char)*p); p++) {
            /* Past nine digits only zeros can still give whole units. */
            if (digits == 9) {
                if (*p != '0')
                    return CONFIG_ERR;
                continue;
            }
            frac = frac * 10 + (uint64_t)(*p - '0');
            pow10 *= 10;
            digits++;
        }
    }

    for (; units->name != NULL; units++) {
        if (strcmp(p, units->name) == 0)
            break;
    }
    if (units->name == NULL || whole > max / units->scale)
        return CONFIG_ERR;
    v = whole * units->scale;
    if ((frac * units->scale) % pow10 != 0)
        return CONFIG_ERR;
    if (v > max - frac * units->scale / pow10)
        return CONFIG_ERR;
    *out = v + frac * units->scale / pow10;
    return CONFIG_OK;
}

int config_parse_duration(const char *s, int64_t *out_ms)
{
    uint64_t v;

    if (parse_scaled(s, duration_units, INT64_MAX, &v) != CONFIG_OK)
        return CONFIG_ERR;
    *out_ms = (int64_t)v;
    return CONFIG_OK;
}

int config_parse_size(const char *s, size_t *out)
{
    uint64_t v;
    uint64_t max = SIZE_MAX < INT64_MAX ? SIZE_MAX : INT64_MAX;

    if (parse_scaled(s, size_units, max, &v) != CONFIG_OK)
        return CONFIG_ERR;
    *out = (size_t)v;
    return CONFIG_OK;
}

/* The largest unit that divides ms exactly, so 30000 prints as "30s". */
static void format_duration(int64_t ms, char *buf, size_t len)
{
    const struct unit *u;
    const struct unit *best = &duration_units[0];

    for (u = duration_units; u->name != NULL; u++) {
        if (ms != 0 && ms % (int64_t)u->scale == 0)
            best = u;
    }
    snprintf(buf, len, "%lld%s", (long long)(ms / (int64_t)best->scale),
             best->name);
}

static void format_size(double bytes, char *buf, size_t len)
{
    const struct unit *u;
    const struct unit *best = &size_units[0];
    uint64_t b = (uint64_t)bytes;

    for (u = size_units; u->name != NULL; u++) {
        if (b != 0 && b % u->scale == 0)
            best = u;
    }
    snprintf(buf, len, "%llu%s", (unsigned long long)(b / best->scale),
             best->name);
}

/* strtoll alone would also take leading blanks and a '+'. */
static int parse_int64(const char *s, int64_t *out)
{
    char *end;
    long long v;

    if (!isdigit((unsigned char)*s) && *s != '-')
        return CONFIG_ERR;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return CONFIG_ERR;
    *out = v;
    return CONFIG_OK;
}

/* strtod without its leniencies: no leading blanks, no nan or inf. */
static int parse_double(const char *s, double *out, const char **rest)
{
    char *end;
    double v;

    if (!isdigit((unsigned char)*s) && *s != '-' && *s != '+' && *s != '.')
        return CONFIG_ERR;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || !isfinite(v))
        return CONFIG_ERR;
    if (rest != NULL)
        *rest = end;
    else if (*end != '\0')
        return CONFIG_ERR;
    *out = v;
    return CONFIG_OK;
}

/* ------------------------------------------------------------------------
 * Errors
 * --------------------------------------------------------------------- */

/* Copies a value for a message: bounded, control bytes and quotes
 * replaced, so a binary or huge value cannot garble the log line. */
static void quote_value(const char *v, char *buf, size_t len)
{
    size_t n = 0;

    for (; *v != '\0' && n + 4 < len && n < QUOTE_MAX; v++) {
        unsigned char c = (unsigned char)*v;
        buf[n++] = (c < 0x20 || c == 0x7f || c == '"') ? '?' : (char)c;
    }
    if (*v != '\0' && n + 4 <= len) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
}

/* Keeps the first error only: later ones are usually its echoes. */
static int parse_fail(struct config_parse *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int parse_fail(struct config_parse *ctx, const char *fmt, ...)
{
    va_list ap;
    size_t n;

    if (ctx->failed)
        return CONFIG_ERR;
    ctx->failed = 1;
    ctx->err_line = ctx->line;
    va_start(ap, fmt);
    vsnprintf(ctx->err, sizeof(ctx->err), fmt, ap);
    va_end(ap);
    n = strlen(ctx->err);
    if (ctx->line > 0 && n < sizeof(ctx->err))
        snprintf(ctx->err + n, sizeof(ctx->err) - n, " (line %d)",
                 ctx->line);
    return CONFIG_ERR;
}

static int bad_value(struct config_parse *ctx, const struct key_def *def,
                     const char *what, const char *value)
{
    char q[QUOTE_MAX + 8];

    quote_value(value, q, sizeof(q));
    return parse_fail(ctx, "%s.%s: %s \"%s\"", def->section, def->name,
                      what, q);
}

static void format_bound(const struct key_def *def, double v, char *buf,
                         size_t len)
{
    if (def->type == KEY_DURATION)
        format_duration((int64_t)v, buf, len);
    else if (def->type == KEY_SIZE)
        format_size(v, buf, len);
    else
        snprintf(buf, len, "%.15g", v);
}

static int out_of_range(struct config_parse *ctx, const struct key_def *def,
                        const char *value)
{
    char q[QUOTE_MAX + 8], lo[32], hi[32], want[80];

    quote_value(value, q, sizeof(q));
    format_bound(def, def->lo, lo, sizeof(lo));
    /* An unbounded key has no upper bound to name, and converting
     * INFINITY to a duration's int64_t is undefined. */
    hi[0] = '\0';
    if (!isinf(def->hi))
        format_bound(def, def->hi, hi, sizeof(hi));
    if (isinf(def->hi))
        snprintf(want, sizeof(want), "%s %s", def->lo_open ? ">" : ">=", lo);
    else if (def->lo_open)
        snprintf(want, sizeof(want), "> %s and <= %s", lo, hi);
    else
        snprintf(want, sizeof(want), "%s..%s", lo, hi);
    return parse_fail(ctx, "%s.%s: out of range \"%s\", want %s",
                      def->section, def->name, q, want);
}

static int check_range(struct config_parse *ctx, const struct key_def *def,
                       double v, const char *value)
{
    if (v < def->lo || (def->lo_open && v == def->lo) || v > def->hi)
        return out_of_range(ctx, def, value);
    return CONFIG_OK;
}

/* ------------------------------------------------------------------------
 * Values by type
 * --------------------------------------------------------------------- */

static int copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);

    if (n >= cap)
        return CONFIG_ERR;
    memcpy(dst, src, n + 1);
    return CONFIG_OK;
}

/* host:port with a numeric port 1-65535; an IPv6 host goes in brackets,
 * since its colons would leave the port ambiguous. */
static int valid_address(const char *s)
{
    const char *colon, *p;
    char *end;
    long port;

    if (*s == '[') {
        p = strchr(s, ']');
        if (p == NULL || p == s + 1 || p[1] != ':')
            return 0;
        colon = p + 1;
    } else {
        colon = strchr(s, ':');
        if (colon == NULL || colon == s || strchr(colon + 1, ':') != NULL)
            return 0;
    }
    for (p = s; p < colon; p++) {
        if (isspace((unsigned char)*p))
            return 0;
    }
    if (!isdigit((unsigned char)colon[1]))
        return 0;
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    return errno == 0 && *end == '\0' && port >= 1 && port <= 65535;
}

/* A zone name, never a path: the value ends up in TZ, and "../" or an
 * absolute path would point it at any file on the host. */
static int valid_timezone(const char *name)
{
    char path[CONFIG_PATHLEN];
    struct stat st;

    if (strcmp(name, "UTC") == 0)
        return 1;
    if (*name == '\0' || *name == '/' || strstr(name, "..") != NULL)
        return 0;
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", ZONEINFO_DIR, name)
        >= sizeof(path))
        return 0;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};

    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return CONFIG_OK;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return CONFIG_OK;
        }
    }
    return CONFIG_ERR;
}

static int parse_event_lib(const char *s, int *out)
{
    static const char *const names[] = {"poll", "uv", "ev"};
    static const int libs[] = {CONFIG_EVENT_LIB_POLL, CONFIG_EVENT_LIB_UV,
                               CONFIG_EVENT_LIB_EV};

    for (size_t i = 0; i < 3; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = libs[i];
            return CONFIG_OK;
        }
    }
    return CONFIG_ERR;
}

/* "MIN-MAX" hours, blanks allowed around the dash. */
static int parse_role(const char *s, struct config_role *out)
{
    const char *p;
    double lo, hi;

    if (*s == '-' || *s == '+' || parse_double(s, &lo, &p) != CONFIG_OK)
        return CONFIG_ERR;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p++ != '-')
        return CONFIG_ERR;
    while (*p == ' ' || *p == '\t')
        p++;
    if (!isdigit((unsigned char)*p) && *p != '.')
        return CONFIG_ERR;
    if (parse_double(p, &hi, NULL) != CONFIG_OK)
        return CONFIG_ERR;
    out->min_hours = lo;
    out->max_hours = hi;
    return CONFIG_OK;
}

static int parse_share(const char *s, double *out)
{
    const char *rest;
    double v;

    if (parse_double(s, &v, &rest) != CONFIG_OK)
        return CONFIG_ERR;
    if (strcmp(rest, "%") == 0)
        v /= 100.0;
    else if (*rest != '\0')
        return CONFIG_ERR;
    *out = v;
    return CONFIG_OK;
}

/* Strings are checked before they are copied, and a value that does not
 * fit is refused rather than cut: a cut path names another file. */
static int set_string(struct config_parse *ctx, const struct key_def *def,
                      char *field, const char *value)
{
    switch (def->type) {
    case KEY_ADDR:
        if (!valid_address(value))
            return bad_value(ctx, def, "bad address", value);
        break;
    case KEY_REDIS_ADDR:
        if (strcmp(value, "embedded") != 0 && !valid_address(value))
            return bad_value(ctx, def, "bad address", value);
        break;
    case KEY_TIMEZONE:
        if (!valid_timezone(value))
            return bad_value(ctx, def, "unknown timezone", value);
        break;
    default:
        if (*value == '\0')
            return bad_value(ctx, def, "empty", value);
        break;
    }
    if (copy_str(field, def->len, value) != CONFIG_OK)
        return bad_value(ctx, def, "too long", value);
    return CONFIG_OK;
}

/* The secret is never quoted back: the message may reach a log. */
static int set_secret(struct config_parse *ctx, const struct key_def *def,
                      char *field, const char *value)
{
    size_t n = strlen(value);

    if (n < SECRET_MIN)
        return parse_fail(ctx, "%s.%s: shorter than %d bytes", def->section,
                          def->name, SECRET_MIN);
    if (n >= def->len)
        return parse_fail(ctx, "%s.%s: longer than %zu bytes", def->section,
                          def->name, def->len - 1);
    memcpy(field, value, n + 1);
    return CONFIG_OK;
}

/* Every KEY_INT bound fits an int, so the narrowing below is exact. */
static int set_integer(struct config_parse *ctx, const struct key_def *def,
                       void *field, const char *value)
{
    int64_t v;

    if (parse_int64(value, &v) != CONFIG_OK)
        return bad_value(ctx, def, "bad integer", value);
    if (check_range(ctx, def, (double)v, value) != CONFIG_OK)
        return CONFIG_ERR;
    if (def->type == KEY_INT)
        *(int *)field = (int)v;
    else
        *(int64_t *)field = v;
    return CONFIG_OK;
}

static int set_unit_value(struct config_parse *ctx, const struct key_def *def,
                          void *field, const char *value)
{
    int64_t ms;
    size_t bytes;

    if (def->type == KEY_DURATION) {
        if (config_parse_duration(value, &ms) != CONFIG_OK)
            return bad_value(ctx, def, "bad duration", value);
        if (check_range(ctx, def, (double)ms, value) != CONFIG_OK)
            return CONFIG_ERR;
        *(int64_t *)field = ms;
        return CONFIG_OK;
    }
    if (config_parse_size(value, &bytes) != CONFIG_OK)
        return bad_value(ctx, def, "bad size", value);
    if (check_range(ctx, def, (double)bytes, value) != CONFIG_OK)
        return CONFIG_ERR;
    *(size_t *)field = bytes;
    return CONFIG_OK;
}

static int set_real(struct config_parse *ctx, const struct key_def *def,
                    double *field, const char *value)
{
    double v;
    int rc;

    if (def->type == KEY_SHARE)
        rc = parse_share(value, &v);
    else
        rc = parse_double(value, &v, NULL);
    if (rc != CONFIG_OK)
        return bad_value(ctx, def, "bad number", value);
    if (check_range(ctx, def, v, value) != CONFIG_OK)
        return CONFIG_ERR;
    *field = v;
    return CONFIG_OK;
}

/* A range with its ends swapped is a typo, not an empty requirement. */
static int set_role(struct config_parse *ctx, const struct key_def *def,
                    struct config_role *field, const char *value)
{
    struct config_role r;

    if (parse_role(value, &r) != CONFIG_OK || r.min_hours > r.max_hours ||
        r.max_hours <= 0)
        return bad_value(ctx, def, "bad hour range", value);
    if (r.min_hours < def->lo || r.max_hours > def->hi)
        return out_of_range(ctx, def, value);
    *field = r;
    return CONFIG_OK;
}

static int set_value(struct config_parse *ctx, const struct key_def *def,
                     const char *value)
{
    char *field = (char *)ctx->cfg + def->offset;
    int level;

    switch (def->type) {
    case KEY_SECRET:
        return set_secret(ctx, def, field, value);
    case KEY_INT:
    case KEY_INT64:
        return set_integer(ctx, def, field, value);
    case KEY_DURATION:
    case KEY_SIZE:
        return set_unit_value(ctx, def, field, value);
    case KEY_DOUBLE:
    case KEY_SHARE:
        return set_real(ctx, def, (double *)field, value);
    case KEY_BOOL:
        if (parse_bool(value, (int *)field) != CONFIG_OK)
            return bad_value(ctx, def, "bad boolean", value);
        return CONFIG_OK;
    case KEY_EVENT_LIB:
        if (parse_event_lib(value, (int *)field) != CONFIG_OK)
            return bad_value(ctx, def, "not poll, uv or ev", value);
        return CONFIG_OK;
    case KEY_LEVEL:
        level = log_level_parse(value);
        if (level < 0)
            return bad_value(ctx, def, "bad level", value);
        *(int *)field = level;
        return CONFIG_OK;
    case KEY_ROLE:
        return set_role(ctx, def, (struct config_role *)field, value);
    default:
        return set_string(ctx, def, field, value);
    }
}

/* ------------------------------------------------------------------------
 * inih callbacks
 * --------------------------------------------------------------------- */

static int known_section(const char *name)
{
    for (size_t i = 0; i < KEY_COUNT; i++) {
        if (strcmp(key_defs[i].section, name) == 0)
            return 1;
    }
    return 0;
}

/* inih's handler: nonzero means the line was fine. After the first error
 * the rest of the file is skipped, so one typo gives one message. */
static int on_key(void *user, const char *section, const char *name,
                  const char *value)
{
    struct config_parse *ctx = user;

    if (ctx->failed)
        return 0;
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const struct key_def *def = &key_defs[i];

        if (strcmp(def->section, section) != 0 ||
            strcmp(def->name, name) != 0)
            continue;
        if (def->offset == offsetof(struct config, policy.heartbeat_grace_ms))
            ctx->grace_given = 1;
        return set_value(ctx, def, value) == CONFIG_OK;
    }
    if (!known_section(section))
        parse_fail(ctx, "config: unknown section [%s]", section);
    else
        parse_fail(ctx, "config: unknown key %s.%s", section, name);
    return 0;
}

static int next_char(struct config_parse *ctx)
{
    if (ctx->fp != NULL)
        return getc(ctx->fp);
    if (*ctx->text == '\0')
        return EOF;
    return (unsigned char)*ctx->text++;
}

/* inih calls the handler only for keys, so an empty unknown section
 * would pass unnoticed; it is caught here as its header line goes by. */
static void check_section_line(struct config_parse *ctx, char *line)
{
    char *end;

    if (line[0] != '[')
        return;
    end = strchr(line, ']');
    if (end == NULL)
        return;
    *end = '\0';
    if (!known_section(line + 1))
        parse_fail(ctx, "config: unknown section [%s]", line + 1);
    *end = ']';
}

/* Hands inih one line at a time. Leading blanks are dropped, which turns
 * off inih's continuation lines: an indented key is a key, not a value
 * glued to the one above. A line longer than inih's buffer is refused
 * rather than split in two. */
static char *on_read_line(char *str, int num, void *stream)
{
    struct config_parse *ctx = stream;
    size_t n = 0, skip = 0, cap = (size_t)num - 1;
    int c = EOF, too_long = 0;

    if (ctx->failed)
        return NULL;
    while ((c = next_char(ctx)) != EOF) {
        if (n < cap)
            str[n++] = (char)c;
        else
            too_long = 1;
        if (c == '\n')
            break;
    }
    /* A directory opens fine and fails on the first read. */
    if (c == EOF && ctx->fp != NULL && ferror(ctx->fp)) {
        parse_fail(ctx, "config: cannot read %s: %s", ctx->path,
                   strerror(errno));
        return NULL;
    }
    if (n == 0 && c == EOF)
        return NULL;
    str[n] = '\0';
    ctx->line++;
    if (too_long) {
        parse_fail(ctx, "config: line longer than %d bytes", num - 2);
        return NULL;
    }

    if (ctx->line == 1 && strncmp(str, "\xEF\xBB\xBF", 3) == 0)
        skip = 3;
    while (str[skip] == ' ' || str[skip] == '\t')
        skip++;
    memmove(str, str + skip, n - skip + 1);
    check_section_line(ctx, str);
    return ctx->failed ? NULL : str;
}

/* ------------------------------------------------------------------------
 * Loading
 * --------------------------------------------------------------------- */

/* Online rather than configured: an offline CPU runs no thread. */
static int online_cores(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    return n > 0 ? (int)n : 1;
}

/* The SPEC's defaults; config/proctord.conf repeats them and a test
 * keeps the two equal. */
void config_defaults(struct config *cfg)
{
    struct config_policy *p = &cfg->policy;

    memset(cfg, 0, sizeof(*cfg));
    strcpy(cfg->ws_listen, "127.0.0.1:8765");
    strcpy(cfg->http_listen, "127.0.0.1:8766");
    cfg->threads = online_cores();
    cfg->event_lib = CONFIG_EVENT_LIB_EV;
    cfg->hello_timeout_ms = 10000;
    cfg->max_frame = 2 * 1048576;
    cfg->msg_rate = 50;
    cfg->msg_burst = 100;
    cfg->max_connections = 50000;
    cfg->http_timeout_ms = 10000;
    cfg->http_max_body = 4 * 1048576;
    cfg->shutdown_timeout_ms = 4000;
    strcpy(cfg->console_dir, "web/console");

    strcpy(cfg->redis_address, "embedded");
    strcpy(cfg->redis_data_dir, "var/redis");
    strcpy(cfg->redis_server, "redis-server");
    cfg->redis_cluster = 0;
    cfg->commit_buffer = 10000;
    cfg->events_maxlen = 1000000;

    cfg->jwt_leeway_ms = 30000;
    cfg->log_level = LOG_NOTICE;

    strcpy(cfg->models_dir, "models");
    cfg->vision_workers = online_cores();
    cfg->second_face_ratio = 0.25;
    cfg->max_pixels = 16000000;
    cfg->vision_queue = 64;
    cfg->vision_nice = 10;
    cfg->min_face_px = VISION_DEFAULT_MIN_FACE_PX;
    cfg->min_brightness = VISION_DEFAULT_MIN_BRIGHTNESS;
    cfg->min_contrast = VISION_DEFAULT_MIN_CONTRAST;
    cfg->min_sharpness = VISION_DEFAULT_MIN_SHARPNESS;
    cfg->max_brisque = VISION_DEFAULT_MAX_BRISQUE;

    cfg->manager = (struct config_role){12, 48};
    cfg->safety_officer = (struct config_role){12, 48};
    cfg->team_leader = (struct config_role){20, 72};
    cfg->online_share = 0.4;

    p->heartbeat_interval_ms = 10000;
    p->heartbeat_grace_ms = 3 * p->heartbeat_interval_ms;
    p->idle_after_ms = 120000;
    p->check_interval_ms = 300000;
    p->exam_check_interval_ms = 30000;
    p->challenge_deadline_ms = 30000;
    p->match_threshold = -1;
    p->minutes_per_credit_hour = 45;
    p->daily_cap_ms = 8 * 3600000LL;
    p->absent_after_ms = 60000;
    p->evidence_ttl_ms = 180 * 86400000LL;
    p->liveness_share = 0.33;
    p->resume_window_ms = 120000;
    strcpy(p->timezone, "Asia/Shanghai");
    p->idle_window_ms = 1800000;
    p->idle_share = 0.5;
}

enum order { ORDER_LONGER, ORDER_SHORTER, ORDER_AT_MOST, ORDER_AT_LEAST };

/* Checks "a is <order> b" between two durations, naming both keys. */
static int check_order(struct config_parse *ctx, const char *a_key,
                       int64_t a, enum order rel, const char *b_key,
                       int64_t b)
{
    static const char *const words[] = {"longer than", "shorter than",
                                        "at most", "at least"};
    char av[32], bv[32];
    int ok;

    switch (rel) {
    case ORDER_LONGER:
        ok = a > b;
        break;
    case ORDER_SHORTER:
        ok = a < b;
        break;
    case ORDER_AT_MOST:
        ok = a <= b;
        break;
    default:
        ok = a >= b;
        break;
    }
    if (ok)
        return CONFIG_OK;
    format_duration(a, av, sizeof(av));
    format_duration(b, bv, sizeof(bv));
    return parse_fail(ctx, "%s: \"%s\" is not %s %s \"%s\"", a_key, av,
                      words[rel], b_key, bv);
}

/* Rules between keys, checked once the whole file is in. */
static int check_policy(struct config_parse *ctx)
{
    const struct config_policy *p = &ctx->cfg->policy;

    if (check_order(ctx, "policy.heartbeat_grace", p->heartbeat_grace_ms,
                    ORDER_LONGER, "policy.heartbeat_interval",
                    p->heartbeat_interval_ms) != CONFIG_OK)
        return CONFIG_ERR;
    if (check_order(ctx, "policy.challenge_deadline",
                    p->challenge_deadline_ms, ORDER_SHORTER,
                    "policy.check_interval", p->check_interval_ms)
        != CONFIG_OK)
        return CONFIG_ERR;
    /* An exam challenge must be answered before the next one is due. */
    if (check_order(ctx, "policy.challenge_deadline",
                    p->challenge_deadline_ms, ORDER_AT_MOST,
                    "policy.exam_check_interval", p->exam_check_interval_ms)
        != CONFIG_OK)
        return CONFIG_ERR;
    return check_order(ctx, "policy.idle_window", p->idle_window_ms,
                       ORDER_AT_LEAST, "policy.heartbeat_interval",
                       p->heartbeat_interval_ms);
}

/* One of the pair alone would serve plain text where the operator meant
 * TLS. Only readability is checked here; whether the files hold a
 * matching certificate and key is the TLS module's question. */
static int check_tls(struct config_parse *ctx)
{
    const struct config *cfg = ctx->cfg;
    const char *paths[2] = {cfg->tls_cert, cfg->tls_key};
    static const char *const keys[2] = {"server.tls_cert", "server.tls_key"};
    int have_cert = paths[0][0] != '\0', have_key = paths[1][0] != '\0';

    if (have_cert && !have_key)
        return parse_fail(ctx, "server.tls_key: required with "
                          "server.tls_cert");
    if (have_key && !have_cert)
        return parse_fail(ctx, "server.tls_cert: required with "
                          "server.tls_key");
    for (int i = 0; i < 2 && have_cert; i++) {
        FILE *fp = fopen(paths[i], "r");

        if (fp == NULL)
            return parse_fail(ctx, "%s: cannot read \"%s\": %s", keys[i],
                              paths[i], strerror(errno));
        fclose(fp);
    }
    return CONFIG_OK;
}

static int finish(struct config_parse *ctx)
{
    struct config *cfg = ctx->cfg;

    /* Past the last line: cross-key messages carry no line number. */
    ctx->line = 0;
    if (!ctx->grace_given)
        cfg->policy.heartbeat_grace_ms = 3 * cfg->policy.heartbeat_interval_ms;
    if (cfg->threads == 0)
        cfg->threads = online_cores();
    if (cfg->vision_workers == 0)
        cfg->vision_workers = online_cores();

    if (cfg->jwt_secret[0] == '\0')
        return parse_fail(ctx, "auth.jwt_secret: required");
    if (cfg->redis_cluster && strcmp(cfg->redis_address, "embedded") == 0)
        return parse_fail(ctx, "redis.cluster: needs redis.address "
                          "host:port, not \"embedded\"");
    if (check_tls(ctx) != CONFIG_OK)
        return CONFIG_ERR;
    return check_policy(ctx);
}

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", msg);
}

/* Parses into a copy so a failed load leaves cfg as it was. */
static int load(struct config *cfg, FILE *fp, const char *path,
                const char *text, char *err, size_t errlen)
{
    struct config_parse ctx;
    struct config tmp = *cfg;
    int rc;

    memset(&ctx, 0, sizeof(ctx));
    ctx.cfg = &tmp;
    ctx.fp = fp;
    ctx.path = path;
    ctx.text = text;
    rc = ini_parse_stream(on_read_line, &ctx, on_key, &ctx);

    if (rc == -2) {
        set_err(err, errlen, "config: out of memory");
        return CONFIG_ERR;
    }
    /* inih reports the first failing line: a syntax error there comes
     * before any error of ours on a later line. */
    if (rc > 0 && (!ctx.failed || rc < ctx.err_line)) {
        ctx.failed = 0;
        ctx.line = rc;
        parse_fail(&ctx, "config: syntax error");
    }
    if (ctx.failed || finish(&ctx) != CONFIG_OK) {
        set_err(err, errlen, ctx.err);
        return CONFIG_ERR;
    }
    *cfg = tmp;
    return CONFIG_OK;
}

int config_load(struct config *cfg, const char *path, char *err,
                size_t errlen)
{
    FILE *fp = fopen(path, "r");
    int rc;

    if (fp == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "config: cannot open %s: %s", path,
                     strerror(errno));
        return CONFIG_ERR;
    }
    rc = load(cfg, fp, path, NULL, err, errlen);
    fclose(fp);
    return rc;
}

int config_load_string(struct config *cfg, const char *text, char *err,
                       size_t errlen)
{
    return load(cfg, NULL, NULL, text, err, errlen);
}

int config_load_policy(struct config_policy *out, const char *path,
                       char *err, size_t errlen)
{
    struct config cfg;

    config_defaults(&cfg);
    if (config_load(&cfg, path, err, errlen) != CONFIG_OK)
        return CONFIG_ERR;
    *out = cfg.policy;
    return CONFIG_OK;
}

/* ------------------------------------------------------------------------
 * Policy diff
 * --------------------------------------------------------------------- */

static void format_policy_value(const struct key_def *def,
                                const struct config_policy *p, char *buf,
                                size_t len)
{
    const char *field = (const char *)p + def->offset -
                        offsetof(struct config, policy);

    switch (def->type) {
    case KEY_DURATION:
        format_duration(*(const int64_t *)field, buf, len);
        break;
    case KEY_INT:
        snprintf(buf, len, "%d", *(const int *)field);
        break;
    case KEY_DOUBLE:
    case KEY_SHARE:
        snprintf(buf, len, "%.15g", *(const double *)field);
        break;
    default:
        snprintf(buf, len, "%s", field);
        break;
    }
}

int config_policy_diff(const struct config_policy *a,
                       const struct config_policy *b, char *buf,
                       size_t buflen)
{
    char before[80], after[80];
    size_t used = 0;
    int changes = 0;

    if (buf != NULL && buflen > 0)
        buf[0] = '\0';
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const struct key_def *def = &key_defs[i];

        if (strcmp(def->section, "policy") != 0)
            continue;
        /* Compared as printed: a change too small to show is no change. */
        format_policy_value(def, a, before, sizeof(before));
        format_policy_value(def, b, after, sizeof(after));
        if (strcmp(before, after) == 0)
            continue;
        if (buf != NULL && used < buflen) {
            int n = snprintf(buf + used, buflen - used,
                             "%spolicy.%s: %s -> %s", changes > 0 ? "; " : "",
                             def->name, before, after);
            used += n > 0 ? (size_t)n : 0;
        }
        changes++;
    }
    return changes;
}
