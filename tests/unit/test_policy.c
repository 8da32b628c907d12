/* Unit tests for daemon/policy.c, the crediting rules, on a fake clock:
 * every accrual condition at its edges, face verdicts and flags, absence
 * and idle windows, states, days and caps, plus seeded random streams
 * (reordered, skewed, gapped) that must never credit more than wall-clock
 * time nor lose track of a millisecond. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "policy.h"

#define SEC 1000LL
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

/* 2024-05-01 02:00:00 UTC, 10:00 in Asia/Shanghai: far from midnight. */
#define T0 1714528800000LL
#define CN_OFFSET (8 * 3600)

/* ======================================================================
 * Fake clock and fixture
 * ====================================================================== */

struct fx {
    struct config_policy cfg;
    struct policy_session s;
    struct policy_decision d;
    int64_t now;
    int64_t client;
    int32_t off;
};

/* The SPEC's defaults, by hand: the tests must not move with config.c. */
static struct config_policy default_cfg(void)
{
    struct config_policy c;

    memset(&c, 0, sizeof(c));
    c.heartbeat_interval_ms = 10 * SEC;
    c.heartbeat_grace_ms = 30 * SEC;
    c.idle_after_ms = 2 * MIN;
    c.check_interval_ms = 5 * MIN;
    c.exam_check_interval_ms = 1 * MIN;
    c.challenge_deadline_ms = 30 * SEC;
    c.match_threshold = -1;
    c.minutes_per_credit_hour = 45;
    c.daily_cap_ms = 8 * HOUR;
    c.absent_after_ms = 1 * MIN;
    c.evidence_ttl_ms = 180 * DAY;
    c.liveness_share = 0.33;
    c.resume_window_ms = 2 * MIN;
    strcpy(c.timezone, "Asia/Shanghai");
    c.idle_window_ms = 30 * MIN;
    c.idle_share = 0.5;
    return c;
}

static void fx_init_at(struct fx *f, int64_t start, int exam)
{
    memset(f, 0, sizeof(*f));
    f->cfg = default_cfg();
    f->now = start;
    /* A client clock five hours and a bit off: it must not matter. */
    f->client = start - 5 * HOUR + 123;
    f->off = CN_OFFSET;
    policy_session_init(&f->s, start, exam);
}

static void fx_init(struct fx *f)
{
    fx_init_at(f, T0, 0);
}

static struct policy_heartbeat hb_input(void)
{
    struct policy_heartbeat hb;

    memset(&hb, 0, sizeof(hb));
    hb.page_visible = 1;
    hb.window_focused = 1;
    hb.input_events = 3;
    return hb;
}

static struct policy_heartbeat hb_quiet(void)
{
    struct policy_heartbeat hb = hb_input();

    hb.input_events = 0;
    return hb;
}

static struct policy_heartbeat hb_hidden(void)
{
    struct policy_heartbeat hb = hb_input();

    hb.page_visible = 0;
    return hb;
}

static struct policy_heartbeat hb_unfocused(void)
{
    struct policy_heartbeat hb = hb_input();

    hb.window_focused = 0;
    return hb;
}

static struct policy_heartbeat hb_media(double pos_s, double rate)
{
    struct policy_heartbeat hb = hb_quiet();

    hb.media_playing = 1;
    hb.playback_rate = rate;
    hb.media_position_s = pos_s;
    return hb;
}

/* A heartbeat dt after the last event; the client clock moves alike. */
static int64_t beat(struct fx *f, int64_t dt, struct policy_heartbeat hb)
{
    f->now += dt;
    f->client += dt;
    hb.client_time_ms = f->client;
    policy_on_heartbeat(&f->cfg, &f->s, &hb, f->now, f->off, &f->d);
    return f->d.accrued_ms;
}

/* A heartbeat at an absolute server time, client time as given. */
static int64_t beat_raw(struct fx *f, int64_t now,
                        struct policy_heartbeat hb)
{
    f->now = now;
    policy_on_heartbeat(&f->cfg, &f->s, &hb, f->now, f->off, &f->d);
    return f->d.accrued_ms;
}

static void verdict(struct fx *f, int64_t dt, enum policy_outcome o)
{
    f->now += dt;
    policy_on_verdict(&f->cfg, &f->s, o, 0, f->now, &f->d);
}

static void tick(struct fx *f, int64_t dt)
{
    f->now += dt;
    policy_on_tick(&f->cfg, &f->s, f->now, &f->d);
}

/* Heartbeats with input every step for duration; the accrued total. */
static int64_t study(struct fx *f, int64_t duration, int64_t step)
{
    int64_t sum = 0, done = 0;

    while (done < duration) {
        int64_t dt = duration - done < step ? duration - done : step;

        sum += beat(f, dt, hb_input());
        done += dt;
    }
    return sum;
}

/* A session at T0 whose first heartbeat and first MATCH are at T0. */
static void fx_verified(struct fx *f)
{
    fx_init(f);
    beat(f, 0, hb_input());
    verdict(f, 0, POLICY_MATCH);
}

static void expect_flag(const struct policy_decision *d,
                        enum policy_flag kind, int64_t withheld)
{
    assert_int_equal(d->nflags, 1);
    assert_int_equal(d->flags[0].kind, kind);
    assert_int_equal(d->flags[0].withheld_ms, withheld);
    assert_int_equal(d->discard_ms, withheld);
    assert_int_equal(d->ncommit, 0);
}

/* ======================================================================
 * Heartbeat accrual
 * ====================================================================== */

static void test_first_heartbeat_accrues_nothing(void **state)
{
    struct fx f;

    (void)state;
    fx_init(&f);
    verdict(&f, 0, POLICY_MATCH);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 0);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 10 * SEC);
}

static void test_before_first_match_nothing_accrues(void **state)
{
    struct fx f;

    (void)state;
    fx_init(&f);
    assert_int_equal(study(&f, 5 * MIN, 10 * SEC), 0);
    assert_int_equal(policy_provisional_ms(&f.s), 0);
    verdict(&f, 0, POLICY_MATCH);
    assert_int_equal(f.d.commit_ms, 0);
    assert_int_equal(f.d.ncommit, 0);
}

static void test_interval_accrues_after_match(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 10 * SEC);
    assert_int_equal(policy_provisional_ms(&f.s), 10 * SEC);
    assert_int_equal(f.d.ncommit, 0);
}

static void test_match_mid_interval_credits_from_match(void **state)
{
    struct fx f;

    (void)state;
    fx_init(&f);
    beat(&f, 0, hb_input());
    verdict(&f, 4 * SEC, POLICY_MATCH);
    assert_int_equal(beat(&f, 6 * SEC, hb_input()), 6 * SEC);
}

static void test_uses_server_time_not_client_time(void **state)
{
    struct fx f;
    struct policy_heartbeat hb = hb_input();

    (void)state;
    fx_verified(&f);
    /* The client claims an hour passed; the server saw ten seconds. */
    hb.client_time_ms = f.client + HOUR;
    assert_int_equal(beat_raw(&f, f.now + 10 * SEC, hb), 10 * SEC);
    /* And the other way: the client claims a millisecond. */
    hb.client_time_ms += 1;
    assert_int_equal(beat_raw(&f, f.now + 10 * SEC, hb), 10 * SEC);
}

static void test_client_clock_skew_does_not_matter(void **state)
{
    struct fx f;

    (void)state;
    /* A client clock a week behind from the first heartbeat on. */
    fx_init(&f);
    f.client = T0 - 7 * DAY;
    beat(&f, 0, hb_input());
    verdict(&f, 0, POLICY_MATCH);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 10 * SEC);
    assert_int_equal(study(&f, 2 * MIN, 10 * SEC), 2 * MIN);
}

static void test_client_time_backwards_accrues_nothing(void **state)
{
    struct fx f;
    struct policy_heartbeat hb = hb_input();
    int64_t c;

    (void)state;
    fx_verified(&f);
    beat(&f, 10 * SEC, hb_input());
    c = f.client;
    hb.client_time_ms = c - 1;
    assert_int_equal(beat_raw(&f, f.now + 10 * SEC, hb), 0);
    /* One interval only: from the new client time on, it counts. */
    hb.client_time_ms = c + 10 * SEC;
    assert_int_equal(beat_raw(&f, f.now + 10 * SEC, hb), 10 * SEC);
}

static void test_client_time_equal_or_unset_counts(void **state)
{
    struct fx f;
    struct policy_heartbeat hb = hb_input();

    (void)state;
    fx_init(&f);
    verdict(&f, 0, POLICY_MATCH);
    /* A client that never fills client_time_ms (proto3 default 0). */
    hb.client_time_ms = 0;
    beat_raw(&f, T0, hb);
    assert_int_equal(beat_raw(&f, T0 + 10 * SEC, hb), 10 * SEC);
    assert_int_equal(beat_raw(&f, T0 + 20 * SEC, hb), 10 * SEC);
}

static void test_gap_exactly_grace_accrues(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    assert_int_equal(beat(&f, 30 * SEC, hb_input()), 30 * SEC);
}

static void test_gap_grace_plus_one_accrues_nothing(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    assert_int_equal(beat(&f, 30 * SEC + 1, hb_input()), 0);
    assert_int_equal(policy_provisional_ms(&f.s), 0);
}

static void test_long_gap_starts_new_stretch(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    assert_int_equal(beat(&f, 10 * MIN, hb_input()), 0);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 10 * SEC);
}

static void test_grace_follows_config(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    f.cfg.heartbeat_grace_ms = 15 * SEC;
    assert_int_equal(beat(&f, 15 * SEC, hb_input()), 15 * SEC);
    assert_int_equal(beat(&f, 15 * SEC + 1, hb_input()), 0);
}

static void test_hidden_accrues_nothing(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    assert_int_equal(beat(&f, 10 * SEC, hb_hidden()), 0);
    assert_int_equal(beat(&f, 10 * SEC, hb_hidden()), 0);
}

static void test_unfocused_accrues_nothing(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    assert_int_equal(beat(&f, 10 * SEC, hb_unfocused()), 0);
    assert_int_equal(beat(&f, 10 * SEC, hb_unfocused()), 0);
}

static void test_hidden_at_interval_start_accrues_nothing(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    beat(&f, 10 * SEC, hb_hidden());
    /* Visible again: the interval since the hidden one was not. */
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 0);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 10 * SEC);
}

static void test_unfocused_at_interval_start_accrues_nothing(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    beat(&f, 10 * SEC, hb_unfocused());
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 0);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 10 * SEC);
}

static void test_session_start_counts_as_input(void **state)
{
    struct fx f;
    int64_t sum = 0;
    int i;

    (void)state;
    fx_verified(&f);
    /* No input at all: the first idle_after still accrues. */
    for (i = 0; i < 18; i++)
        sum += beat(&f, 10 * SEC, hb_quiet());
    assert_int_equal(sum, 2 * MIN);
}

static void test_idle_exactly_idle_after_accrues(void **state)
{
    struct fx f;
    int i;

    (void)state;
    fx_verified(&f);
    for (i = 0; i < 11; i++)
        beat(&f, 10 * SEC, hb_quiet());
    /* Last input at T0; this heartbeat is at T0 + idle_after exactly. */
    assert_int_equal(f.now + 10 * SEC - T0, 2 * MIN);
    assert_int_equal(beat(&f, 10 * SEC, hb_quiet()), 10 * SEC);
    assert_int_equal(beat(&f, 10 * SEC, hb_quiet()), 0);
}

static void test_idle_one_ms_past_stops_at_idle_after(void **state)
{
    struct fx f;
    int i;

    (void)state;
    fx_verified(&f);
    for (i = 0; i < 11; i++)
        beat(&f, 10 * SEC, hb_quiet());
    /* Credited up to T0 + idle_after, not the millisecond beyond. */
    assert_int_equal(beat(&f, 10 * SEC + 1, hb_quiet()), 10 * SEC);
    assert_int_equal(beat(&f, 10 * SEC, hb_quiet()), 0);
}

