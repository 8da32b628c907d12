/* Configuration: the INI file (libinih), its defaults, durations and sizes
 * with units, and validation whose errors name section.key and the value.
 * The [policy] section is a struct of its own so SIGHUP can swap it whole. */
#ifndef PROCTORD_CONFIG_H
#define PROCTORD_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CONFIG_OK 0
#define CONFIG_ERR -1

#define CONFIG_ERRLEN 256
#define CONFIG_ADDRLEN 128
#define CONFIG_PATHLEN 512

/* Required and permitted online hours for one role. */
struct config_role {
    double min_hours;
    double max_hours;
};

/* Durations are milliseconds throughout. */
struct config_policy {
    int64_t heartbeat_interval_ms;
    int64_t heartbeat_grace_ms;     /* default 3 x heartbeat_interval */
    int64_t idle_after_ms;
    int64_t check_interval_ms;
    int64_t exam_check_interval_ms;
    int64_t challenge_deadline_ms;
    double match_threshold;         /* < 0: the model's own */
    int minutes_per_credit_hour;
    int64_t daily_cap_ms;
    int64_t absent_after_ms;
    int64_t evidence_ttl_ms;
    double liveness_share;
    int64_t resume_window_ms;
    char timezone[64];
    int64_t idle_window_ms;
    double idle_share;
};

/* server.event_lib: the loop under each network thread's lws context. */
enum config_event_lib {
    CONFIG_EVENT_LIB_POLL,          /* lws's own poll() loop */
    CONFIG_EVENT_LIB_UV,            /* libuv, lws's evlib_uv plugin */
    CONFIG_EVENT_LIB_EV,            /* libev, lws's evlib_ev plugin */
};

struct config {
    /* [server] */
    char ws_listen[CONFIG_ADDRLEN];
    char http_listen[CONFIG_ADDRLEN];
    int threads;                    /* 0 in the file: number of cores */
    int event_lib;                  /* enum config_event_lib */
    int64_t hello_timeout_ms;
    size_t max_frame;
    double msg_rate;                /* messages per second, sustained */
    int msg_burst;                  /* messages allowed in a burst */
    int max_connections;            /* per daemon, over all threads */
    int64_t http_timeout_ms;
    size_t http_max_body;
    int64_t shutdown_timeout_ms;
    char console_dir[CONFIG_PATHLEN];   /* the console's static files */
    /* PEM files; both empty (plain ws:// and http://) or both set. */
    char tls_cert[CONFIG_PATHLEN];
    char tls_key[CONFIG_PATHLEN];

    /* [redis] */
    char redis_address[CONFIG_ADDRLEN];  /* "embedded" or host:port */
    char redis_data_dir[CONFIG_PATHLEN];
    char redis_server[CONFIG_PATHLEN];   /* redis-server binary */
    int redis_cluster;
    int commit_buffer;              /* commits held while Redis is down */
    int64_t events_maxlen;          /* pd:events trimmed to about this */

    /* [auth] */
    char jwt_secret[256];
    int64_t jwt_leeway_ms;

    /* [log] */
    int log_level;                  /* LOG_DEBUG .. LOG_WARNING */

    /* [vision] */
    char models_dir[CONFIG_PATHLEN];
    int vision_workers;             /* 0 in the file: number of cores */
    double second_face_ratio;
    int64_t max_pixels;
    int vision_queue;
    int vision_nice;                /* added to the workers' nice value */
    /* The quality gate before any face verdict; 0 turns a check off. */
    double min_face_px;
    double min_brightness;
    double min_contrast;
    double min_sharpness;
    double max_brisque;

    /* [requirements] */
    struct config_role manager;
    struct config_role safety_officer;
    struct config_role team_leader;
    double online_share;

    struct config_policy policy;
};

/* Fills cfg with the embedded defaults; threads and workers are resolved
 * to the number of online cores. */
void config_defaults(struct config *cfg);

/* Reads path over the defaults already in cfg. Returns CONFIG_OK, or
 * CONFIG_ERR with a one-line message in err ("section.key: ..."), which
 * names the key and the bad value. jwt_secret is required. */
int config_load(struct config *cfg, const char *path, char *err,
                size_t errlen);

/* Same rules over an in-memory INI text (for tests and fuzzing). */
int config_load_string(struct config *cfg, const char *text, char *err,
                       size_t errlen);

/* Reads only the [policy] section of path into out, starting from the
 * defaults; other sections are parsed for syntax but ignored. */
int config_load_policy(struct config_policy *out, const char *path,
                       char *err, size_t errlen);

/* "500ms", "10s", "5m", "2h", "180d" -> milliseconds. CONFIG_ERR on junk,
 * a missing unit, a negative value or overflow. */
int config_parse_duration(const char *s, int64_t *out_ms);

/* "2MiB", "512KiB", "1GiB", "4096" (bytes) -> bytes. */
int config_parse_size(const char *s, size_t *out);

/* Writes one "policy.key: old -> new" line per changed field to buf
 * (separated by "; "), for the SIGHUP log. Returns the number of changes. */
int config_policy_diff(const struct config_policy *a,
                       const struct config_policy *b, char *buf,
                       size_t buflen);

#endif
