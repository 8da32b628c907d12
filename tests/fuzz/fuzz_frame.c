/* libFuzzer target: what a learner's WebSocket frames go through before
 * Redis or the camera check: the protobuf-c decode of a ClientMessage, the
 * Hello gate and sequence rule of net.c, and the core's dispatch of the
 * decoded message: a Heartbeat's fields into the crediting rules
 * (policy.c), a Snapshot into the vision job challenge.c builds (the
 * evidence frame and the liveness burst copied out of the message).
 *
 * The input is one connection: frames of [length: 2 bytes little-endian]
 * [bytes], at most FRAMES_MAX of them. A Hello whose token is "valid" gets
 * a token signed with the harness's secret instead, so that the messages
 * after it are reached; any other token is verified as sent.
 *
 * Not reached here, for want of a core: net.c's gate and session.c's
 * dispatch are static and welded to libwebsockets and the session table,
 * so their few lines of branching are repeated below (and say so); the
 * verdict that a Snapshot would get from the vision pool is taken from
 * the low bits of its captured_at_ms, to drive the policy state machine
 * the way real verdicts would. The JPEG bytes themselves are fuzz_jpeg's. */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "config.h"
#include "policy.h"
#include "proctor.pb-c.h"
#include "session-internal.h"
#include "vision_pool.h"
#include "fuzz_token.h"

#define FUZZ_NOW_MS 1760000000000LL
#define FRAMES_MAX 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct auth_keys keys;
static struct config cfg;
static char valid_token[512];

/* main.c's clock; challenge.c links against it but the paths reached
 * here take their time from the harness. */
int64_t core_now_ms(void)
{
    return FUZZ_NOW_MS;
}

static void setup(void)
{
    char pay[256];

    config_defaults(&cfg);
    auth_keys_init(&keys, FUZZ_SECRET, 30);
    snprintf(pay, sizeof(pay),
             "{\"sub\":\"l1\",\"course\":\"c1\",\"org\":\"o1\","
             "\"role\":\"manager\",\"exp\":%lld,\"iat\":%lld}",
             FUZZ_NOW_MS / 1000 + 3600, FUZZ_NOW_MS / 1000);
    fuzz_sign(valid_token, pay);
}

/* One connection's state, as net.c keeps it. */
struct conn {
    int hello_done;
    int has_seq;
    uint64_t last_seq;
    struct auth_claims claims;
    struct policy_session pol;
    int64_t now;
};

static void on_heartbeat(struct conn *c, const Proctor__V1__Heartbeat *hb)
{
    struct policy_heartbeat ph;
    struct policy_decision d;

    ph.client_time_ms = hb->client_time_ms;
    ph.page_visible = hb->page_visible;
    ph.window_focused = hb->window_focused;
    ph.input_events = hb->input_events;
    ph.media_playing = hb->media_playing;
    ph.playback_rate = hb->playback_rate;
    ph.media_position_s = hb->media_position_s;
    policy_on_heartbeat(&cfg.policy, &c->pol, &ph, c->now, 0, &d);
    policy_on_tick(&cfg.policy, &c->pol, c->now + 1000, &d);
}

static void on_snapshot(struct conn *c, const Proctor__V1__Snapshot *snap)
{
    int action = (int)(snap->challenge_id % 3);
    struct vision_job *job = challenge_snapshot_job(snap, action);
    struct policy_decision d;

    if (job == NULL)
        return;
    /* The burst is the message's frames, bounded; the evidence frame is
     * the jpeg field or the first frame. */
    if (job->nframes > VISION_BURST_MAX ||
        (job->nframes > 0 && job->nframes > (int)snap->n_frames))
        abort();
    vision_job_free(job);
    policy_on_verdict(&cfg.policy, &c->pol,
                      (enum policy_outcome)((uint64_t)snap->captured_at_ms %
                                            9),
                      (int)(snap->captured_at_ms >> 8) & 1, c->now, &d);
}

/* net.c's on_message() and hello_gate(), then session.c's dispatch.
 * Returns 0 when the daemon would close the connection. */
static int on_frame(struct conn *c, const uint8_t *data, size_t len)
{
    Proctor__V1__ClientMessage *m;
    const char *why = NULL;
    int is_hello, keep = 1;

    m = proctor__v1__client_message__unpack(NULL, len, data);
    if (m == NULL)
        return 0;
    if (m->body_case == PROCTOR__V1__CLIENT_MESSAGE__BODY__NOT_SET) {
        proctor__v1__client_message__free_unpacked(m, NULL);
        return 0;
    }
    is_hello = m->body_case == PROCTOR__V1__CLIENT_MESSAGE__BODY_HELLO;
    if (c->hello_done == is_hello) {
        /* Hello twice, or anything before Hello. */
        keep = 0;
    } else if (is_hello) {
        const char *tok = m->hello->token;

        if (strcmp(tok, "valid") == 0)
            tok = valid_token;
        if (auth_verify_learner(&keys, tok, c->now / 1000, &c->claims,
                                &why) != AUTH_OK) {
            keep = 0;
        } else {
            c->hello_done = 1;
            policy_session_init(&c->pol, c->now,
                                strcmp(c->claims.mode, "exam") == 0);
        }
    }
    if (keep && !(c->has_seq && m->seq <= c->last_seq)) {
        c->has_seq = 1;
        c->last_seq = m->seq;
        switch (m->body_case) {
        case PROCTOR__V1__CLIENT_MESSAGE__BODY_HEARTBEAT:
            on_heartbeat(c, m->heartbeat);
            break;
        case PROCTOR__V1__CLIENT_MESSAGE__BODY_SNAPSHOT:
            on_snapshot(c, m->snapshot);
            break;
        case PROCTOR__V1__CLIENT_MESSAGE__BODY_BYE:
            keep = 0;
            break;
        default:
            break;
        }
    }
    proctor__v1__client_message__free_unpacked(m, NULL);
    return keep;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    struct conn c;
    size_t off = 0;

    if (!ready) {
        setup();
        ready = 1;
    }
    memset(&c, 0, sizeof(c));
    c.now = FUZZ_NOW_MS;
    for (int i = 0; i < FRAMES_MAX && off + 2 <= size; i++) {
        size_t len = (size_t)data[off] | (size_t)data[off + 1] << 8;

        off += 2;
        if (len > size - off)
            len = size - off;
        if (!on_frame(&c, data + off, len))
            break;
        off += len;
        c.now += cfg.policy.heartbeat_interval_ms;
    }
    return 0;
}
