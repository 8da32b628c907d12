/* Logging: four levels, one line per event with key=value fields.
 * The level is tested before the arguments are evaluated, so a costly
 * description of a client is built only when the line will be written.
 * Never log a token, a secret or image bytes. */
#ifndef PROCTORD_LOG_H
#define PROCTORD_LOG_H

#include <stddef.h>

#define LOG_DEBUG 0
#define LOG_VERBOSE 1
#define LOG_NOTICE 2
#define LOG_WARNING 3

extern int log_verbosity;

/* Parses "debug", "verbose", "notice" or "warning"; -1 when unknown. */
int log_level_parse(const char *name);

/* Copies s into buf with double quotes and control characters replaced,
 * so it can stand inside a quoted key="value" field. Returns buf. */
const char *log_quote(const char *s, char *buf, size_t buflen);

void log_write(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_at(level, ...)                                                \
    do {                                                                  \
        if ((level) >= log_verbosity)                                     \
            log_write((level), __VA_ARGS__);                              \
    } while (0)

#define log_debug(...) log_at(LOG_DEBUG, __VA_ARGS__)
#define log_verbose(...) log_at(LOG_VERBOSE, __VA_ARGS__)
#define log_notice(...) log_at(LOG_NOTICE, __VA_ARGS__)
#define log_warning(...) log_at(LOG_WARNING, __VA_ARGS__)

#endif