static void test_input_resumes_accrual(void **state)
{
    struct fx f;
    int i;

    (void)state;
    fx_verified(&f);
    for (i = 0; i < 20; i++)
        beat(&f, 10 * SEC, hb_quiet());
    assert_int_equal(beat(&f, 10 * SEC, hb_quiet()), 0);
    /* Input in the interval means someone was there during it. */
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 10 * SEC);
    assert_int_equal(beat(&f, 10 * SEC, hb_quiet()), 10 * SEC);
}

static void test_idle_after_follows_config(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    f.cfg.idle_after_ms = 15 * SEC;
    assert_int_equal(beat(&f, 10 * SEC, hb_quiet()), 10 * SEC);
    assert_int_equal(beat(&f, 10 * SEC, hb_quiet()), 5 * SEC);
    assert_int_equal(beat(&f, 10 * SEC, hb_quiet()), 0);
}

/* ---- Media ----------------------------------------------------------- */

/* Verified, then quiet long enough that only media can keep it active. */
static void fx_idle_out(struct fx *f)
{
    int i;

    fx_verified(f);
    for (i = 0; i < 15; i++)
        beat(f, 10 * SEC, hb_quiet());
    assert_int_equal(beat(f, 10 * SEC, hb_quiet()), 0);
}

static void test_media_normal_rate_counts(void **state)
{
    struct fx f;
    int i;

    (void)state;
    fx_idle_out(&f);
    /* The first media heartbeat has nothing to compare with. */
    assert_int_equal(beat(&f, 10 * SEC, hb_media(100.0, 1.0)), 0);
    for (i = 1; i <= 30; i++) {
        assert_int_equal(beat(&f, 10 * SEC, hb_media(100.0 + 10.0 * i, 1.0)),
                         10 * SEC);
    }
}

static void test_media_rate_two_counts(void **state)
{
    struct fx f;

    (void)state;
    fx_idle_out(&f);
    beat(&f, 10 * SEC, hb_media(0.0, 2.0));
    assert_int_equal(beat(&f, 10 * SEC, hb_media(20.0, 2.0)), 10 * SEC);
    assert_int_equal(beat(&f, 10 * SEC, hb_media(40.0, 2.0)), 10 * SEC);
}

static void test_media_rate_above_two_never_counts(void **state)
{
    struct fx f;
    int i;

    (void)state;
    fx_idle_out(&f);
    beat(&f, 10 * SEC, hb_media(0.0, 2.5));
    for (i = 1; i <= 10; i++)
        assert_int_equal(beat(&f, 10 * SEC, hb_media(25.0 * i, 2.5)), 0);
    assert_int_equal(policy_reason(&f.s), POLICY_REASON_MEDIA_RATE);
}

static void test_media_rate_above_two_at_either_end(void **state)
{
    struct fx f;

    (void)state;
    fx_idle_out(&f);
    beat(&f, 10 * SEC, hb_media(0.0, 2.5));
    /* 2.5 at the start of the interval, 1.0 at its end. */
    assert_int_equal(beat(&f, 10 * SEC, hb_media(10.0, 1.0)), 0);
    assert_int_equal(beat(&f, 10 * SEC, hb_media(20.0, 1.0)), 10 * SEC);
}

static void test_media_rate_change_in_range_counts(void **state)
{
    struct fx f;

    (void)state;
    fx_idle_out(&f);
    beat(&f, 10 * SEC, hb_media(0.0, 1.0));
    /* Somewhere between 1x and 1.5x for the interval. */
    assert_int_equal(beat(&f, 10 * SEC, hb_media(12.0, 1.5)), 10 * SEC);
}

static void test_media_zero_or_nan_rate_never_counts(void **state)
{
    struct fx f;

    (void)state;
    fx_idle_out(&f);
    beat(&f, 10 * SEC, hb_media(0.0, 0.0));
    assert_int_equal(beat(&f, 10 * SEC, hb_media(0.0, 0.0)), 0);
    assert_int_equal(beat(&f, 10 * SEC, hb_media(10.0, NAN)), 0);
    assert_int_equal(beat(&f, 10 * SEC, hb_media(20.0, NAN)), 0);
    assert_int_equal(beat(&f, 10 * SEC, hb_media(30.0, -1.0)), 0);
    assert_int_equal(beat(&f, 10 * SEC, hb_media(NAN, 1.0)), 0);
}

static void test_media_seek_forward_never_counts(void **state)
{
    struct fx f;

    (void)state;
    fx_idle_out(&f);
    beat(&f, 10 * SEC, hb_media(100.0, 1.0));
    assert_int_equal(beat(&f, 10 * SEC, hb_media(400.0, 1.0)), 0);
    /* In step again from the new position. */
    assert_int_equal(beat(&f, 10 * SEC, hb_media(410.0, 1.0)), 10 * SEC);
}

static void test_media_seek_backward_never_counts(void **state)
{
    struct fx f;

    (void)state;
    fx_idle_out(&f);
    beat(&f, 10 * SEC, hb_media(100.0, 1.0));
    assert_int_equal(beat(&f, 10 * SEC, hb_media(50.0, 1.0)), 0);
}

static void test_media_stuck_while_playing_never_counts(void **state)
{
    struct fx f;
    int i;

    (void)state;
    fx_idle_out(&f);
    beat(&f, 10 * SEC, hb_media(100.0, 1.0));
    for (i = 0; i < 5; i++)
        assert_int_equal(beat(&f, 10 * SEC, hb_media(100.0, 1.0)), 0);
}

static void test_media_tolerance_edges(void **state)
{
    struct fx f;

    (void)state;
    /* 10 s at 1x: 10 s +- (1 s + 1.5 s). */
    fx_idle_out(&f);
    beat(&f, 10 * SEC, hb_media(100.0, 1.0));
    assert_int_equal(beat(&f, 10 * SEC, hb_media(112.5, 1.0)), 10 * SEC);
    assert_int_equal(beat(&f, 10 * SEC, hb_media(120.0, 1.0)), 10 * SEC);
    assert_int_equal(beat(&f, 10 * SEC, hb_media(127.5, 1.0)), 10 * SEC);

    fx_idle_out(&f);
    beat(&f, 10 * SEC, hb_media(100.0, 1.0));
    assert_int_equal(beat(&f, 10 * SEC, hb_media(112.501, 1.0)), 0);

    fx_idle_out(&f);
    beat(&f, 10 * SEC, hb_media(100.0, 1.0));
    assert_int_equal(beat(&f, 10 * SEC, hb_media(107.499, 1.0)), 0);
}

static void test_media_not_playing_is_not_activity(void **state)
{
    struct fx f;
    struct policy_heartbeat hb;

    (void)state;
    fx_idle_out(&f);
    beat(&f, 10 * SEC, hb_media(100.0, 1.0));
    hb = hb_media(110.0, 1.0);
    hb.media_playing = 0;
    assert_int_equal(beat(&f, 10 * SEC, hb), 0);
}

static void test_media_stop_keeps_idle_after_grace(void **state)
{
    struct fx f;
    int64_t sum = 0;
    int i;

    (void)state;
    fx_idle_out(&f);
    beat(&f, 10 * SEC, hb_media(0.0, 1.0));
    beat(&f, 10 * SEC, hb_media(10.0, 1.0));
    /* Paused, reading: present for idle_after past the last playing. */
    for (i = 0; i < 20; i++)
        sum += beat(&f, 10 * SEC, hb_quiet());
    assert_int_equal(sum, 2 * MIN);
}

static void test_media_in_hidden_page_is_not_activity(void **state)
{
    struct fx f;
    struct policy_heartbeat hb;
    int i;

    (void)state;
    fx_idle_out(&f);
    for (i = 0; i < 20; i++) {
        hb = hb_media(10.0 * i, 1.0);
        hb.page_visible = 0;
        beat(&f, 10 * SEC, hb);
    }
    /* Visible again, still no input: idle, the hidden video was no one. */
    assert_int_equal(beat(&f, 10 * SEC, hb_quiet()), 0);
    assert_int_equal(beat(&f, 10 * SEC, hb_quiet()), 0);
}

/* ---- Reordering and clock steps --------------------------------------- */

static void test_now_backwards_accrues_nothing(void **state)
{
    struct fx f;
    struct policy_heartbeat hb = hb_input();
    int64_t last;

    (void)state;
    fx_verified(&f);
    beat(&f, 10 * SEC, hb_input());
    last = f.now;
    hb.client_time_ms = f.client + 1;
    assert_int_equal(beat_raw(&f, last - 5 * SEC, hb), 0);
    /* The next interval runs from the latest heartbeat, not the stray. */
    hb.client_time_ms = f.client + 10 * SEC;
    assert_int_equal(beat_raw(&f, last + 10 * SEC, hb), 10 * SEC);
}

static void test_duplicate_now_accrues_nothing(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 10 * SEC);
    assert_int_equal(beat(&f, 0, hb_input()), 0);
    assert_int_equal(beat(&f, 0, hb_input()), 0);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 10 * SEC);
    assert_int_equal(policy_provisional_ms(&f.s), 20 * SEC);
}

static void test_duplicate_call_is_idempotent(void **state)
{
    struct fx a, b;
    struct policy_heartbeat hb = hb_quiet();
    int i;

    (void)state;
    fx_verified(&a);
    fx_verified(&b);
    for (i = 1; i <= 20; i++) {
        hb.client_time_ms = a.client + i * 10 * SEC;
        beat_raw(&a, T0 + i * 10 * SEC, hb);
        beat_raw(&b, T0 + i * 10 * SEC, hb);
        beat_raw(&b, T0 + i * 10 * SEC, hb);
        assert_int_equal(b.d.accrued_ms, 0);
        assert_int_equal(policy_provisional_ms(&a.s),
                         policy_provisional_ms(&b.s));
        assert_int_equal(a.d.state, b.d.state);
        assert_int_equal(a.d.reason, b.d.reason);
    }
}

static void test_stale_hidden_heartbeat_sticks(void **state)
{
    struct fx f;
    struct policy_heartbeat hb = hb_hidden();
    int64_t last;

    (void)state;
    fx_verified(&f);
    beat(&f, 10 * SEC, hb_input());
    last = f.now;
    /* A hidden heartbeat delivered late: the page was hidden at some
     * point, so the next interval is not credited. */
    hb.client_time_ms = f.client;
    assert_int_equal(beat_raw(&f, last - 1, hb), 0);
    f.now = last;
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 0);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 10 * SEC);
}

static void test_same_ms_heartbeats_cannot_undo_hidden(void **state)
{
    struct fx f;
    struct policy_heartbeat hb;

    (void)state;
    fx_verified(&f);
    beat(&f, 10 * SEC, hb_input());
    /* Three heartbeats in one ms: hidden, then visible again. The page
     * was hidden at some point of the next interval. */
    hb = hb_hidden();
    hb.client_time_ms = f.client;
    beat_raw(&f, f.now, hb);
    hb = hb_input();
    hb.client_time_ms = f.client;
    beat_raw(&f, f.now, hb);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 0);
}

static void test_stale_heartbeat_input_counts(void **state)
{
    struct fx f;
    struct policy_heartbeat hb = hb_input();
    int i;

    (void)state;
    fx_verified(&f);
    for (i = 0; i < 20; i++)
        beat(&f, 10 * SEC, hb_quiet());
    /* Input reported by a heartbeat that arrived at the same ms. */
    hb.client_time_ms = f.client;
    beat_raw(&f, f.now, hb);
    assert_int_equal(beat(&f, 10 * SEC, hb_quiet()), 10 * SEC);
}

static void test_clock_step_back_credits_nothing_twice(void **state)
{
    struct fx f;
    int64_t high, sum = 0;
    int i;

    (void)state;
    fx_verified(&f);
    study(&f, 5 * MIN, 10 * SEC);
    high = f.now;
    /* The server clock steps back an hour: those times were credited. */
    f.now -= HOUR;
    for (i = 0; i < 360; i++)
        sum += beat(&f, 10 * SEC, hb_input());
    assert_int_equal(sum, 0);
    assert_int_equal(f.now, high);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 10 * SEC);
}

