/* Unit tests for daemon/config.c: defaults, durations and sizes, every
 * kind of refusal and its wording, the heartbeat_grace default, policy
 * reload and diff, and the shipped example config. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

/* name under $TMPDIR (or /tmp), for mkstemp(). */
static char *temp_path(char *path, size_t len, const char *name)
{
    const char *dir = getenv("TMPDIR");

    snprintf(path, len, "%s/%s", dir != NULL && *dir ? dir : "/tmp", name);
    return path;
}

#define SECRET_LINES "[auth]\njwt_secret = 0123456789abcdef-test\n"

/* Loads text after a valid [auth] section; returns the config_load rc. */
static int load_text(struct config *cfg, const char *text, char *err,
                     size_t errlen)
{
    char buf[4096];

    snprintf(buf, sizeof(buf), "%s%s", SECRET_LINES, text);
    config_defaults(cfg);
    return config_load_string(cfg, buf, err, errlen);
}

/* Expects text to fail with exactly the message want. */
static void expect_error(const char *text, const char *want)
{
    struct config cfg;
    char err[CONFIG_ERRLEN] = "";

    assert_int_equal(load_text(&cfg, text, err, sizeof(err)), CONFIG_ERR);
    assert_string_equal(err, want);
}

/* Expects text to fail with a message starting with prefix. */
static void expect_error_prefix(const char *text, const char *prefix)
{
    struct config cfg;
    char err[CONFIG_ERRLEN] = "";

    assert_int_equal(load_text(&cfg, text, err, sizeof(err)), CONFIG_ERR);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fail_msg("error \"%s\" does not start with \"%s\"", err, prefix);
}

static void expect_ok(const char *text, struct config *cfg)
{
    char err[CONFIG_ERRLEN] = "";

    if (load_text(cfg, text, err, sizeof(err)) != CONFIG_OK)
        fail_msg("load failed: %s", err);
}

static int write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");

    if (fp == NULL)
        return -1;
    fputs(text, fp);
    return fclose(fp);
}

/* ------------------------------------------------------------------------
 * Defaults
 * --------------------------------------------------------------------- */

static void test_defaults(void **state)
{
    struct config cfg;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);

    (void)state;
    config_defaults(&cfg);
    assert_string_equal(cfg.ws_listen, "127.0.0.1:8765");
    assert_string_equal(cfg.http_listen, "127.0.0.1:8766");
    assert_int_equal(cfg.threads, cores);
    assert_int_equal(cfg.event_lib, CONFIG_EVENT_LIB_EV);
    assert_int_equal(cfg.hello_timeout_ms, 10000);
    assert_int_equal(cfg.max_frame, 2 * 1024 * 1024);
    assert_true(cfg.msg_rate == 50);
    assert_int_equal(cfg.msg_burst, 100);
    assert_int_equal(cfg.max_connections, 50000);
    assert_int_equal(cfg.http_timeout_ms, 10000);
    assert_int_equal(cfg.http_max_body, 4 * 1024 * 1024);
    assert_int_equal(cfg.shutdown_timeout_ms, 4000);
    assert_string_equal(cfg.console_dir, "web/console");
    assert_string_equal(cfg.redis_address, "embedded");
    assert_string_equal(cfg.redis_data_dir, "var/redis");
    assert_string_equal(cfg.redis_server, "redis-server");
    assert_int_equal(cfg.redis_cluster, 0);
    assert_int_equal(cfg.commit_buffer, 10000);
    assert_int_equal(cfg.events_maxlen, 1000000);
    assert_string_equal(cfg.jwt_secret, "");
    assert_int_equal(cfg.jwt_leeway_ms, 30000);
    assert_int_equal(cfg.log_level, LOG_NOTICE);
    assert_string_equal(cfg.models_dir, "models");
    assert_int_equal(cfg.vision_workers, cores);
    assert_true(cfg.second_face_ratio == 0.25);
    assert_int_equal(cfg.max_pixels, 16000000);
    assert_int_equal(cfg.vision_queue, 64);
    assert_true(cfg.min_face_px == 24 && cfg.min_brightness == 40);
    assert_true(cfg.min_contrast == 15 && cfg.min_sharpness == 8);
    assert_true(cfg.max_brisque == 65);
    assert_true(cfg.manager.min_hours == 12 && cfg.manager.max_hours == 48);
    assert_true(cfg.safety_officer.min_hours == 12 &&
                cfg.safety_officer.max_hours == 48);
    assert_true(cfg.team_leader.min_hours == 20 &&
                cfg.team_leader.max_hours == 72);
    assert_true(cfg.online_share == 0.4);
}

