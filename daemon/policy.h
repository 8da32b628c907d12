/* Crediting rules: what a heartbeat, a face verdict or the passing of time
 * does to one session's study time. Pure: no I/O, no allocation, no global
 * state, and the time (ms since the epoch, server clock) is always an
 * argument. The core owns the session and performs what the decisions say:
 * Redis writes, flags, Verdict and Status messages. */
#ifndef PROCTORD_POLICY_H
#define PROCTORD_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define POLICY_OK 0
#define POLICY_ERR -1

#define POLICY_MS_PER_DAY 86400000LL

/* Provisional time is kept per local day; a stretch between two matches
 * is minutes long, so three days cover a session crossing two midnights.
 * Should a fourth day come, the oldest day is folded into the next. */
#define POLICY_DAYS 3

/* One call opens at most this many flags (a face flag and an idle one). */
#define POLICY_MAX_FLAGS 2

/* The idle window is kept as this many buckets of idle_window / 30 each
 * (a minute by default): the share is taken over the last 30 buckets, so
 * over idle_window give or take one bucket. */
#define POLICY_IDLE_BUCKETS 30

/* Media counts as activity when its position moved by rate x elapsed
 * within 1 s + 15 %: enough for network jitter between two heartbeats,
 * too little for a seek or a stuck player. */
#define POLICY_MEDIA_SLACK_MS 1000
#define POLICY_MEDIA_SLACK_PCT 15
#define POLICY_MEDIA_MAX_RATE 2.0

/* The protocol's Outcome, number for number. SHARED_FACE is not an
 * outcome on the wire: it is a MISMATCH whose face matches another
 * enrolled learner better, passed as a separate argument. */
enum policy_outcome {
    POLICY_MATCH = 0,
    POLICY_MISMATCH = 1,
    POLICY_NO_FACE = 2,
    POLICY_MULTIPLE_FACES = 3,
    POLICY_BAD_IMAGE = 4,
    POLICY_LATE = 5,
    POLICY_REPLAYED = 6,
    POLICY_SPOOF = 7,
    POLICY_LOW_QUALITY = 8
};

/* The protocol's State, number for number. */
enum policy_state {
    POLICY_ACTIVE = 0,
    POLICY_IDLE = 1,
    POLICY_UNVERIFIED = 2,
    POLICY_SUSPENDED = 3
};

/* Flag kinds; policy_flag_name() gives the SPEC's strings. Policy never
 * opens CONCURRENT_SESSION: the session layer does. */
enum policy_flag {
    POLICY_FLAG_NONE = 0,
    POLICY_FLAG_FACE_MISMATCH,
    POLICY_FLAG_MULTIPLE_FACES,
    POLICY_FLAG_NO_FACE,
    POLICY_FLAG_REPLAYED_IMAGE,
    POLICY_FLAG_SHARED_FACE,
    POLICY_FLAG_CONCURRENT_SESSION,
    POLICY_FLAG_CHALLENGE_MISSED,
    POLICY_FLAG_IDLE,
    POLICY_FLAG_PRESENTATION_ATTACK
};

/* Why a session is in its state, for Status.reason. The last two are set
 * by the core through policy_set_suspended(). */
enum policy_reason {
    POLICY_REASON_NONE = 0,     /* "" : ACTIVE */
    POLICY_REASON_NOT_VERIFIED, /* no match yet, or one was undone */
    POLICY_REASON_NO_FACE,      /* the camera shows no face */
    POLICY_REASON_NO_HEARTBEAT, /* none within heartbeat_grace */
    POLICY_REASON_HIDDEN,       /* page not visible */
    POLICY_REASON_UNFOCUSED,    /* window not focused */
    POLICY_REASON_IDLE,         /* no input, no media, for idle_after */
    POLICY_REASON_MEDIA_RATE,   /* idle, and media plays faster than 2x */
    POLICY_REASON_DAILY_CAP,    /* core: the day's cap is reached */
    POLICY_REASON_PAUSED        /* core: crediting paused (store down) */
};