/* ======================================================================
 * Property: never more than wall-clock time, nothing lost
 * ====================================================================== */

static uint64_t rng_next(uint64_t *x)
{
    /* splitmix64: deterministic, seedable, good enough to shuffle. */
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int64_t rng_range(uint64_t *x, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(rng_next(x) % (uint64_t)(hi - lo + 1));
}

struct tally {
    int64_t accrued;
    int64_t committed;
    int64_t discarded;
    int64_t withheld;
    int64_t high;        /* latest heartbeat time seen */
    int64_t first;       /* first heartbeat time */
    int matched;
};

static void check_decision(const struct policy_decision *d,
                           struct tally *t)
{
    int64_t sum = 0;
    int i;

    assert_true(d->accrued_ms >= 0);
    assert_in_range(d->ncommit, 0, POLICY_DAYS);
    assert_in_range(d->ndiscard, 0, POLICY_DAYS);
    assert_in_range(d->nflags, 0, POLICY_MAX_FLAGS);
    assert_in_range(d->state, POLICY_ACTIVE, POLICY_SUSPENDED);
    for (i = 0; i < d->ncommit; i++) {
        assert_true(d->commit[i].ms > 0);
        if (i > 0)
            assert_true(d->commit[i].day > d->commit[i - 1].day);
        sum += d->commit[i].ms;
    }
    assert_int_equal(sum, d->commit_ms);
    sum = 0;
    for (i = 0; i < d->ndiscard; i++)
        sum += d->discard[i].ms;
    assert_int_equal(sum, d->discard_ms);
    sum = 0;
    for (i = 0; i < d->nflags; i++) {
        assert_true(d->flags[i].kind != POLICY_FLAG_NONE);
        sum += d->flags[i].withheld_ms;
    }
    assert_int_equal(sum, d->discard_ms);

    t->accrued += d->accrued_ms;
    t->committed += d->commit_ms;
    t->discarded += d->discard_ms;
    t->withheld += sum;
}

static void random_heartbeat(struct fx *f, uint64_t *x, struct tally *t)
{
    struct policy_heartbeat hb;
    int64_t r = rng_range(x, 0, 99), dt;

    if (r < 6)
        dt = -rng_range(x, 1, 20 * SEC);
    else if (r < 12)
        dt = 0;
    else if (r < 18)
        dt = f->cfg.heartbeat_grace_ms + rng_range(x, -1, 2 * MIN);
    else
        dt = 10 * SEC + rng_range(x, -3 * SEC, 3 * SEC);

    memset(&hb, 0, sizeof(hb));
    hb.page_visible = rng_range(x, 0, 9) > 0;
    hb.window_focused = rng_range(x, 0, 9) > 0;
    hb.input_events = rng_range(x, 0, 3) > 0 ? 0 : (uint32_t)rng_range(x, 1, 9);
    hb.media_playing = rng_range(x, 0, 1);
    hb.playback_rate = (double)rng_range(x, 0, 6) * 0.5;
    hb.media_position_s = (double)rng_range(x, 0, 100000) / 10.0;
    hb.client_time_ms = f->client + rng_range(x, -5 * SEC, 15 * SEC);
    f->client = hb.client_time_ms;

    f->now += dt;
    policy_on_heartbeat(&f->cfg, &f->s, &hb, f->now, f->off, &f->d);
    check_decision(&f->d, t);

    /* Never more than the wall clock moved past the latest heartbeat. */
    if (t->first < 0) {
        t->first = f->now;
        t->high = f->now;
        assert_int_equal(f->d.accrued_ms, 0);
    } else if (f->now <= t->high) {
        assert_int_equal(f->d.accrued_ms, 0);
    } else {
        assert_true(f->d.accrued_ms <= f->now - t->high);
        t->high = f->now;
    }
    if (!t->matched)
        assert_int_equal(f->d.accrued_ms, 0);
}

static void random_event(struct fx *f, uint64_t *x, struct tally *t)
{
    int64_t r = rng_range(x, 0, 99);
    enum policy_outcome o;

    if (r < 70) {
        random_heartbeat(f, x, t);
        return;
    }
    if (r < 82) {
        f->now += rng_range(x, -2 * SEC, 5 * SEC);
        policy_on_tick(&f->cfg, &f->s, f->now, &f->d);
        check_decision(&f->d, t);
        assert_int_equal(f->d.accrued_ms, 0);
        assert_int_equal(f->d.ncommit, 0);
        return;
    }
    if (r < 95) {
        o = (enum policy_outcome)rng_range(x, 0, 9);
        /* Mostly matches, as in life, so there is something to lose. */
        if (rng_range(x, 0, 2) == 0)
            o = POLICY_MATCH;
        f->now += rng_range(x, 0, 3 * SEC);
        policy_on_verdict(&f->cfg, &f->s, o, (int)rng_range(x, 0, 1),
                          f->now, &f->d);
        if (o == POLICY_MATCH)
            t->matched = 1;
    } else if (r < 97) {
        policy_on_challenge_missed(&f->cfg, &f->s, f->now, &f->d);
    } else if (r < 99) {
        policy_set_suspended(&f->s,
                             rng_range(x, 0, 1) ? POLICY_REASON_NONE
                                                : POLICY_REASON_DAILY_CAP,
                             f->now, &f->d);
    } else {
        policy_on_resume(&f->cfg, &f->s, f->now, &f->d);
    }
    check_decision(&f->d, t);
}

static void test_property_never_more_than_wall_clock(void **state)
{
    static const int32_t offsets[] = {0, CN_OFFSET, -5 * 3600, 13 * 3600};
    uint64_t seed;

    (void)state;
    for (seed = 1; seed <= 400; seed++) {
        uint64_t x = seed;
        struct fx f;
        struct tally t;
        int i;

        /* Start near a local midnight now and then, to split days. */
        fx_init_at(&f, T0 + rng_range(&x, 0, DAY), (int)(seed % 5 == 0));
        f.off = offsets[seed % 4];
        if (seed % 3 == 0)
            f.cfg.idle_window_ms = rng_range(&x, 1, 40) * MIN;
        memset(&t, 0, sizeof(t));
        t.first = -1;
        for (i = 0; i < 1500; i++)
            random_event(&f, &x, &t);

        if (t.first >= 0)
            assert_true(t.accrued <= t.high - t.first);
        /* Every accrued ms is committed, discarded or still provisional. */
        assert_int_equal(t.accrued, t.committed + t.discarded
                                    + policy_provisional_ms(&f.s));
        assert_int_equal(t.withheld, t.discarded);
        /* The idle window never holds more bad time than it spans. */
        assert_true(f.s.ring_sum >= 0);
        assert_true(f.s.ring_sum <= POLICY_IDLE_BUCKETS * f.s.bucket_ms);
    }
}

static void test_property_ordered_stream_bounded_by_elapsed(void **state)
{
    uint64_t seed;

    (void)state;
    for (seed = 1000; seed < 1200; seed++) {
        uint64_t x = seed;
        struct fx f;
        int64_t sum = 0;
        int i;

        fx_verified(&f);
        for (i = 0; i < 600; i++) {
            struct policy_heartbeat hb = hb_input();
            int64_t dt = rng_range(&x, 0, 40 * SEC);

            hb.input_events = (uint32_t)rng_range(&x, 0, 1);
            sum += beat(&f, dt, hb);
            assert_true(f.d.accrued_ms <= dt);
            /* Verified throughout, with matches now and then. */
            if (rng_range(&x, 0, 30) == 0)
                verdict(&f, 0, POLICY_MATCH);
        }
        assert_true(sum <= f.now - T0);
    }
}

/* ======================================================================
 * Face verification
 * ====================================================================== */

static void test_match_commits_provisional(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, 5 * MIN, 10 * SEC);
    verdict(&f, 0, POLICY_MATCH);
    assert_int_equal(f.d.commit_ms, 5 * MIN);
    assert_int_equal(f.d.ncommit, 1);
    assert_int_equal(f.d.commit[0].day, policy_day_index(T0, CN_OFFSET));
    assert_int_equal(f.d.commit[0].ms, 5 * MIN);
    assert_int_equal(f.d.nflags, 0);
    assert_int_equal(policy_provisional_ms(&f.s), 0);
    /* Nothing is committed twice. */
    verdict(&f, 0, POLICY_MATCH);
    assert_int_equal(f.d.commit_ms, 0);
}

static void test_match_keeps_session_verified(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, MIN, 10 * SEC);
    verdict(&f, 3 * SEC, POLICY_MATCH);
    /* The interval across the match is credited whole: it is verified
     * on both sides. */
    assert_int_equal(beat(&f, 7 * SEC, hb_input()), 10 * SEC);
}

static void discard_case(enum policy_outcome o, int shared,
                         enum policy_flag want)
{
    struct fx f;

    fx_verified(&f);
    study(&f, 3 * MIN, 10 * SEC);
    f.now += SEC;
    policy_on_verdict(&f.cfg, &f.s, o, shared, f.now, &f.d);
    expect_flag(&f.d, want, 3 * MIN);
    assert_int_equal(f.d.ndiscard, 1);
    assert_int_equal(f.d.discard[0].ms, 3 * MIN);
    assert_int_equal(policy_provisional_ms(&f.s), 0);
    assert_int_equal(f.d.state, POLICY_UNVERIFIED);
    assert_int_equal(f.d.reason, POLICY_REASON_NOT_VERIFIED);
    assert_true(f.d.state_changed);

    /* Unverified until the next MATCH. */
    assert_int_equal(study(&f, MIN, 10 * SEC), 0);
    verdict(&f, 0, POLICY_MATCH);
    assert_int_equal(f.d.commit_ms, 0);
    assert_int_equal(study(&f, MIN, 10 * SEC), MIN);
}

static void test_mismatch_discards_and_flags(void **state)
{
    (void)state;
    discard_case(POLICY_MISMATCH, 0, POLICY_FLAG_FACE_MISMATCH);
}

static void test_shared_face_discards_and_flags(void **state)
{
    (void)state;
    discard_case(POLICY_MISMATCH, 1, POLICY_FLAG_SHARED_FACE);
}

static void test_multiple_faces_discards_and_flags(void **state)
{
    (void)state;
    discard_case(POLICY_MULTIPLE_FACES, 0, POLICY_FLAG_MULTIPLE_FACES);
}

static void test_replayed_discards_and_flags(void **state)
{
    (void)state;
    discard_case(POLICY_REPLAYED, 0, POLICY_FLAG_REPLAYED_IMAGE);
}

static void test_spoof_discards_and_flags(void **state)
{
    (void)state;
    discard_case(POLICY_SPOOF, 0, POLICY_FLAG_PRESENTATION_ATTACK);
}

static void test_shared_face_ignored_with_other_outcomes(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, MIN, 10 * SEC);
    policy_on_verdict(&f.cfg, &f.s, POLICY_MATCH, 1, f.now, &f.d);
    assert_int_equal(f.d.nflags, 0);
    assert_int_equal(f.d.commit_ms, MIN);
    study(&f, MIN, 10 * SEC);
    policy_on_verdict(&f.cfg, &f.s, POLICY_MULTIPLE_FACES, 1, f.now, &f.d);
    expect_flag(&f.d, POLICY_FLAG_MULTIPLE_FACES, MIN);
}

static void test_challenge_missed_discards_and_flags(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, 2 * MIN, 10 * SEC);
    f.now += 30 * SEC;
    policy_on_challenge_missed(&f.cfg, &f.s, f.now, &f.d);
    expect_flag(&f.d, POLICY_FLAG_CHALLENGE_MISSED, 2 * MIN);
    assert_int_equal(f.d.state, POLICY_UNVERIFIED);
    assert_int_equal(study(&f, MIN, 10 * SEC), 0);
}