static void test_policy_defaults(void **state)
{
    struct config cfg;
    const struct config_policy *p = &cfg.policy;

    (void)state;
    config_defaults(&cfg);
    assert_int_equal(p->heartbeat_interval_ms, 10000);
    assert_int_equal(p->heartbeat_grace_ms, 30000);
    assert_int_equal(p->idle_after_ms, 120000);
    assert_int_equal(p->check_interval_ms, 300000);
    assert_int_equal(p->exam_check_interval_ms, 30000);
    assert_int_equal(p->challenge_deadline_ms, 30000);
    assert_true(p->match_threshold == -1);
    assert_int_equal(p->minutes_per_credit_hour, 45);
    assert_int_equal(p->daily_cap_ms, 8 * 3600000LL);
    assert_int_equal(p->absent_after_ms, 60000);
    assert_int_equal(p->evidence_ttl_ms, 180 * 86400000LL);
    assert_true(p->liveness_share == 0.33);
    assert_int_equal(p->resume_window_ms, 120000);
    assert_string_equal(p->timezone, "Asia/Shanghai");
    assert_int_equal(p->idle_window_ms, 1800000);
    assert_true(p->idle_share == 0.5);
}

/* A file holding only the secret changes nothing else. */
static void test_minimal_file(void **state)
{
    struct config cfg, def;
    char diff[512];

    (void)state;
    expect_ok("", &cfg);
    config_defaults(&def);
    assert_string_equal(cfg.jwt_secret, "0123456789abcdef-test");
    assert_int_equal(config_policy_diff(&def.policy, &cfg.policy, diff,
                                        sizeof(diff)), 0);
    assert_int_equal(cfg.threads, def.threads);
    assert_int_equal(cfg.max_frame, def.max_frame);
}

static void test_cores_resolved(void **state)
{
    struct config cfg;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);

    (void)state;
    expect_ok("[server]\nthreads = 0\n[vision]\nworkers = 0\n", &cfg);
    assert_int_equal(cfg.threads, cores);
    assert_int_equal(cfg.vision_workers, cores);
    expect_ok("[server]\nthreads = 3\n[vision]\nworkers = 5\n", &cfg);
    assert_int_equal(cfg.threads, 3);
    assert_int_equal(cfg.vision_workers, 5);
}

/* ------------------------------------------------------------------------
 * Durations and sizes
 * --------------------------------------------------------------------- */

static void test_durations(void **state)
{
    static const struct {
        const char *text;
        int64_t ms;
    } ok[] = {
        {"500ms", 500}, {"10s", 10000}, {"1.5s", 1500}, {"5m", 300000},
        {"2h", 7200000}, {"180d", 180 * 86400000LL}, {"0s", 0},
        {"0ms", 0}, {"0.25s", 250}, {"1.5m", 90000}, {"0.001s", 1},
        {"1.000000000000s", 1000}, {"007s", 7000},
        {"9223372036854775807ms", INT64_MAX},
    };
    int64_t ms;

    (void)state;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        ms = -1;
        if (config_parse_duration(ok[i].text, &ms) != CONFIG_OK)
            fail_msg("refused \"%s\"", ok[i].text);
        assert_int_equal(ms, ok[i].ms);
    }
}

static void test_duration_refusals(void **state)
{
    static const char *const bad[] = {
        "", "10", "ten", "-5s", "+5s", "5 s", " 5s", "5s ", "5sec", "5S",
        "5M", "1.5ms", "0.0001s", ".5s", "5.s", "1..5s", "s", "ms",
        "5s5", "5s junk", "1e3ms", "0x10s",
        "9223372036854775808ms", "106751991168d", "99999999999999999999s",
        "9223372036854775.808s",
    };
    int64_t ms = 42;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (config_parse_duration(bad[i], &ms) != CONFIG_ERR)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_int_equal(ms, 42);
    }
}