/* Milliseconds for one local day; day is days since 1970-01-01 in the
 * zone the offset was taken from (policy_day_index()). */
struct policy_day_ms {
    int64_t day;
    int64_t ms;
};

struct policy_flag_open {
    enum policy_flag kind;
    /* Provisional time discarded with the flag; credited if dismissed.
     * Always 0 for idle: idle time never accrued. */
    int64_t withheld_ms;
};

/* What the core must do after a call. Every call fills it whole. */
struct policy_decision {
    /* Added to the provisional time by this call (never credited yet). */
    int64_t accrued_ms;

    /* Write these to the committed totals, oldest day first, each
     * through policy_apply_cap(); commit_ms is their sum. */
    struct policy_day_ms commit[POLICY_DAYS];
    int ncommit;
    int64_t commit_ms;

    /* Provisional time thrown away, per day; discard_ms is the sum and
     * equals the withheld_ms of the flag opened with it. */
    struct policy_day_ms discard[POLICY_DAYS];
    int ndiscard;
    int64_t discard_ms;

    struct policy_flag_open flags[POLICY_MAX_FLAGS];
    int nflags;

    /* The state after the call; state_changed when it or its reason
     * differs from the previous call's, so the core sends a Status. */
    enum policy_state state;
    enum policy_reason reason;
    int state_changed;
};

/* One Heartbeat as received; the core copies the protobuf fields. */
struct policy_heartbeat {
    int64_t client_time_ms;
    int page_visible;
    int window_focused;
    uint32_t input_events;
    int media_playing;
    double playback_rate;
    double media_position_s;
};

/* Per-session state, embedded by value in the core's session. Its fields
 * belong to policy.c: read them through the functions below. */
struct policy_session {
    int64_t started_ms;
    int exam;

    /* The heartbeat stretch and what the last heartbeat said. */
    int have_hb;
    int in_stretch;
    int64_t last_hb_ms;
    int64_t last_client_ms;
    int64_t last_activity_ms;
    int visible;
    int focused;
    int media_playing;
    double media_rate;
    double media_position_s;

    /* Face verification and the current face-less stretch. */
    int verified;
    int64_t verified_at_ms;
    int absent;         /* 0 none, 1 poor images only, 2 no face seen */
    int absent_flagged;
    int64_t absent_since_ms;

    struct policy_day_ms prov[POLICY_DAYS];
    int nprov;

    /* Idle window: bad (idle, unverified, missing) ms per bucket, up to
     * acct_ms, buckets aligned on ring_origin_ms. */
    int64_t acct_ms;
    int64_t ring_origin_ms;
    int64_t bucket_ms;
    int64_t ring_head;
    int64_t ring_sum;
    uint32_t ring[POLICY_IDLE_BUCKETS];
    int idle_flagged;
    int64_t idle_flag_at_ms;

    enum policy_reason suspended;
    /* Attention as of the last heartbeat or tick: NONE or an IDLE reason. */
    enum policy_reason attn;
    enum policy_state state;
    enum policy_reason reason;
};

/* ---- Session lifecycle ------------------------------------------------ */

/* Starts the rules for a new session at now_ms. The session starts
 * UNVERIFIED: nothing accrues before its first MATCH. The start counts as
 * input, so a learner is not idle during the first idle_after. exam
 * (non-zero) makes NO_FACE flag at once instead of after absent_after. */
void policy_session_init(struct policy_session *s, int64_t now_ms, int exam);

/* A resumed session got a new connection at now_ms: the heartbeat stretch
 * ends and crediting waits for a fresh MATCH (SPEC: "either way crediting
 * resumes only after a fresh match"). The provisional time is kept, so
 * that MATCH commits it and a MISMATCH discards it; the reconnect counts
 * as input. */
void policy_on_resume(const struct config_policy *cfg,
                      struct policy_session *s, int64_t now_ms,
                      struct policy_decision *d);