static void test_discard_before_first_match_flags_nothing_withheld(
    void **state)
{
    struct fx f;

    (void)state;
    fx_init(&f);
    study(&f, MIN, 10 * SEC);
    verdict(&f, 0, POLICY_MISMATCH);
    expect_flag(&f.d, POLICY_FLAG_FACE_MISMATCH, 0);
    assert_int_equal(f.d.ndiscard, 0);
}

static void test_discard_loses_unaccrued_part_of_interval(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    beat(&f, 10 * SEC, hb_input());
    verdict(&f, 5 * SEC, POLICY_MISMATCH);
    expect_flag(&f.d, POLICY_FLAG_FACE_MISMATCH, 10 * SEC);
    verdict(&f, 2 * SEC, POLICY_MATCH);
    /* The 5 s before the mismatch were since the last match: gone. */
    assert_int_equal(beat(&f, 3 * SEC, hb_input()), 3 * SEC);
}

static void test_each_discard_opens_its_own_flag(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, MIN, 10 * SEC);
    verdict(&f, 0, POLICY_MISMATCH);
    expect_flag(&f.d, POLICY_FLAG_FACE_MISMATCH, MIN);
    verdict(&f, 10 * SEC, POLICY_MISMATCH);
    expect_flag(&f.d, POLICY_FLAG_FACE_MISMATCH, 0);
}

static void no_effect_case(enum policy_outcome o)
{
    struct fx f;

    fx_verified(&f);
    study(&f, MIN, 10 * SEC);
    verdict(&f, 0, o);
    assert_int_equal(f.d.nflags, 0);
    assert_int_equal(f.d.ncommit, 0);
    assert_int_equal(f.d.ndiscard, 0);
    assert_false(f.d.state_changed);
    assert_int_equal(f.d.state, POLICY_ACTIVE);
    assert_int_equal(study(&f, MIN, 10 * SEC), MIN);
    assert_int_equal(policy_provisional_ms(&f.s), 2 * MIN);
}

static void test_bad_image_no_effect(void **state)
{
    (void)state;
    no_effect_case(POLICY_BAD_IMAGE);
}

static void test_low_quality_no_effect(void **state)
{
    (void)state;
    no_effect_case(POLICY_LOW_QUALITY);
}

static void test_late_no_effect(void **state)
{
    (void)state;
    no_effect_case(POLICY_LATE);
}

static void test_unknown_outcome_ignored(void **state)
{
    (void)state;
    no_effect_case((enum policy_outcome)42);
}

static void test_late_never_times_out_as_absence(void **state)
{
    struct fx f;
    int i;

    (void)state;
    fx_verified(&f);
    for (i = 0; i < 5; i++)
        verdict(&f, MIN, POLICY_LATE);
    tick(&f, 5 * MIN);
    assert_int_equal(f.d.nflags, 0);
}

/* ---- Absence ----------------------------------------------------------- */

static void test_no_face_stops_accrual_keeps_provisional(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, 2 * MIN, 10 * SEC);
    verdict(&f, 0, POLICY_NO_FACE);
    assert_int_equal(f.d.nflags, 0);
    assert_int_equal(f.d.ndiscard, 0);
    assert_int_equal(f.d.state, POLICY_UNVERIFIED);
    assert_int_equal(f.d.reason, POLICY_REASON_NO_FACE);
    assert_int_equal(study(&f, 30 * SEC, 10 * SEC), 0);
    assert_int_equal(policy_provisional_ms(&f.s), 2 * MIN);
}

static void test_no_face_mid_interval_credits_up_to_it(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    beat(&f, 10 * SEC, hb_input());
    verdict(&f, 4 * SEC, POLICY_NO_FACE);
    assert_int_equal(beat(&f, 6 * SEC, hb_input()), 4 * SEC);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 0);
}

static void test_no_face_then_match_within_absent_after(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, 2 * MIN, 10 * SEC);
    verdict(&f, 0, POLICY_NO_FACE);
    study(&f, 50 * SEC, 10 * SEC);
    tick(&f, 0);
    assert_int_equal(f.d.nflags, 0);
    verdict(&f, 5 * SEC, POLICY_MATCH);
    assert_int_equal(f.d.nflags, 0);
    assert_int_equal(f.d.commit_ms, 2 * MIN);
    assert_int_equal(f.d.state, POLICY_ACTIVE);
    /* Accrual restarts at the match, not back at the last heartbeat. */
    assert_int_equal(beat(&f, 5 * SEC, hb_input()), 5 * SEC);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 10 * SEC);
}

static void test_no_face_exactly_absent_after_no_flag(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, MIN, 10 * SEC);
    verdict(&f, 0, POLICY_NO_FACE);
    tick(&f, MIN);
    assert_int_equal(f.d.nflags, 0);
    tick(&f, 1);
    expect_flag(&f.d, POLICY_FLAG_NO_FACE, MIN);
    assert_int_equal(policy_provisional_ms(&f.s), 0);
}

static void test_no_face_beyond_absent_after_flags_once(void **state)
{
    struct fx f;
    int i;

    (void)state;
    fx_verified(&f);
    study(&f, 3 * MIN, 10 * SEC);
    verdict(&f, 0, POLICY_NO_FACE);
    for (i = 0; i < 60; i++) {
        tick(&f, SEC);
        assert_int_equal(f.d.nflags, 0);
    }
    tick(&f, SEC);
    expect_flag(&f.d, POLICY_FLAG_NO_FACE, 3 * MIN);
    /* The same stretch, however long, and more NO_FACEs: no second one. */
    for (i = 0; i < 600; i++) {
        tick(&f, SEC);
        assert_int_equal(f.d.nflags, 0);
        if (i % 60 == 0) {
            verdict(&f, 0, POLICY_NO_FACE);
            assert_int_equal(f.d.nflags, 0);
        }
    }
    assert_int_equal(f.d.state, POLICY_UNVERIFIED);
    assert_int_equal(f.d.reason, POLICY_REASON_NO_FACE);
}

static void test_no_face_second_verdict_past_absent_after_flags(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, MIN, 10 * SEC);
    verdict(&f, 0, POLICY_NO_FACE);
    /* No tick in between: the verdict itself sees the stretch is long. */
    verdict(&f, MIN + 1, POLICY_NO_FACE);
    expect_flag(&f.d, POLICY_FLAG_NO_FACE, MIN);
}

static void test_no_face_stretch_measured_from_first(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    verdict(&f, 0, POLICY_NO_FACE);
    verdict(&f, 40 * SEC, POLICY_NO_FACE);
    tick(&f, 20 * SEC);
    assert_int_equal(f.d.nflags, 0);
    tick(&f, 1);
    expect_flag(&f.d, POLICY_FLAG_NO_FACE, 0);
}

static void test_no_face_rearmed_after_match(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    verdict(&f, 0, POLICY_NO_FACE);
    tick(&f, 2 * MIN);
    expect_flag(&f.d, POLICY_FLAG_NO_FACE, 0);
    verdict(&f, 0, POLICY_MATCH);
    /* The stretch ended in the two minutes without heartbeats. */
    beat(&f, 0, hb_input());
    assert_int_equal(study(&f, MIN, 10 * SEC), MIN);
    verdict(&f, 0, POLICY_NO_FACE);
    tick(&f, 2 * MIN);
    expect_flag(&f.d, POLICY_FLAG_NO_FACE, MIN);
}

static void test_mismatch_does_not_end_no_face_stretch(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, MIN, 10 * SEC);
    verdict(&f, 0, POLICY_NO_FACE);
    verdict(&f, 30 * SEC, POLICY_MISMATCH);
    expect_flag(&f.d, POLICY_FLAG_FACE_MISMATCH, MIN);
    tick(&f, 31 * SEC);
    expect_flag(&f.d, POLICY_FLAG_NO_FACE, 0);
}

static void test_absent_after_follows_config(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    f.cfg.absent_after_ms = 5 * SEC;
    verdict(&f, 0, POLICY_NO_FACE);
    tick(&f, 5 * SEC);
    assert_int_equal(f.d.nflags, 0);
    tick(&f, 1);
    expect_flag(&f.d, POLICY_FLAG_NO_FACE, 0);
}

static void test_low_quality_repeated_over_absent_after(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, MIN, 10 * SEC);
    verdict(&f, 0, POLICY_LOW_QUALITY);
    /* Crediting goes on while only the images are poor. */
    assert_int_equal(study(&f, 30 * SEC, 10 * SEC), 30 * SEC);
    verdict(&f, 0, POLICY_LOW_QUALITY);
    assert_int_equal(f.d.nflags, 0);
    study(&f, 30 * SEC, 10 * SEC);
    verdict(&f, 0, POLICY_LOW_QUALITY);
    assert_int_equal(f.d.nflags, 0);
    verdict(&f, 1, POLICY_LOW_QUALITY);
    expect_flag(&f.d, POLICY_FLAG_NO_FACE, 2 * MIN);
    assert_int_equal(f.d.state, POLICY_UNVERIFIED);
    assert_int_equal(f.d.reason, POLICY_REASON_NO_FACE);
    assert_int_equal(study(&f, MIN, 10 * SEC), 0);
    verdict(&f, MIN, POLICY_LOW_QUALITY);
    assert_int_equal(f.d.nflags, 0);
}

static void test_low_quality_single_never_times_out(void **state)
{
    struct fx f;
    int i;

    (void)state;
    fx_verified(&f);
    verdict(&f, 0, POLICY_LOW_QUALITY);
    for (i = 0; i < 300; i++) {
        tick(&f, SEC);
        assert_int_equal(f.d.nflags, 0);
    }
}

static void test_low_quality_match_ends_stretch(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    verdict(&f, 0, POLICY_LOW_QUALITY);
    verdict(&f, 50 * SEC, POLICY_MATCH);
    verdict(&f, 50 * SEC, POLICY_LOW_QUALITY);
    assert_int_equal(f.d.nflags, 0);
}

static void test_low_quality_then_no_face_one_stretch(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, MIN, 10 * SEC);
    verdict(&f, 0, POLICY_LOW_QUALITY);
    verdict(&f, 40 * SEC, POLICY_NO_FACE);
    assert_int_equal(f.d.nflags, 0);
    tick(&f, 20 * SEC);
    assert_int_equal(f.d.nflags, 0);
    tick(&f, 1);
    expect_flag(&f.d, POLICY_FLAG_NO_FACE, MIN);
}

static void test_bad_image_repeated_is_absence(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    verdict(&f, 0, POLICY_BAD_IMAGE);
    verdict(&f, 30 * SEC, POLICY_LOW_QUALITY);
    assert_int_equal(f.d.nflags, 0);
    verdict(&f, 30 * SEC + 1, POLICY_BAD_IMAGE);
    expect_flag(&f.d, POLICY_FLAG_NO_FACE, 0);
}

/* ---- Exam mode --------------------------------------------------------- */

static void fx_exam(struct fx *f)
{
    fx_init_at(f, T0, 1);
    beat(f, 0, hb_input());
    verdict(f, 0, POLICY_MATCH);
}

static void test_exam_no_face_flags_immediately(void **state)
{
    struct fx f;

    (void)state;
    fx_exam(&f);
    study(&f, 2 * MIN, 10 * SEC);
    verdict(&f, 0, POLICY_NO_FACE);
    expect_flag(&f.d, POLICY_FLAG_NO_FACE, 2 * MIN);
    assert_int_equal(study(&f, 30 * SEC, 10 * SEC), 0);
}

static void test_exam_no_face_once_per_stretch(void **state)
{
    struct fx f;

    (void)state;
    fx_exam(&f);
    verdict(&f, 0, POLICY_NO_FACE);
    expect_flag(&f.d, POLICY_FLAG_NO_FACE, 0);
    verdict(&f, 10 * SEC, POLICY_NO_FACE);
    assert_int_equal(f.d.nflags, 0);
    tick(&f, 5 * MIN);
    assert_int_equal(f.d.nflags, 0);
    verdict(&f, 0, POLICY_MATCH);
    verdict(&f, 10 * SEC, POLICY_NO_FACE);
    expect_flag(&f.d, POLICY_FLAG_NO_FACE, 0);
}