static void test_sizes(void **state)
{
    static const struct {
        const char *text;
        size_t bytes;
    } ok[] = {
        {"2MiB", 2097152}, {"512KiB", 524288}, {"1GiB", 1073741824},
        {"4096", 4096}, {"0", 0}, {"10B", 10}, {"0.5KiB", 512},
        {"1.5MiB", 1572864}, {"8GiB", 8589934592ULL},
    };
    size_t v;

    (void)state;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        v = 1;
        if (config_parse_size(ok[i].text, &v) != CONFIG_OK)
            fail_msg("refused \"%s\"", ok[i].text);
        assert_int_equal(v, ok[i].bytes);
    }
}

static void test_size_refusals(void **state)
{
    static const char *const bad[] = {
        "", "2MB", "2KB", "2kb", "2mib", "2 MiB", "MiB", "-1", "-1KiB",
        "+1", "1.5", "0.1KiB", "2MiBs", "2TiB", "1e3", "0x10",
        "99999999999999999999", "9223372036854775808",
        "8589934592GiB",
    };
    size_t v = 42;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (config_parse_size(bad[i], &v) != CONFIG_ERR)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_int_equal(v, 42);
    }
}

static void test_units_in_file(void **state)
{
    struct config cfg;

    (void)state;
    expect_ok("[server]\nhello_timeout = 1.5s\nmax_frame = 512KiB\n"
              "http_max_body = 1GiB\n[policy]\nevidence_ttl = 30d\n"
              "daily_cap = 24h\nresume_window = 0s\n", &cfg);
    assert_int_equal(cfg.hello_timeout_ms, 1500);
    assert_int_equal(cfg.max_frame, 524288);
    assert_int_equal(cfg.http_max_body, 1073741824);
    assert_int_equal(cfg.policy.evidence_ttl_ms, 30 * 86400000LL);
    assert_int_equal(cfg.policy.daily_cap_ms, 24 * 3600000LL);
    assert_int_equal(cfg.policy.resume_window_ms, 0);
}

/* ------------------------------------------------------------------------
 * Unknown names and syntax
 * --------------------------------------------------------------------- */

static void test_unknown_key(void **state)
{
    (void)state;
    expect_error("[server]\nfoo = 1\n", "config: unknown key server.foo "
                 "(line 4)");
    expect_error("[policy]\nheartbeat_intervall = 10s\n",
                 "config: unknown key policy.heartbeat_intervall (line 4)");
    /* Keys are case-sensitive: a typo in case is a typo. */
    expect_error("[server]\nThreads = 2\n", "config: unknown key "
                 "server.Threads (line 4)");
}

static void test_unknown_section(void **state)
{
    (void)state;
    expect_error("[bogus]\nkey = 1\n", "config: unknown section [bogus] "
                 "(line 3)");
    /* Even with no keys under it. */
    expect_error("[bogus]\n", "config: unknown section [bogus] (line 3)");
    expect_error("[server]\nthreads = 1\n[Server]\n",
                 "config: unknown section [Server] (line 5)");
    /* Keys before any section have section "". */
    {
        struct config cfg;
        char err[CONFIG_ERRLEN];

        config_defaults(&cfg);
        assert_int_equal(config_load_string(&cfg, "threads = 1\n", err,
                                            sizeof(err)), CONFIG_ERR);
        assert_string_equal(err, "config: unknown section [] (line 1)");
    }
}

static void test_syntax(void **state)
{
    struct config cfg;
    char line[400];

    (void)state;
    expect_error("[server]\nthis is not a key\n",
                 "config: syntax error (line 4)");
    expect_error("[server\nthreads = 1\n", "config: syntax error (line 3)");

    /* A line too long for inih is refused, not split in two. */
    memset(line, 'a', sizeof(line));
    memcpy(line, "[redis]\nserver = ", 17);
    line[300] = '\n';
    line[301] = '\0';
    expect_error(line, "config: line longer than 198 bytes (line 4)");

    /* Comments, blank lines, indentation and a BOM are fine. */
    expect_ok("\n# comment\n; comment\n[server]\n  threads = 2 ; why\n"
              "\tmsg_burst = 7\n", &cfg);
    assert_int_equal(cfg.threads, 2);
    assert_int_equal(cfg.msg_burst, 7);
    config_defaults(&cfg);
    assert_int_equal(config_load_string(&cfg, "\xEF\xBB\xBF" SECRET_LINES,
                                        NULL, 0), CONFIG_OK);
    /* "key: value" is inih's other spelling. */
    expect_ok("[server]\nthreads: 6\n", &cfg);
    assert_int_equal(cfg.threads, 6);
}