/* Crediting paused by the core (reason POLICY_REASON_DAILY_CAP or
 * POLICY_REASON_PAUSED) or resumed (POLICY_REASON_NONE). While paused the
 * state is SUSPENDED, nothing accrues (the time is lost, not banked), and
 * verdicts still commit or discard what was provisional before. The idle
 * window ignores the pause: an attentive learner is not idling. The core
 * lifts a daily_cap pause at local midnight. */
void policy_set_suspended(struct policy_session *s,
                          enum policy_reason reason, int64_t now_ms,
                          struct policy_decision *d);

/* ---- Events ----------------------------------------------------------- */

/* A heartbeat received at now_ms (server clock). The interval since the
 * previous heartbeat accrues into the provisional time only where all
 * hold:
 * - the gap is at most heartbeat_grace (a longer one ends the stretch
 *   and credits nothing; this heartbeat starts a new one);
 * - the page was visible and focused at both ends of the interval;
 * - client_time_ms did not go backwards (the client clock is never used
 *   for amounts, only to refuse nonsense);
 * - the learner was not idle: input events within idle_after, or media
 *   playing at a rate in (0, 2] at both ends with its position advancing
 *   by rate x elapsed within POLICY_MEDIA_SLACK_*; without either, the
 *   interval accrues up to last activity + idle_after only;
 * - the session was verified (after a MATCH, before anything undoing it)
 *   and the camera did not show "no face" (accrual stops at NO_FACE).
 * The amount is at most now_ms minus the previous heartbeat's time. A
 * heartbeat at or before the previous one (duplicate, reordering, clock
 * step) accrues nothing and only makes the next interval stricter (its
 * hidden or unfocused counts, its input counts as of the previous
 * heartbeat). utc_offset_s is policy.timezone's offset at now_ms (the
 * core's localtime_r tm_gmtoff); time is kept per local day of that
 * offset, an interval across midnight split between the days. May open
 * an idle flag. */
void policy_on_heartbeat(const struct config_policy *cfg,
                         struct policy_session *s,
                         const struct policy_heartbeat *hb, int64_t now_ms,
                         int32_t utc_offset_s, struct policy_decision *d);

/* A face verdict at now_ms. shared_face with MISMATCH makes it the
 * shared_face flag instead of face_mismatch (ignored with other outcomes).
 * - MATCH commits all provisional time and makes the session verified;
 *   it ends a face-less stretch.
 * - MISMATCH, MULTIPLE_FACES, REPLAYED, SPOOF discard the provisional
 *   time and open face_mismatch / shared_face, multiple_faces,
 *   replayed_image, presentation_attack with withheld = the discarded ms;
 *   the session is unverified until the next MATCH (the not yet accrued
 *   part of the current heartbeat interval is lost with it).
 * - NO_FACE stops accrual from now_ms, keeping the provisional time. A
 *   face-less stretch (from the first NO_FACE, LOW_QUALITY or BAD_IMAGE
 *   with no MATCH since) longer than absent_after discards it and opens
 *   one no_face flag for the stretch, here or in policy_on_tick(). In exam
 *   mode the first NO_FACE of a stretch does so at once.
 * - LOW_QUALITY and BAD_IMAGE change nothing by themselves, but a second
 *   one (or a NO_FACE) more than absent_after after the first of the
 *   stretch is absence: the same discard and no_face flag, and accrual
 *   stops until a MATCH. A single one never times out alone.
 * - LATE changes nothing: its challenge was already handled as missed.
 * The core should challenge again soon after NO_FACE, so that a learner
 * who is back is matched within absent_after. */
void policy_on_verdict(const struct config_policy *cfg,
                       struct policy_session *s,
                       enum policy_outcome outcome, int shared_face,
                       int64_t now_ms, struct policy_decision *d);

/* The challenge module saw a challenge's deadline pass unanswered:
 * discard and a challenge_missed flag, like MISMATCH. */
void policy_on_challenge_missed(const struct config_policy *cfg,
                                struct policy_session *s, int64_t now_ms,
                                struct policy_decision *d);