static void test_exam_mismatch_and_multiple_faces_flag(void **state)
{
    struct fx f;

    (void)state;
    fx_exam(&f);
    study(&f, MIN, 10 * SEC);
    verdict(&f, 0, POLICY_MISMATCH);
    expect_flag(&f.d, POLICY_FLAG_FACE_MISMATCH, MIN);
    verdict(&f, 0, POLICY_MATCH);
    study(&f, MIN, 10 * SEC);
    verdict(&f, 0, POLICY_MULTIPLE_FACES);
    expect_flag(&f.d, POLICY_FLAG_MULTIPLE_FACES, MIN);
}

static void test_exam_low_quality_waits_like_normal(void **state)
{
    struct fx f;

    (void)state;
    fx_exam(&f);
    verdict(&f, 0, POLICY_LOW_QUALITY);
    assert_int_equal(f.d.nflags, 0);
    verdict(&f, 10 * SEC, POLICY_LOW_QUALITY);
    assert_int_equal(f.d.nflags, 0);
}

/* ======================================================================
 * Tick
 * ====================================================================== */

static void test_tick_never_credits(void **state)
{
    struct fx f;
    int i;

    (void)state;
    fx_verified(&f);
    study(&f, MIN, 10 * SEC);
    for (i = 0; i < 120; i++) {
        tick(&f, 500);
        assert_int_equal(f.d.accrued_ms, 0);
        assert_int_equal(f.d.ncommit, 0);
        assert_int_equal(f.d.commit_ms, 0);
    }
    assert_int_equal(policy_provisional_ms(&f.s), MIN);
}

static void test_tick_ends_stretch_after_grace(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    beat(&f, 10 * SEC, hb_input());
    tick(&f, 30 * SEC);
    assert_int_equal(f.d.state, POLICY_ACTIVE);
    assert_false(f.d.state_changed);
    tick(&f, 1);
    assert_int_equal(f.d.state, POLICY_IDLE);
    assert_int_equal(f.d.reason, POLICY_REASON_NO_HEARTBEAT);
    assert_true(f.d.state_changed);
    /* The heartbeat after it starts a new stretch. */
    assert_int_equal(beat(&f, 0, hb_input()), 0);
    assert_int_equal(f.d.state, POLICY_ACTIVE);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 10 * SEC);
}

static void test_tick_ended_stretch_even_within_grace_later(void **state)
{
    struct fx f;
    struct policy_heartbeat hb = hb_input();

    (void)state;
    fx_verified(&f);
    beat(&f, 10 * SEC, hb_input());
    tick(&f, 31 * SEC);
    /* A heartbeat stamped before the tick but processed after it. */
    hb.client_time_ms = f.client + 30 * SEC;
    assert_int_equal(beat_raw(&f, f.now - 2 * SEC, hb), 0);
}

static void test_tick_reports_idle(void **state)
{
    struct fx f;
    int i;

    (void)state;
    fx_verified(&f);
    for (i = 0; i < 11; i++)
        beat(&f, 10 * SEC, hb_quiet());
    tick(&f, 10 * SEC);
    assert_int_equal(f.d.state, POLICY_ACTIVE);
    tick(&f, 1);
    assert_int_equal(f.d.state, POLICY_IDLE);
    assert_int_equal(f.d.reason, POLICY_REASON_IDLE);
    assert_true(f.d.state_changed);
}

static void test_tick_clock_backwards_harmless(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, MIN, 10 * SEC);
    verdict(&f, 0, POLICY_NO_FACE);
    tick(&f, -HOUR);
    assert_int_equal(f.d.nflags, 0);
    assert_int_equal(f.d.accrued_ms, 0);
    assert_int_equal(policy_provisional_ms(&f.s), MIN);
}

/* ======================================================================
 * Idle (course-idling) flag
 * ====================================================================== */

static int count_flag(const struct policy_decision *d, enum policy_flag k)
{
    int i, n = 0;

    for (i = 0; i < d->nflags; i++)
        n += d->flags[i].kind == k;
    return n;
}

/* A session at T0 matched at once, missing (no heartbeats, ticks every
 * second) for missing_ms, then studying with heartbeats every 10 s (the
 * last one shorter) up to T0 + until. Returns idle flags opened. */
static int idle_run(struct fx *f, int64_t missing_ms, int64_t until)
{
    int n = 0;

    fx_init(f);
    verdict(f, 0, POLICY_MATCH);
    while (f->now < T0 + missing_ms) {
        int64_t dt = T0 + missing_ms - f->now < SEC
                         ? T0 + missing_ms - f->now : SEC;

        tick(f, dt);
        n += count_flag(&f->d, POLICY_FLAG_IDLE);
    }
    beat(f, 0, hb_input());
    while (f->now < T0 + until) {
        int64_t dt = T0 + until - f->now < 10 * SEC
                         ? T0 + until - f->now : 10 * SEC;

        beat(f, dt, hb_input());
        n += count_flag(&f->d, POLICY_FLAG_IDLE);
        tick(f, 0);
        n += count_flag(&f->d, POLICY_FLAG_IDLE);
    }
    return n;
}

static void test_idle_flag_exactly_at_share(void **state)
{
    struct fx f;

    (void)state;
    assert_int_equal(idle_run(&f, 15 * MIN, 30 * MIN), 1);
}

static void test_idle_flag_just_under_share(void **state)
{
    struct fx f;

    (void)state;
    assert_int_equal(idle_run(&f, 15 * MIN - 1, 30 * MIN), 0);
    /* And it stays so as the window slides over study. */
    assert_int_equal(idle_run(&f, 15 * MIN - 1, 50 * MIN), 0);
}

static void test_idle_flag_not_before_window(void **state)
{
    struct fx f;
    int i, n = 0;

    (void)state;
    fx_init(&f);
    /* Nothing at all from the start: 100 % idle, but judged only once
     * the session is a window old. */
    for (i = 0; i < 30 * 60 - 1; i++) {
        tick(&f, SEC);
        n += count_flag(&f.d, POLICY_FLAG_IDLE);
    }
    assert_int_equal(n, 0);
    tick(&f, SEC);
    assert_int_equal(count_flag(&f.d, POLICY_FLAG_IDLE), 1);
    assert_int_equal(f.d.flags[0].withheld_ms, 0);
}

static void test_idle_flag_once_per_window(void **state)
{
    struct fx f;
    int64_t first = -1, second = -1;
    int i, n = 0;

    (void)state;
    fx_init(&f);
    for (i = 0; i < 75 * 60; i++) {
        tick(&f, SEC);
        if (count_flag(&f.d, POLICY_FLAG_IDLE)) {
            n++;
            if (first < 0)
                first = f.now;
            else if (second < 0)
                second = f.now;
        }
    }
    assert_int_equal(n, 2);
    assert_int_equal(first, T0 + 30 * MIN);
    assert_int_equal(second, T0 + 60 * MIN);
}

static void test_idle_flag_hidden_page_counts(void **state)
{
    struct fx f;
    int i, n = 0;

    (void)state;
    fx_verified(&f);
    /* Heartbeats arrive, the course plays in a hidden tab. */
    for (i = 0; i < 180; i++) {
        beat(&f, 10 * SEC, hb_hidden());
        n += count_flag(&f.d, POLICY_FLAG_IDLE);
    }
    assert_int_equal(n, 1);
}

static void test_idle_flag_unverified_counts(void **state)
{
    struct fx f;
    int i, n = 0;

    (void)state;
    fx_init(&f);
    /* Busy learner, never matched: not creditable, counts as idling. */
    for (i = 0; i <= 180; i++) {
        beat(&f, i ? 10 * SEC : 0, hb_input());
        n += count_flag(&f.d, POLICY_FLAG_IDLE);
    }
    assert_int_equal(n, 1);
}

static void test_idle_flag_no_input_counts(void **state)
{
    struct fx f;
    int i, n = 0;

    (void)state;
    fx_verified(&f);
    for (i = 0; i < 180; i++) {
        beat(&f, 10 * SEC, hb_quiet());
        n += count_flag(&f.d, POLICY_FLAG_IDLE);
    }
    /* 2 minutes of 30 credited: idle well past half. */
    assert_int_equal(n, 1);
}

static void test_idle_flag_studying_never(void **state)
{
    struct fx f;
    int i;

    (void)state;
    fx_verified(&f);
    for (i = 0; i < 6 * 360; i++) {
        beat(&f, 10 * SEC, hb_input());
        assert_int_equal(count_flag(&f.d, POLICY_FLAG_IDLE), 0);
        if (i % 30 == 0)
            verdict(&f, 0, POLICY_MATCH);
    }
}

static void test_idle_flag_old_idling_slides_out(void **state)
{
    struct fx f;
    int n;

    (void)state;
    /* 20 min missing at the start, flagged at 30 min; then the window
     * fills with study and no second flag comes. */
    n = idle_run(&f, 20 * MIN, 3 * HOUR);
    assert_int_equal(n, 1);
}

static void test_idle_flag_suspended_attentive_not_idle(void **state)
{
    struct fx f;
    int i, n = 0;

    (void)state;
    fx_verified(&f);
    policy_set_suspended(&f.s, POLICY_REASON_DAILY_CAP, f.now, &f.d);
    for (i = 0; i < 360; i++) {
        assert_int_equal(beat(&f, 10 * SEC, hb_input()), 0);
        n += count_flag(&f.d, POLICY_FLAG_IDLE);
    }
    assert_int_equal(n, 0);
}

static void test_idle_flag_disabled_by_zero_window(void **state)
{
    struct fx f;
    int i, n = 0;

    (void)state;
    fx_init(&f);
    f.cfg.idle_window_ms = 0;
    for (i = 0; i < 3 * 3600; i++) {
        tick(&f, SEC);
        n += count_flag(&f.d, POLICY_FLAG_IDLE);
    }
    assert_int_equal(n, 0);
}

static void test_idle_share_follows_config(void **state)
{
    struct fx f;

    (void)state;
    fx_init(&f);
    f.cfg.idle_share = 0.75;
    verdict(&f, 0, POLICY_MATCH);
    while (f.now < T0 + 20 * MIN)
        tick(&f, SEC);
    beat(&f, 0, hb_input());
    while (f.now < T0 + 30 * MIN)
        beat(&f, 10 * SEC, hb_input());
    /* 20 of 30 minutes is under 0.75. */
    assert_int_equal(count_flag(&f.d, POLICY_FLAG_IDLE), 0);
}

static void test_idle_window_change_restarts_window(void **state)
{
    struct fx f;
    int i, n = 0;

    (void)state;
    fx_init(&f);
    for (i = 0; i < 20 * 60; i++)
        tick(&f, SEC);
    /* SIGHUP: a 10-minute window; judged 10 minutes from the change. */
    f.cfg.idle_window_ms = 10 * MIN;
    for (i = 0; i < 10 * 60 - 1; i++) {
        tick(&f, SEC);
        n += count_flag(&f.d, POLICY_FLAG_IDLE);
    }
    assert_int_equal(n, 0);
    tick(&f, SEC);
    assert_int_equal(count_flag(&f.d, POLICY_FLAG_IDLE), 1);
}

static void test_idle_and_no_face_flags_together(void **state)
{
    struct fx f;
    int i, face = 0, idle = 0;

    (void)state;
    fx_init(&f);
    verdict(&f, 0, POLICY_MATCH);
    for (i = 0; i < 30 * 60 - 30; i++)
        tick(&f, SEC);
    verdict(&f, 0, POLICY_NO_FACE);
    for (i = 0; i < 61; i++) {
        tick(&f, SEC);
        face += count_flag(&f.d, POLICY_FLAG_NO_FACE);
        idle += count_flag(&f.d, POLICY_FLAG_IDLE);
    }
    assert_int_equal(face, 1);
    assert_int_equal(idle, 1);
}

/* ======================================================================
 * States and reasons
 * ====================================================================== */