/* ------------------------------------------------------------------------
 * Bad values
 * --------------------------------------------------------------------- */

static void test_bad_values(void **state)
{
    (void)state;
    expect_error("[server]\nhello_timeout = ten\n",
                 "server.hello_timeout: bad duration \"ten\" (line 4)");
    expect_error("[server]\nhello_timeout = 10\n",
                 "server.hello_timeout: bad duration \"10\" (line 4)");
    expect_error("[server]\nmax_frame = 2MB\n",
                 "server.max_frame: bad size \"2MB\" (line 4)");
    expect_error("[server]\nthreads = two\n",
                 "server.threads: bad integer \"two\" (line 4)");
    expect_error("[server]\nmsg_rate = fast\n",
                 "server.msg_rate: bad number \"fast\" (line 4)");
    expect_error("[server]\nws_listen = localhost\n",
                 "server.ws_listen: bad address \"localhost\" (line 4)");
    expect_error("[server]\nevent_lib = epoll\n",
                 "server.event_lib: not poll, uv or ev \"epoll\" (line 4)");
    expect_error("[server]\nevent_lib = UV\n",
                 "server.event_lib: not poll, uv or ev \"UV\" (line 4)");
    expect_error("[redis]\ncluster = maybe\n",
                 "redis.cluster: bad boolean \"maybe\" (line 4)");
    expect_error("[log]\nlevel = loud\n",
                 "log.level: bad level \"loud\" (line 4)");
    expect_error("[requirements]\nmanager = 48-12\n",
                 "requirements.manager: bad hour range \"48-12\" (line 4)");
    expect_error("[policy]\ntimezone = Mars/Olympus\n",
                 "policy.timezone: unknown timezone \"Mars/Olympus\" "
                 "(line 4)");
    expect_error("[vision]\nmodels_dir =\n",
                 "vision.models_dir: empty \"\" (line 4)");
    /* A quote or control byte in the value does not garble the line. */
    expect_error("[log]\nlevel = \"x\"\n",
                 "log.level: bad level \"?x?\" (line 4)");
}

static void test_out_of_range(void **state)
{
    (void)state;
    expect_error("[server]\nthreads = -1\n",
                 "server.threads: out of range \"-1\", want 0..1024 (line 4)");
    expect_error("[server]\nmsg_rate = 0\n",
                 "server.msg_rate: out of range \"0\", want > 0 and <= "
                 "1000000 (line 4)");
    expect_error("[server]\nmax_frame = 100\n",
                 "server.max_frame: out of range \"100\", want 1KiB..1GiB "
                 "(line 4)");
    expect_error("[server]\nhello_timeout = 0s\n",
                 "server.hello_timeout: out of range \"0s\", want >= 1ms "
                 "(line 4)");
    expect_error("[policy]\ndaily_cap = 25h\n",
                 "policy.daily_cap: out of range \"25h\", want 1ms..1d "
                 "(line 4)");
    expect_error("[policy]\nminutes_per_credit_hour = 601\n",
                 "policy.minutes_per_credit_hour: out of range \"601\", "
                 "want 1..600 (line 4)");
    expect_error_prefix("[policy]\nminutes_per_credit_hour = 0\n",
                        "policy.minutes_per_credit_hour: out of range");
    expect_error_prefix("[policy]\nmatch_threshold = 1.5\n",
                        "policy.match_threshold: out of range \"1.5\"");
    expect_error_prefix("[policy]\nmatch_threshold = -2\n",
                        "policy.match_threshold: out of range \"-2\"");
    expect_error_prefix("[policy]\nliveness_share = 1.01\n",
                        "policy.liveness_share: out of range");
    expect_error_prefix("[policy]\nidle_share = 0\n",
                        "policy.idle_share: out of range");
    expect_error_prefix("[vision]\nsecond_face_ratio = 0\n",
                        "vision.second_face_ratio: out of range");
    expect_error_prefix("[vision]\nsecond_face_ratio = 1.5\n",
                        "vision.second_face_ratio: out of range");
    expect_error_prefix("[vision]\nmax_pixels = 0\n",
                        "vision.max_pixels: out of range");
    expect_error_prefix("[vision]\nmax_pixels = 16M\n",
                        "vision.max_pixels: bad integer \"16M\"");
    expect_error_prefix("[vision]\nqueue = 0\n", "vision.queue: out of range");
    expect_error_prefix("[vision]\nmin_brightness = 300\n",
                        "vision.min_brightness: out of range");
    expect_error_prefix("[vision]\nmax_brisque = -1\n",
                        "vision.max_brisque: out of range");
    expect_error_prefix("[vision]\nmin_face_px = wide\n",
                        "vision.min_face_px: bad number");
    expect_error_prefix("[auth]\nleeway = 2h\n", "auth.leeway: out of range");
    expect_error_prefix("[requirements]\nonline_share = 140%\n",
                        "requirements.online_share: out of range");
    expect_error_prefix("[requirements]\nteam_leader = 20-20000\n",
                        "requirements.team_leader: out of range");
}

