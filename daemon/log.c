/* One line per event on stderr: time, level, then the caller's
 * key=value text. A single write() per line keeps lines whole when
 * several threads log at once. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int log_verbosity = LOG_NOTICE;

static const char *const level_names[] = {"debug", "verbose", "notice",
                                          "warning"};

int log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, level_names[i]) == 0)
            return i;
    }
    return -1;
}

const char *log_quote(const char *s, char *buf, size_t buflen)
{
    size_t i = 0;

    if (buflen == 0)
        return "";
    for (; s != NULL && *s != '\0' && i + 1 < buflen; s++)
        buf[i++] = (*s == '"' || (unsigned char)*s < 0x20) ? '\'' : *s;
    buf[i] = '\0';
    return buf;
}

void log_write(int level, const char *fmt, ...)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;
    size_t n;
    va_list ap;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(line + n, sizeof(line) - n, ".%03dZ level=%s ",
                  (int)(tv.tv_usec / 1000), level_names[level & 3]);

    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);

    /* A line cut at the buffer's end still ends with a newline. */
    n = strlen(line);
    if (n >= sizeof(line) - 1)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    if (write(STDERR_FILENO, line, n) < 0) {
        /* Nowhere left to report a failing stderr. */
    }
}