static void test_state_initial_unverified(void **state)
{
    struct fx f;

    (void)state;
    fx_init(&f);
    assert_int_equal(policy_state(&f.s), POLICY_UNVERIFIED);
    assert_int_equal(policy_reason(&f.s), POLICY_REASON_NOT_VERIFIED);
    beat(&f, 0, hb_input());
    assert_int_equal(f.d.state, POLICY_UNVERIFIED);
    assert_false(f.d.state_changed);
}

static void test_state_active_after_match(void **state)
{
    struct fx f;

    (void)state;
    fx_init(&f);
    beat(&f, 0, hb_input());
    verdict(&f, 0, POLICY_MATCH);
    assert_int_equal(f.d.state, POLICY_ACTIVE);
    assert_int_equal(f.d.reason, POLICY_REASON_NONE);
    assert_true(f.d.state_changed);
    beat(&f, 10 * SEC, hb_input());
    assert_false(f.d.state_changed);
}

static void test_state_match_before_any_heartbeat(void **state)
{
    struct fx f;

    (void)state;
    fx_init(&f);
    verdict(&f, 0, POLICY_MATCH);
    assert_int_equal(f.d.state, POLICY_IDLE);
    assert_int_equal(f.d.reason, POLICY_REASON_NO_HEARTBEAT);
}

static void test_state_hidden_unfocused_idle(void **state)
{
    struct fx f;
    int i;

    (void)state;
    fx_verified(&f);
    beat(&f, 10 * SEC, hb_hidden());
    assert_int_equal(f.d.state, POLICY_IDLE);
    assert_int_equal(f.d.reason, POLICY_REASON_HIDDEN);
    assert_true(f.d.state_changed);
    beat(&f, 10 * SEC, hb_unfocused());
    assert_int_equal(f.d.state, POLICY_IDLE);
    assert_int_equal(f.d.reason, POLICY_REASON_UNFOCUSED);
    assert_true(f.d.state_changed);
    /* Back: ACTIVE at once, though this interval credits nothing. */
    beat(&f, 10 * SEC, hb_input());
    assert_int_equal(f.d.state, POLICY_ACTIVE);
    assert_true(f.d.state_changed);
    for (i = 0; i < 13; i++)
        beat(&f, 10 * SEC, hb_quiet());
    assert_int_equal(f.d.state, POLICY_IDLE);
    assert_int_equal(f.d.reason, POLICY_REASON_IDLE);
}

static void test_state_hidden_wins_over_unfocused(void **state)
{
    struct fx f;
    struct policy_heartbeat hb = hb_hidden();

    (void)state;
    fx_verified(&f);
    hb.window_focused = 0;
    beat(&f, 10 * SEC, hb);
    assert_int_equal(f.d.reason, POLICY_REASON_HIDDEN);
}

static void test_state_no_face_reason(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    verdict(&f, 0, POLICY_NO_FACE);
    assert_int_equal(f.d.state, POLICY_UNVERIFIED);
    assert_int_equal(f.d.reason, POLICY_REASON_NO_FACE);
    assert_true(f.d.state_changed);
    verdict(&f, 10 * SEC, POLICY_NO_FACE);
    assert_false(f.d.state_changed);
    verdict(&f, 10 * SEC, POLICY_MATCH);
    assert_int_equal(f.d.state, POLICY_ACTIVE);
}

static void test_state_unverified_wins_over_idle(void **state)
{
    struct fx f;

    (void)state;
    fx_init(&f);
    beat(&f, 0, hb_hidden());
    assert_int_equal(f.d.state, POLICY_UNVERIFIED);
    assert_int_equal(f.d.reason, POLICY_REASON_NOT_VERIFIED);
}

static void test_suspended_state_and_no_accrual(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, MIN, 10 * SEC);
    policy_set_suspended(&f.s, POLICY_REASON_DAILY_CAP, f.now, &f.d);
    assert_int_equal(f.d.state, POLICY_SUSPENDED);
    assert_int_equal(f.d.reason, POLICY_REASON_DAILY_CAP);
    assert_true(f.d.state_changed);
    assert_int_equal(study(&f, MIN, 10 * SEC), 0);
    assert_int_equal(f.d.state, POLICY_SUSPENDED);
    /* Verdicts still commit what was provisional before the pause. */
    verdict(&f, 0, POLICY_MATCH);
    assert_int_equal(f.d.commit_ms, MIN);
    assert_int_equal(f.d.state, POLICY_SUSPENDED);
}

static void test_suspended_lifted(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    policy_set_suspended(&f.s, POLICY_REASON_PAUSED, f.now, &f.d);
    assert_int_equal(f.d.reason, POLICY_REASON_PAUSED);
    policy_set_suspended(&f.s, POLICY_REASON_PAUSED, f.now, &f.d);
    assert_false(f.d.state_changed);
    policy_set_suspended(&f.s, POLICY_REASON_NONE, f.now, &f.d);
    assert_int_equal(f.d.state, POLICY_ACTIVE);
    assert_true(f.d.state_changed);
    assert_int_equal(beat(&f, 10 * SEC, hb_input()), 10 * SEC);
}

static void test_suspended_wins_over_everything(void **state)
{
    struct fx f;

    (void)state;
    fx_init(&f);
    verdict(&f, 0, POLICY_NO_FACE);
    policy_set_suspended(&f.s, POLICY_REASON_DAILY_CAP, f.now, &f.d);
    assert_int_equal(f.d.state, POLICY_SUSPENDED);
    beat(&f, 0, hb_hidden());
    assert_int_equal(f.d.state, POLICY_SUSPENDED);
    assert_int_equal(f.d.reason, POLICY_REASON_DAILY_CAP);
}

static void test_suspended_discard_still_flags(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, MIN, 10 * SEC);
    policy_set_suspended(&f.s, POLICY_REASON_PAUSED, f.now, &f.d);
    verdict(&f, 0, POLICY_REPLAYED);
    expect_flag(&f.d, POLICY_FLAG_REPLAYED_IMAGE, MIN);
}

static void test_resume_needs_fresh_match_keeps_provisional(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, 2 * MIN, 10 * SEC);
    f.now += MIN;
    policy_on_resume(&f.cfg, &f.s, f.now, &f.d);
    assert_int_equal(f.d.state, POLICY_UNVERIFIED);
    assert_int_equal(f.d.reason, POLICY_REASON_NOT_VERIFIED);
    assert_true(f.d.state_changed);
    assert_int_equal(study(&f, MIN, 10 * SEC), 0);
    verdict(&f, 0, POLICY_MATCH);
    assert_int_equal(f.d.commit_ms, 2 * MIN);
    assert_int_equal(study(&f, MIN, 10 * SEC), MIN);
}

static void test_resume_counts_as_input(void **state)
{
    struct fx f;
    int64_t sum = 0;
    int i;

    (void)state;
    fx_verified(&f);
    f.now += 10 * MIN;
    policy_on_resume(&f.cfg, &f.s, f.now, &f.d);
    beat(&f, 0, hb_quiet());
    verdict(&f, 0, POLICY_MATCH);
    for (i = 0; i < 15; i++)
        sum += beat(&f, 10 * SEC, hb_quiet());
    assert_int_equal(sum, 2 * MIN);
}

static void test_resume_then_mismatch_discards_old(void **state)
{
    struct fx f;

    (void)state;
    fx_verified(&f);
    study(&f, 2 * MIN, 10 * SEC);
    policy_on_resume(&f.cfg, &f.s, f.now + SEC, &f.d);
    verdict(&f, 2 * SEC, POLICY_MISMATCH);
    expect_flag(&f.d, POLICY_FLAG_FACE_MISMATCH, 2 * MIN);
}

/* ======================================================================
 * Days and the midnight split
 * ====================================================================== */

static void test_day_index_utc(void **state)
{
    (void)state;
    assert_int_equal(policy_day_index(0, 0), 0);
    assert_int_equal(policy_day_index(DAY - 1, 0), 0);
    assert_int_equal(policy_day_index(DAY, 0), 1);
    /* 2024-05-01 is day 19844. */
    assert_int_equal(policy_day_index(T0, 0), 19844);
}

static void test_day_index_shanghai(void **state)
{
    int64_t local_midnight = 19844 * DAY + 16 * HOUR;

    (void)state;
    /* 16:00 UTC is midnight in Shanghai. */
    assert_int_equal(policy_day_index(local_midnight - 1, CN_OFFSET),
                     19844);
    assert_int_equal(policy_day_index(local_midnight, CN_OFFSET), 19845);
    assert_int_equal(policy_day_index(T0, CN_OFFSET), 19844);
}

static void test_day_index_negative_offset_and_before_epoch(void **state)
{
    (void)state;
    assert_int_equal(policy_day_index(0, -5 * 3600), -1);
    assert_int_equal(policy_day_index(-1, 0), -1);
    assert_int_equal(policy_day_index(-DAY, 0), -1);
    assert_int_equal(policy_day_index(-DAY - 1, 0), -2);
    assert_int_equal(policy_day_index(5 * HOUR, -5 * 3600), 0);
}

static void test_day_start_ms(void **state)
{
    (void)state;
    assert_int_equal(policy_day_start_ms(T0, 0), 19844 * DAY);
    assert_int_equal(policy_day_start_ms(T0, CN_OFFSET),
                     19843 * DAY + 16 * HOUR);
    assert_int_equal(policy_day_start_ms(19843 * DAY + 16 * HOUR,
                                         CN_OFFSET),
                     19843 * DAY + 16 * HOUR);
    assert_int_equal(policy_day_start_ms(0, -5 * 3600), -DAY + 5 * HOUR);
}

static void expect_date(int64_t day, const char *want)
{
    char buf[16];

    assert_int_equal(policy_day_format(day, buf, sizeof(buf)), POLICY_OK);
    assert_string_equal(buf, want);
}

static void test_day_format(void **state)
{
    char buf[16];

    (void)state;
    expect_date(0, "1970-01-01");
    expect_date(19844, "2024-05-01");
    expect_date(19782, "2024-02-29");
    expect_date(11017, "2000-03-01");
    expect_date(-1, "1969-12-31");
    expect_date(policy_day_index(19844 * DAY + 16 * HOUR, CN_OFFSET),
                "2024-05-02");
    assert_int_equal(policy_day_format(0, buf, 10), POLICY_ERR);
    assert_int_equal(policy_day_format(0, buf, 11), POLICY_OK);
    assert_int_equal(policy_day_format(3000000, buf, sizeof(buf)),
                     POLICY_ERR);
}

/* Matched 2 min 3 s before midnight, 4 min of study in 10 s steps, then
 * a MATCH whose commit is left in f->d. */
static void study_across(struct fx *f, int64_t midnight, int32_t off)
{
    fx_init_at(f, midnight - 2 * MIN - 3 * SEC, 0);
    f->off = off;
    beat(f, 0, hb_input());
    verdict(f, 0, POLICY_MATCH);
    study(f, 4 * MIN, 10 * SEC);
    verdict(f, 0, POLICY_MATCH);
}

static void test_midnight_split_shanghai(void **state)
{
    struct fx f;
    int64_t m = 19844 * DAY + 16 * HOUR;

    (void)state;
    study_across(&f, m, CN_OFFSET);
    assert_int_equal(f.d.commit_ms, 4 * MIN);
    assert_int_equal(f.d.ncommit, 2);
    assert_int_equal(f.d.commit[0].day, 19844);
    assert_int_equal(f.d.commit[0].ms, 2 * MIN + 3 * SEC);
    assert_int_equal(f.d.commit[1].day, 19845);
    assert_int_equal(f.d.commit[1].ms, 2 * MIN - 3 * SEC);
}

static void test_midnight_split_utc(void **state)
{
    struct fx f;
    int64_t m = 19845 * DAY;

    (void)state;
    study_across(&f, m, 0);
    assert_int_equal(f.d.ncommit, 2);
    assert_int_equal(f.d.commit[0].day, 19844);
    assert_int_equal(f.d.commit[0].ms, 2 * MIN + 3 * SEC);
    assert_int_equal(f.d.commit[1].day, 19845);
    assert_int_equal(f.d.commit[1].ms, 2 * MIN - 3 * SEC);
}