static void test_addresses(void **state)
{
    static const char *const bad[] = {
        "host:0", "host:65536", "host:", ":8765", "host:80x", "::1:8765",
        "[::1]8765", "[]:80", "a b:80", "host:-1", "host:+80",
    };
    struct config cfg;
    char text[256];

    (void)state;
    expect_ok("[server]\nws_listen = [::1]:9000\n"
              "http_listen = 0.0.0.0:65535\n"
              "[redis]\naddress = redis.internal:6379\n", &cfg);
    assert_string_equal(cfg.ws_listen, "[::1]:9000");
    assert_string_equal(cfg.http_listen, "0.0.0.0:65535");
    assert_string_equal(cfg.redis_address, "redis.internal:6379");
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), "[redis]\naddress = %s\n", bad[i]);
        expect_error_prefix(text, "redis.address: bad address");
    }
}

static void test_other_forms(void **state)
{
    static const char *const yes[] = {"yes", "true", "on", "1", "YES", "On"};
    static const char *const no[] = {"no", "false", "off", "0", "False"};
    struct config cfg;
    char text[256];

    (void)state;
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        snprintf(text, sizeof(text), "[redis]\naddress = h:1\ncluster = %s\n",
                 yes[i]);
        expect_ok(text, &cfg);
        assert_int_equal(cfg.redis_cluster, 1);
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        snprintf(text, sizeof(text), "[redis]\ncluster = %s\n", no[i]);
        expect_ok(text, &cfg);
        assert_int_equal(cfg.redis_cluster, 0);
    }

    expect_ok("[server]\nevent_lib = poll\n", &cfg);
    assert_int_equal(cfg.event_lib, CONFIG_EVENT_LIB_POLL);
    expect_ok("[server]\nevent_lib = uv\n", &cfg);
    assert_int_equal(cfg.event_lib, CONFIG_EVENT_LIB_UV);
    expect_ok("[server]\nevent_lib = ev\n", &cfg);
    assert_int_equal(cfg.event_lib, CONFIG_EVENT_LIB_EV);

    expect_ok("[requirements]\nmanager = 10 - 40.5\nonline_share = 40%\n"
              "[policy]\nliveness_share = 25%\nmatch_threshold = 0.42\n"
              "timezone = UTC\n[log]\nlevel = debug\n", &cfg);
    assert_true(cfg.manager.min_hours == 10);
    assert_true(cfg.manager.max_hours == 40.5);
    assert_true(cfg.online_share == 0.4);
    assert_true(cfg.policy.liveness_share == 0.25);
    assert_true(cfg.policy.match_threshold == 0.42);
    assert_string_equal(cfg.policy.timezone, "UTC");
    assert_int_equal(cfg.log_level, LOG_DEBUG);

    expect_ok("[policy]\ntimezone = Europe/Berlin\nmatch_threshold = -1\n",
              &cfg);
    assert_string_equal(cfg.policy.timezone, "Europe/Berlin");
    expect_error_prefix("[policy]\ntimezone = ../../etc/passwd\n",
                        "policy.timezone: unknown timezone");
    expect_error_prefix("[policy]\ntimezone = /etc/localtime\n",
                        "policy.timezone: unknown timezone");
    /* A directory under zoneinfo is not a zone. */
    expect_error_prefix("[policy]\ntimezone = Asia\n",
                        "policy.timezone: unknown timezone");
}