/* Time passing, called every second or so. Ends a stretch whose last
 * heartbeat is older than heartbeat_grace, times out a face-less stretch
 * (no_face flag) and may open an idle flag. Never accrues or commits.
 *
 * The idle flag (here and in policy_on_heartbeat()): every ms of the
 * session's wall time is good (an interval that would accrue, paused or
 * not) or bad (idle, hidden, unfocused, unverified, face-less, no
 * heartbeats). Once the session is idle_window old, a bad share of the
 * last idle_window at or above idle_share opens an idle flag, at most one
 * per idle_window. The window ends at the latest heartbeat while a
 * stretch is open (its tail is judged by the next one), at now_ms once
 * it has ended. idle_window <= 0 turns the flag off; a changed
 * idle_window starts the window over. */
void policy_on_tick(const struct config_policy *cfg,
                    struct policy_session *s, int64_t now_ms,
                    struct policy_decision *d);

/* ---- Reading the session ---------------------------------------------- */

/* Provisional ms over all days, for Status.provisional_s. */
int64_t policy_provisional_ms(const struct policy_session *s);

/* The state and reason of the last call (also in its decision). */
enum policy_state policy_state(const struct policy_session *s);
enum policy_reason policy_reason(const struct policy_session *s);

/* ---- Days, caps and hours --------------------------------------------- */

/* Local day of t_ms, as days since 1970-01-01, for a zone at utc_offset_s
 * (east positive). Zone to offset is the caller's: policy stays pure. */
int64_t policy_day_index(int64_t t_ms, int32_t utc_offset_s);

/* UTC ms of the local midnight that starts t_ms's day. */
int64_t policy_day_start_ms(int64_t t_ms, int32_t utc_offset_s);

/* Writes day (policy_day_index()) as "YYYY-MM-DD" into buf. Returns
 * POLICY_OK, or POLICY_ERR when buflen is under 11 or the year is outside
 * 0..9999. */
int policy_day_format(int64_t day, char *buf, size_t buflen);

/* The part of add_ms credited on a day already holding already_ms under
 * cap_ms (negative: no cap). The rest, stored in *excess_ms when not
 * NULL, is dropped, never carried to another day. */
int64_t policy_apply_cap(int64_t already_ms, int64_t add_ms, int64_t cap_ms,
                         int64_t *excess_ms);

/* The part of a dismissed flag's withheld_ms credited on review: it goes
 * to the day the core picks (already_ms being what it holds), within
 * that day's cap. Confirming credits nothing and needs no call. */
int64_t policy_review_credit(int64_t withheld_ms, int64_t already_ms,
                             int64_t cap_ms);

/* Credit hours in hundredths, rounded down: committed seconds over
 * minutes_per_credit_hour x 60 (2700 s at 45 -> 100, 2699 s -> 99). Exact
 * integer arithmetic; 0 for a non-positive minutes_per_credit_hour. */
int64_t policy_credit_hours_centi(int64_t committed_s,
                                  int minutes_per_credit_hour);

/* Most online credit hours for a learner, in hundredths, rounded down:
 * the role's required hours (the report's required_hours) x online_share
 * (the online part allowed; SPEC: at least 60 % offline, so 0.4). */
int64_t policy_online_cap_centi(double required_hours, double online_share);

/* Credit hours that count, in hundredths: the credited ones up to the
 * online cap. */
int64_t policy_online_credit_centi(int64_t credit_centi, int64_t cap_centi);

/* ---- Names ------------------------------------------------------------ */

/* The SPEC's flag kind ("face_mismatch", ...); "" for NONE or unknown. */
const char *policy_flag_name(enum policy_flag kind);

/* Status.reason strings ("hidden", "no_face", ...); "" for NONE. */
const char *policy_reason_name(enum policy_reason reason);

/* "ACTIVE", "IDLE", "UNVERIFIED", "SUSPENDED", for logs. */
const char *policy_state_name(enum policy_state state);

/* "MATCH", "MISMATCH", ..., for logs; "UNKNOWN" otherwise. */
const char *policy_outcome_name(enum policy_outcome outcome);

#endif