static void test_midnight_same_instant_other_zone_one_day(void **state)
{
    struct fx f;

    (void)state;
    /* UTC midnight is 08:00 in Shanghai: no split there. */
    study_across(&f, 19845 * DAY, CN_OFFSET);
    assert_int_equal(f.d.ncommit, 1);
    assert_int_equal(f.d.commit[0].day, 19845);
}

static void test_interval_ending_at_midnight_is_previous_day(void **state)
{
    struct fx f;
    int64_t m = 19845 * DAY;

    (void)state;
    fx_init_at(&f, m - MIN, 0);
    f.off = 0;
    beat(&f, 0, hb_input());
    verdict(&f, 0, POLICY_MATCH);
    study(&f, MIN, 10 * SEC);
    assert_int_equal(f.now, m);
    verdict(&f, 0, POLICY_MATCH);
    assert_int_equal(f.d.ncommit, 1);
    assert_int_equal(f.d.commit[0].day, 19844);
    assert_int_equal(f.d.commit[0].ms, MIN);
}

static void test_midnight_split_discard_per_day(void **state)
{
    struct fx f;
    int64_t m = 19844 * DAY + 16 * HOUR;

    (void)state;
    fx_init_at(&f, m - MIN, 0);
    beat(&f, 0, hb_input());
    verdict(&f, 0, POLICY_MATCH);
    study(&f, 2 * MIN, 10 * SEC);
    verdict(&f, 0, POLICY_MULTIPLE_FACES);
    expect_flag(&f.d, POLICY_FLAG_MULTIPLE_FACES, 2 * MIN);
    assert_int_equal(f.d.ndiscard, 2);
    assert_int_equal(f.d.discard[0].ms, MIN);
    assert_int_equal(f.d.discard[1].ms, MIN);
}

static void test_provisional_over_many_days_folds(void **state)
{
    struct fx f;
    int64_t m = 19845 * DAY, total;

    (void)state;
    /* Unmatched (but verified) across four midnights: the oldest days
     * fold forward, nothing is lost or invented. */
    fx_init_at(&f, m - HOUR, 0);
    f.off = 0;
    beat(&f, 0, hb_input());
    verdict(&f, 0, POLICY_MATCH);
    total = study(&f, 3 * DAY + 2 * HOUR, 30 * SEC);
    assert_int_equal(total, 3 * DAY + 2 * HOUR);
    verdict(&f, 0, POLICY_MATCH);
    assert_int_equal(f.d.commit_ms, total);
    assert_int_equal(f.d.ncommit, POLICY_DAYS);
    assert_int_equal(f.d.commit[0].day, 19846);
    assert_int_equal(f.d.commit[0].ms, HOUR + 2 * DAY);
    assert_int_equal(f.d.commit[1].day, 19847);
    assert_int_equal(f.d.commit[1].ms, DAY);
    assert_int_equal(f.d.commit[2].day, 19848);
    assert_int_equal(f.d.commit[2].ms, HOUR);
}

static void test_offset_change_keeps_days_ordered(void **state)
{
    struct fx f;

    (void)state;
    /* A zone whose offset drops an hour (DST ending) mid-stretch. */
    fx_init_at(&f, T0, 0);
    f.off = 3600;
    beat(&f, 0, hb_input());
    verdict(&f, 0, POLICY_MATCH);
    study(&f, MIN, 10 * SEC);
    f.off = 0;
    study(&f, MIN, 10 * SEC);
    verdict(&f, 0, POLICY_MATCH);
    assert_int_equal(f.d.ncommit, 1);
    assert_int_equal(f.d.commit_ms, 2 * MIN);
}

/* ======================================================================
 * Daily cap and review
 * ====================================================================== */

static void test_cap_under(void **state)
{
    int64_t excess = -1;

    (void)state;
    assert_int_equal(policy_apply_cap(HOUR, 10 * MIN, 8 * HOUR, &excess),
                     10 * MIN);
    assert_int_equal(excess, 0);
}

static void test_cap_exactly_at_cap(void **state)
{
    int64_t excess = -1;

    (void)state;
    assert_int_equal(policy_apply_cap(7 * HOUR, HOUR, 8 * HOUR, &excess),
                     HOUR);
    assert_int_equal(excess, 0);
}

static void test_cap_one_ms_over(void **state)
{
    int64_t excess = -1;

    (void)state;
    assert_int_equal(policy_apply_cap(7 * HOUR, HOUR + 1, 8 * HOUR,
                                      &excess),
                     HOUR);
    assert_int_equal(excess, 1);
}

static void test_cap_already_full_or_over(void **state)
{
    int64_t excess = -1;

    (void)state;
    assert_int_equal(policy_apply_cap(8 * HOUR, MIN, 8 * HOUR, &excess), 0);
    assert_int_equal(excess, MIN);
    assert_int_equal(policy_apply_cap(9 * HOUR, MIN, 8 * HOUR, &excess), 0);
    assert_int_equal(excess, MIN);
}

static void test_cap_edge_arguments(void **state)
{
    int64_t excess = -1;

    (void)state;
    assert_int_equal(policy_apply_cap(0, 0, 8 * HOUR, &excess), 0);
    assert_int_equal(excess, 0);
    assert_int_equal(policy_apply_cap(0, -5, 8 * HOUR, &excess), 0);
    assert_int_equal(excess, 0);
    /* Negative cap: none. Zero cap: nothing credited. */
    assert_int_equal(policy_apply_cap(100 * HOUR, HOUR, -1, &excess), HOUR);
    assert_int_equal(excess, 0);
    assert_int_equal(policy_apply_cap(0, HOUR, 0, &excess), 0);
    assert_int_equal(excess, HOUR);
    assert_int_equal(policy_apply_cap(-HOUR, 9 * HOUR, 8 * HOUR, NULL),
                     8 * HOUR);
}

static void test_cap_per_commit_part(void **state)
{
    struct fx f;
    int64_t day0 = 8 * HOUR - 30 * SEC, day1 = 0, c0, c1;
    int64_t m = 19844 * DAY + 16 * HOUR;

    (void)state;
    /* A split commit is capped day by day: the old day is nearly full,
     * the new one empty. */
    study_across(&f, m, CN_OFFSET);
    c0 = policy_apply_cap(day0, f.d.commit[0].ms, f.cfg.daily_cap_ms, NULL);
    c1 = policy_apply_cap(day1, f.d.commit[1].ms, f.cfg.daily_cap_ms, NULL);
    assert_int_equal(c0, 30 * SEC);
    assert_int_equal(c1, 2 * MIN - 3 * SEC);
}

static void test_review_credit_within_cap(void **state)
{
    (void)state;
    assert_int_equal(policy_review_credit(3 * MIN, HOUR, 8 * HOUR), 3 * MIN);
    assert_int_equal(policy_review_credit(3 * MIN, 8 * HOUR - MIN,
                                          8 * HOUR),
                     MIN);
    assert_int_equal(policy_review_credit(3 * MIN, 8 * HOUR, 8 * HOUR), 0);
    assert_int_equal(policy_review_credit(0, 0, 8 * HOUR), 0);
}

/* ======================================================================
 * Credit hours
 * ====================================================================== */

static void test_credit_hours_2700s_is_one(void **state)
{
    (void)state;
    assert_int_equal(policy_credit_hours_centi(2700, 45), 100);
}

static void test_credit_hours_round_down(void **state)
{
    (void)state;
    assert_int_equal(policy_credit_hours_centi(2699, 45), 99);
    assert_int_equal(policy_credit_hours_centi(27, 45), 1);
    assert_int_equal(policy_credit_hours_centi(26, 45), 0);
    assert_int_equal(policy_credit_hours_centi(8 * 3600, 45), 1066);
    assert_int_equal(policy_credit_hours_centi(48 * 2700, 45), 4800);
    assert_int_equal(policy_credit_hours_centi(48 * 2700 - 1, 45), 4799);
}

static void test_credit_hours_other_minutes(void **state)
{
    (void)state;
    assert_int_equal(policy_credit_hours_centi(3600, 60), 100);
    assert_int_equal(policy_credit_hours_centi(3599, 60), 99);
    assert_int_equal(policy_credit_hours_centi(3000, 50), 100);
    assert_int_equal(policy_credit_hours_centi(1000, 1), 1666);
}

static void test_credit_hours_degenerate(void **state)
{
    (void)state;
    assert_int_equal(policy_credit_hours_centi(0, 45), 0);
    assert_int_equal(policy_credit_hours_centi(-5, 45), 0);
    assert_int_equal(policy_credit_hours_centi(2700, 0), 0);
    assert_int_equal(policy_credit_hours_centi(2700, -45), 0);
    /* A century of seconds does not overflow. */
    assert_int_equal(policy_credit_hours_centi(3153600000LL, 45),
                     116800000LL);
}

static void test_online_cap(void **state)
{
    (void)state;
    assert_int_equal(policy_online_cap_centi(12, 0.4), 480);
    assert_int_equal(policy_online_cap_centi(48, 0.4), 1920);
    assert_int_equal(policy_online_cap_centi(20, 0.4), 800);
    assert_int_equal(policy_online_cap_centi(72, 0.4), 2880);
    assert_int_equal(policy_online_cap_centi(24, 0.4), 960);
    assert_int_equal(policy_online_cap_centi(12.5, 0.333), 416);
    assert_int_equal(policy_online_cap_centi(0, 0.4), 0);
    assert_int_equal(policy_online_cap_centi(12, 0), 0);
    assert_int_equal(policy_online_cap_centi(NAN, 0.4), 0);
    assert_int_equal(policy_online_cap_centi(12, 1.0), 1200);
}

static void test_online_credit_clipped(void **state)
{
    (void)state;
    assert_int_equal(policy_online_credit_centi(300, 480), 300);
    assert_int_equal(policy_online_credit_centi(480, 480), 480);
    assert_int_equal(policy_online_credit_centi(1066, 480), 480);
    assert_int_equal(policy_online_credit_centi(-1, 480), 0);
}

/* ======================================================================
 * Names and numbers
 * ====================================================================== */

static void test_flag_names(void **state)
{
    (void)state;
    assert_string_equal(policy_flag_name(POLICY_FLAG_FACE_MISMATCH),
                        "face_mismatch");
    assert_string_equal(policy_flag_name(POLICY_FLAG_MULTIPLE_FACES),
                        "multiple_faces");
    assert_string_equal(policy_flag_name(POLICY_FLAG_NO_FACE), "no_face");
    assert_string_equal(policy_flag_name(POLICY_FLAG_REPLAYED_IMAGE),
                        "replayed_image");
    assert_string_equal(policy_flag_name(POLICY_FLAG_SHARED_FACE),
                        "shared_face");
    assert_string_equal(policy_flag_name(POLICY_FLAG_CONCURRENT_SESSION),
                        "concurrent_session");
    assert_string_equal(policy_flag_name(POLICY_FLAG_CHALLENGE_MISSED),
                        "challenge_missed");
    assert_string_equal(policy_flag_name(POLICY_FLAG_IDLE), "idle");
    assert_string_equal(policy_flag_name(POLICY_FLAG_PRESENTATION_ATTACK),
                        "presentation_attack");
    assert_string_equal(policy_flag_name(POLICY_FLAG_NONE), "");
    assert_string_equal(policy_flag_name((enum policy_flag)99), "");
}

static void test_reason_names(void **state)
{
    (void)state;
    assert_string_equal(policy_reason_name(POLICY_REASON_NONE), "");
    assert_string_equal(policy_reason_name(POLICY_REASON_NOT_VERIFIED),
                        "not_verified");
    assert_string_equal(policy_reason_name(POLICY_REASON_NO_FACE),
                        "no_face");
    assert_string_equal(policy_reason_name(POLICY_REASON_NO_HEARTBEAT),
                        "no_heartbeat");
    assert_string_equal(policy_reason_name(POLICY_REASON_HIDDEN), "hidden");
    assert_string_equal(policy_reason_name(POLICY_REASON_UNFOCUSED),
                        "unfocused");
    assert_string_equal(policy_reason_name(POLICY_REASON_IDLE), "idle");
    assert_string_equal(policy_reason_name(POLICY_REASON_MEDIA_RATE),
                        "media_rate");
    assert_string_equal(policy_reason_name(POLICY_REASON_DAILY_CAP),
                        "daily_cap");
    assert_string_equal(policy_reason_name(POLICY_REASON_PAUSED), "paused");
}