/* ------------------------------------------------------------------------
 * The secret and cross-key rules
 * --------------------------------------------------------------------- */

static void test_secret(void **state)
{
    struct config cfg;
    char err[CONFIG_ERRLEN];

    (void)state;
    config_defaults(&cfg);
    assert_int_equal(config_load_string(&cfg, "[server]\nthreads = 2\n", err,
                                        sizeof(err)), CONFIG_ERR);
    assert_string_equal(err, "auth.jwt_secret: required");

    config_defaults(&cfg);
    assert_int_equal(config_load_string(&cfg, "[auth]\njwt_secret =\n", err,
                                        sizeof(err)), CONFIG_ERR);
    assert_string_equal(err, "auth.jwt_secret: shorter than 16 bytes "
                        "(line 2)");

    /* The secret itself never appears in a message. */
    config_defaults(&cfg);
    assert_int_equal(config_load_string(&cfg, "[auth]\njwt_secret = "
                                        "tooshort\n", err, sizeof(err)),
                     CONFIG_ERR);
    assert_null(strstr(err, "tooshort"));

    config_defaults(&cfg);
    assert_int_equal(config_load_string(&cfg, "[auth]\njwt_secret = "
                                        "exactly-16-bytes\nleeway = 0s\n",
                                        err, sizeof(err)), CONFIG_OK);
    assert_string_equal(cfg.jwt_secret, "exactly-16-bytes");
    assert_int_equal(cfg.jwt_leeway_ms, 0);
}

static void test_grace_default(void **state)
{
    struct config cfg;

    (void)state;
    expect_ok("[policy]\nheartbeat_interval = 20s\n", &cfg);
    assert_int_equal(cfg.policy.heartbeat_grace_ms, 60000);
    expect_ok("[policy]\nheartbeat_interval = 1.5s\n", &cfg);
    assert_int_equal(cfg.policy.heartbeat_grace_ms, 4500);

    /* Given, it is kept, whatever order the keys come in. */
    expect_ok("[policy]\nheartbeat_grace = 15s\nheartbeat_interval = 5s\n",
              &cfg);
    assert_int_equal(cfg.policy.heartbeat_grace_ms, 15000);
    assert_int_equal(cfg.policy.heartbeat_interval_ms, 5000);
}

static void test_cross_checks(void **state)
{
    (void)state;
    expect_error("[policy]\nheartbeat_grace = 10s\n",
                 "policy.heartbeat_grace: \"10s\" is not longer than "
                 "policy.heartbeat_interval \"10s\"");
    expect_error("[policy]\nheartbeat_interval = 1m\nheartbeat_grace = 30s\n",
                 "policy.heartbeat_grace: \"30s\" is not longer than "
                 "policy.heartbeat_interval \"1m\"");
    expect_error("[policy]\nchallenge_deadline = 5m\n",
                 "policy.challenge_deadline: \"5m\" is not shorter than "
                 "policy.check_interval \"5m\"");
    expect_error("[policy]\nchallenge_deadline = 45s\n",
                 "policy.challenge_deadline: \"45s\" is not at most "
                 "policy.exam_check_interval \"30s\"");
    expect_error("[policy]\nidle_window = 5s\n",
                 "policy.idle_window: \"5s\" is not at least "
                 "policy.heartbeat_interval \"10s\"");
    expect_error("[redis]\ncluster = yes\n",
                 "redis.cluster: needs redis.address host:port, not "
                 "\"embedded\"");
}

/* A failed load leaves the caller's struct exactly as it was. */
static void test_failed_load_untouched(void **state)
{
    struct config cfg, before;

    (void)state;
    expect_ok("[server]\nthreads = 3\n", &cfg);
    before = cfg;
    assert_int_equal(config_load_string(&cfg, "[server]\nthreads = 9\n"
                                        "msg_burst = x\n", NULL, 0),
                     CONFIG_ERR);
    assert_memory_equal(&cfg, &before, sizeof(cfg));
}