static void test_state_and_outcome_names(void **state)
{
    (void)state;
    assert_string_equal(policy_state_name(POLICY_ACTIVE), "ACTIVE");
    assert_string_equal(policy_state_name(POLICY_IDLE), "IDLE");
    assert_string_equal(policy_state_name(POLICY_UNVERIFIED), "UNVERIFIED");
    assert_string_equal(policy_state_name(POLICY_SUSPENDED), "SUSPENDED");
    assert_string_equal(policy_outcome_name(POLICY_MATCH), "MATCH");
    assert_string_equal(policy_outcome_name(POLICY_LOW_QUALITY),
                        "LOW_QUALITY");
    assert_string_equal(policy_outcome_name((enum policy_outcome)77),
                        "UNKNOWN");
}

static void test_numbers_match_protocol(void **state)
{
    (void)state;
    /* proto/proctor.proto: Outcome and State. */
    assert_int_equal(POLICY_MATCH, 0);
    assert_int_equal(POLICY_MISMATCH, 1);
    assert_int_equal(POLICY_NO_FACE, 2);
    assert_int_equal(POLICY_MULTIPLE_FACES, 3);
    assert_int_equal(POLICY_BAD_IMAGE, 4);
    assert_int_equal(POLICY_LATE, 5);
    assert_int_equal(POLICY_REPLAYED, 6);
    assert_int_equal(POLICY_SPOOF, 7);
    assert_int_equal(POLICY_LOW_QUALITY, 8);
    assert_int_equal(POLICY_ACTIVE, 0);
    assert_int_equal(POLICY_IDLE, 1);
    assert_int_equal(POLICY_UNVERIFIED, 2);
    assert_int_equal(POLICY_SUSPENDED, 3);
}

static void test_session_is_small(void **state)
{
    (void)state;
    /* Tens of thousands of sessions: keep it well under a kilobyte. */
    assert_true(sizeof(struct policy_session) < 512);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_heartbeat_accrues_nothing),
        cmocka_unit_test(test_before_first_match_nothing_accrues),
        cmocka_unit_test(test_interval_accrues_after_match),
        cmocka_unit_test(test_match_mid_interval_credits_from_match),
        cmocka_unit_test(test_uses_server_time_not_client_time),
        cmocka_unit_test(test_client_clock_skew_does_not_matter),
        cmocka_unit_test(test_client_time_backwards_accrues_nothing),
        cmocka_unit_test(test_client_time_equal_or_unset_counts),
        cmocka_unit_test(test_gap_exactly_grace_accrues),
        cmocka_unit_test(test_gap_grace_plus_one_accrues_nothing),
        cmocka_unit_test(test_long_gap_starts_new_stretch),
        cmocka_unit_test(test_grace_follows_config),
        cmocka_unit_test(test_hidden_accrues_nothing),
        cmocka_unit_test(test_unfocused_accrues_nothing),
        cmocka_unit_test(test_hidden_at_interval_start_accrues_nothing),
        cmocka_unit_test(test_unfocused_at_interval_start_accrues_nothing),
        cmocka_unit_test(test_session_start_counts_as_input),
        cmocka_unit_test(test_idle_exactly_idle_after_accrues),
        cmocka_unit_test(test_idle_one_ms_past_stops_at_idle_after),
        cmocka_unit_test(test_input_resumes_accrual),
        cmocka_unit_test(test_idle_after_follows_config),
        cmocka_unit_test(test_media_normal_rate_counts),
        cmocka_unit_test(test_media_rate_two_counts),
        cmocka_unit_test(test_media_rate_above_two_never_counts),
        cmocka_unit_test(test_media_rate_above_two_at_either_end),
        cmocka_unit_test(test_media_rate_change_in_range_counts),
        cmocka_unit_test(test_media_zero_or_nan_rate_never_counts),
        cmocka_unit_test(test_media_seek_forward_never_counts),
        cmocka_unit_test(test_media_seek_backward_never_counts),
        cmocka_unit_test(test_media_stuck_while_playing_never_counts),
        cmocka_unit_test(test_media_tolerance_edges),
        cmocka_unit_test(test_media_not_playing_is_not_activity),
        cmocka_unit_test(test_media_stop_keeps_idle_after_grace),
        cmocka_unit_test(test_media_in_hidden_page_is_not_activity),
        cmocka_unit_test(test_now_backwards_accrues_nothing),
        cmocka_unit_test(test_duplicate_now_accrues_nothing),
        cmocka_unit_test(test_duplicate_call_is_idempotent),
        cmocka_unit_test(test_stale_hidden_heartbeat_sticks),
        cmocka_unit_test(test_same_ms_heartbeats_cannot_undo_hidden),
        cmocka_unit_test(test_stale_heartbeat_input_counts),
        cmocka_unit_test(test_clock_step_back_credits_nothing_twice),
        cmocka_unit_test(test_property_never_more_than_wall_clock),
        cmocka_unit_test(test_property_ordered_stream_bounded_by_elapsed),
        cmocka_unit_test(test_match_commits_provisional),
        cmocka_unit_test(test_match_keeps_session_verified),
        cmocka_unit_test(test_mismatch_discards_and_flags),
        cmocka_unit_test(test_shared_face_discards_and_flags),
        cmocka_unit_test(test_multiple_faces_discards_and_flags),
        cmocka_unit_test(test_replayed_discards_and_flags),
        cmocka_unit_test(test_spoof_discards_and_flags),
        cmocka_unit_test(test_shared_face_ignored_with_other_outcomes),
        cmocka_unit_test(test_challenge_missed_discards_and_flags),
        cmocka_unit_test(
            test_discard_before_first_match_flags_nothing_withheld),
        cmocka_unit_test(test_discard_loses_unaccrued_part_of_interval),
        cmocka_unit_test(test_each_discard_opens_its_own_flag),
        cmocka_unit_test(test_bad_image_no_effect),
        cmocka_unit_test(test_low_quality_no_effect),
        cmocka_unit_test(test_late_no_effect),
        cmocka_unit_test(test_unknown_outcome_ignored),
        cmocka_unit_test(test_late_never_times_out_as_absence),
        cmocka_unit_test(test_no_face_stops_accrual_keeps_provisional),
        cmocka_unit_test(test_no_face_mid_interval_credits_up_to_it),
        cmocka_unit_test(test_no_face_then_match_within_absent_after),
        cmocka_unit_test(test_no_face_exactly_absent_after_no_flag),
        cmocka_unit_test(test_no_face_beyond_absent_after_flags_once),
        cmocka_unit_test(test_no_face_second_verdict_past_absent_after_flags),
        cmocka_unit_test(test_no_face_stretch_measured_from_first),
        cmocka_unit_test(test_no_face_rearmed_after_match),
        cmocka_unit_test(test_mismatch_does_not_end_no_face_stretch),
        cmocka_unit_test(test_absent_after_follows_config),
        cmocka_unit_test(test_low_quality_repeated_over_absent_after),
        cmocka_unit_test(test_low_quality_single_never_times_out),
        cmocka_unit_test(test_low_quality_match_ends_stretch),
        cmocka_unit_test(test_low_quality_then_no_face_one_stretch),
        cmocka_unit_test(test_bad_image_repeated_is_absence),
        cmocka_unit_test(test_exam_no_face_flags_immediately),
        cmocka_unit_test(test_exam_no_face_once_per_stretch),
        cmocka_unit_test(test_exam_mismatch_and_multiple_faces_flag),
        cmocka_unit_test(test_exam_low_quality_waits_like_normal),
        cmocka_unit_test(test_tick_never_credits),
        cmocka_unit_test(test_tick_ends_stretch_after_grace),
        cmocka_unit_test(test_tick_ended_stretch_even_within_grace_later),
        cmocka_unit_test(test_tick_reports_idle),
        cmocka_unit_test(test_tick_clock_backwards_harmless),
        cmocka_unit_test(test_idle_flag_exactly_at_share),
        cmocka_unit_test(test_idle_flag_just_under_share),
        cmocka_unit_test(test_idle_flag_not_before_window),
        cmocka_unit_test(test_idle_flag_once_per_window),
        cmocka_unit_test(test_idle_flag_hidden_page_counts),
        cmocka_unit_test(test_idle_flag_unverified_counts),
        cmocka_unit_test(test_idle_flag_no_input_counts),
        cmocka_unit_test(test_idle_flag_studying_never),
        cmocka_unit_test(test_idle_flag_old_idling_slides_out),
        cmocka_unit_test(test_idle_flag_suspended_attentive_not_idle),
        cmocka_unit_test(test_idle_flag_disabled_by_zero_window),
        cmocka_unit_test(test_idle_share_follows_config),
        cmocka_unit_test(test_idle_window_change_restarts_window),
        cmocka_unit_test(test_idle_and_no_face_flags_together),
        cmocka_unit_test(test_state_initial_unverified),
        cmocka_unit_test(test_state_active_after_match),
        cmocka_unit_test(test_state_match_before_any_heartbeat),
        cmocka_unit_test(test_state_hidden_unfocused_idle),
        cmocka_unit_test(test_state_hidden_wins_over_unfocused),
        cmocka_unit_test(test_state_no_face_reason),
        cmocka_unit_test(test_state_unverified_wins_over_idle),
        cmocka_unit_test(test_suspended_state_and_no_accrual),
        cmocka_unit_test(test_suspended_lifted),
        cmocka_unit_test(test_suspended_wins_over_everything),
        cmocka_unit_test(test_suspended_discard_still_flags),
        cmocka_unit_test(test_resume_needs_fresh_match_keeps_provisional),
        cmocka_unit_test(test_resume_counts_as_input),
        cmocka_unit_test(test_resume_then_mismatch_discards_old),
        cmocka_unit_test(test_day_index_utc),
        cmocka_unit_test(test_day_index_shanghai),
        cmocka_unit_test(test_day_index_negative_offset_and_before_epoch),
        cmocka_unit_test(test_day_start_ms),
        cmocka_unit_test(test_day_format),
        cmocka_unit_test(test_midnight_split_shanghai),
        cmocka_unit_test(test_midnight_split_utc),
        cmocka_unit_test(test_midnight_same_instant_other_zone_one_day),
        cmocka_unit_test(test_interval_ending_at_midnight_is_previous_day),
        cmocka_unit_test(test_midnight_split_discard_per_day),
        cmocka_unit_test(test_provisional_over_many_days_folds),
        cmocka_unit_test(test_offset_change_keeps_days_ordered),
        cmocka_unit_test(test_cap_under),
        cmocka_unit_test(test_cap_exactly_at_cap),
        cmocka_unit_test(test_cap_one_ms_over),
        cmocka_unit_test(test_cap_already_full_or_over),
        cmocka_unit_test(test_cap_edge_arguments),
        cmocka_unit_test(test_cap_per_commit_part),
        cmocka_unit_test(test_review_credit_within_cap),
        cmocka_unit_test(test_credit_hours_2700s_is_one),
        cmocka_unit_test(test_credit_hours_round_down),
        cmocka_unit_test(test_credit_hours_other_minutes),
        cmocka_unit_test(test_credit_hours_degenerate),
        cmocka_unit_test(test_online_cap),
        cmocka_unit_test(test_online_credit_clipped),
        cmocka_unit_test(test_flag_names),
        cmocka_unit_test(test_reason_names),
        cmocka_unit_test(test_state_and_outcome_names),
        cmocka_unit_test(test_numbers_match_protocol),
        cmocka_unit_test(test_session_is_small),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