/* ------------------------------------------------------------------------
 * Files, reload, diff
 * --------------------------------------------------------------------- */

static void test_missing_file(void **state)
{
    struct config cfg;
    struct config_policy p;
    char err[CONFIG_ERRLEN];

    (void)state;
    config_defaults(&cfg);
    assert_int_equal(config_load(&cfg, "/nonexistent/proctord.conf", err,
                                 sizeof(err)), CONFIG_ERR);
    assert_string_equal(err, "config: cannot open /nonexistent/proctord.conf"
                        ": No such file or directory");
    assert_int_equal(config_load_policy(&p, "/nonexistent/proctord.conf",
                                        err, sizeof(err)), CONFIG_ERR);

    config_defaults(&cfg);
    assert_int_equal(config_load(&cfg, "/tmp", err, sizeof(err)), CONFIG_ERR);
    assert_string_equal(err, "config: cannot read /tmp: Is a directory");
}

static void test_policy_reload(void **state)
{
    char path[PATH_MAX];
    struct config_policy p, before;
    char err[CONFIG_ERRLEN];
    int fd = mkstemp(temp_path(path, sizeof(path), "test_config_XXXXXX"));

    (void)state;
    assert_true(fd >= 0);
    close(fd);

    assert_int_equal(write_file(path, SECRET_LINES "[server]\nthreads = 2\n"
                                "[policy]\nheartbeat_interval = 5s\n"
                                "idle_after = 90s\ntimezone = UTC\n"), 0);
    memset(&p, 0xff, sizeof(p));
    assert_int_equal(config_load_policy(&p, path, err, sizeof(err)),
                     CONFIG_OK);
    assert_int_equal(p.heartbeat_interval_ms, 5000);
    assert_int_equal(p.heartbeat_grace_ms, 15000);
    assert_int_equal(p.idle_after_ms, 90000);
    assert_string_equal(p.timezone, "UTC");
    /* Keys the file leaves out come from the defaults. */
    assert_int_equal(p.check_interval_ms, 300000);
    assert_int_equal(p.minutes_per_credit_hour, 45);

    /* Any error, in any section, refuses the reload and keeps out. */
    before = p;
    assert_int_equal(write_file(path, SECRET_LINES "[server]\nbogus = 1\n"
                                "[policy]\nheartbeat_interval = 7s\n"), 0);
    assert_int_equal(config_load_policy(&p, path, err, sizeof(err)),
                     CONFIG_ERR);
    assert_string_equal(err, "config: unknown key server.bogus (line 4)");
    assert_memory_equal(&p, &before, sizeof(p));

    assert_int_equal(write_file(path, SECRET_LINES "[policy]\n"
                                "daily_cap = lots\n"), 0);
    assert_int_equal(config_load_policy(&p, path, err, sizeof(err)),
                     CONFIG_ERR);
    assert_string_equal(err, "policy.daily_cap: bad duration \"lots\" "
                        "(line 4)");
    unlink(path);
}

static void test_policy_diff(void **state)
{
    struct config a, b;
    char buf[512];

    (void)state;
    config_defaults(&a);
    config_defaults(&b);
    strcpy(buf, "junk");
    assert_int_equal(config_policy_diff(&a.policy, &b.policy, buf,
                                        sizeof(buf)), 0);
    assert_string_equal(buf, "");

    b.policy.heartbeat_interval_ms = 20000;
    b.policy.minutes_per_credit_hour = 50;
    b.policy.liveness_share = 0.5;
    strcpy(b.policy.timezone, "UTC");
    b.policy.resume_window_ms = 1500;
    assert_int_equal(config_policy_diff(&a.policy, &b.policy, buf,
                                        sizeof(buf)), 5);
    assert_string_equal(buf, "policy.heartbeat_interval: 10s -> 20s; "
                        "policy.minutes_per_credit_hour: 45 -> 50; "
                        "policy.liveness_share: 0.33 -> 0.5; "
                        "policy.resume_window: 2m -> 1500ms; "
                        "policy.timezone: Asia/Shanghai -> UTC");

    /* A short buffer truncates but still counts every change. */
    assert_int_equal(config_policy_diff(&a.policy, &b.policy, buf, 16), 5);
    assert_int_equal(strlen(buf), 15);
    assert_int_equal(config_policy_diff(&a.policy, &b.policy, NULL, 0), 5);
}

/* The TLS pair: both or neither, and each file readable. Whether they
 * are a certificate and its key is tls.c's check (test_tls.py). */
static void test_tls_pair(void **state)
{
    char path[256], text[1024];
    char err[CONFIG_ERRLEN];
    struct config cfg;
    int fd = mkstemp(temp_path(path, sizeof(path), "proctord-tls-XXXXXX"));

    (void)state;
    assert_true(fd >= 0);
    close(fd);

    config_defaults(&cfg);
    snprintf(text, sizeof(text), "[server]\ntls_cert = %s\n[auth]\n"
             "jwt_secret = exactly-16-bytes\n", path);
    assert_int_equal(config_load_string(&cfg, text, err, sizeof(err)),
                     CONFIG_ERR);
    assert_string_equal(err, "server.tls_key: required with server.tls_cert");

    snprintf(text, sizeof(text), "[server]\ntls_key = %s\n[auth]\n"
             "jwt_secret = exactly-16-bytes\n", path);
    assert_int_equal(config_load_string(&cfg, text, err, sizeof(err)),
                     CONFIG_ERR);
    assert_string_equal(err, "server.tls_cert: required with server.tls_key");

    snprintf(text, sizeof(text), "[server]\ntls_cert = %s\ntls_key = "
             "/nonexistent/key.pem\n[auth]\njwt_secret = "
             "exactly-16-bytes\n", path);
    assert_int_equal(config_load_string(&cfg, text, err, sizeof(err)),
                     CONFIG_ERR);
    assert_string_equal(err, "server.tls_key: cannot read "
                        "\"/nonexistent/key.pem\": No such file or "
                        "directory");
    assert_string_equal(cfg.tls_cert, "");

    snprintf(text, sizeof(text), "[server]\ntls_cert = %s\ntls_key = %s\n"
             "[auth]\njwt_secret = exactly-16-bytes\n", path, path);
    assert_int_equal(config_load_string(&cfg, text, err, sizeof(err)),
                     CONFIG_OK);
    assert_string_equal(cfg.tls_cert, path);
    assert_string_equal(cfg.tls_key, path);
    unlink(path);
}

/* The shipped example must load and say exactly the defaults. */
static void test_example_config(void **state)
{
    const char *src = getenv("PROCTORD_SOURCE");
    struct config cfg, def;
    char path[1024], err[CONFIG_ERRLEN] = "", diff[1024];

    (void)state;
    if (src == NULL || *src == '\0') {
        print_message("PROCTORD_SOURCE not set; example config skipped\n");
        skip();
    }
    snprintf(path, sizeof(path), "%s/config/proctord.conf", src);
    config_defaults(&cfg);
    if (config_load(&cfg, path, err, sizeof(err)) != CONFIG_OK)
        fail_msg("%s", err);

    config_defaults(&def);
    strcpy(def.jwt_secret, cfg.jwt_secret);
    assert_true(strlen(cfg.jwt_secret) >= 16);
    if (config_policy_diff(&def.policy, &cfg.policy, diff, sizeof(diff)) != 0)
        fail_msg("example policy differs from defaults: %s", diff);
    assert_memory_equal(&cfg, &def, offsetof(struct config, policy));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_policy_defaults),
        cmocka_unit_test(test_minimal_file),
        cmocka_unit_test(test_cores_resolved),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_duration_refusals),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_size_refusals),
        cmocka_unit_test(test_units_in_file),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_unknown_section),
        cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_other_forms),
        cmocka_unit_test(test_secret),
        cmocka_unit_test(test_grace_default),
        cmocka_unit_test(test_cross_checks),
        cmocka_unit_test(test_failed_load_untouched),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_policy_reload),
        cmocka_unit_test(test_policy_diff),
        cmocka_unit_test(test_tls_pair),
        cmocka_unit_test(test_example_config),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
