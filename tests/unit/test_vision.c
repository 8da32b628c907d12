/* Unit tests for daemon/vision: real photographs from ../shared/data
 * through the daemon's own JPEG path (one face, group photos, same and
 * different people), refusal of bytes that are not a JPEG, truncated or
 * claiming absurd dimensions, the replay signature, model checksums, the
 * cascade fallback, the quality gate on darkened, flattened, blurred and
 * shrunk copies, and liveness: the yaw's sign on turned and mirrored
 * faces, photos moved by random homographies, and a real head turning in
 * the shared video. Skipped when the shared models are absent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "vision/vision.h"

#define LFW "/data/faces/lfw/"
#define SAME_A LFW "Colin_Powell/Colin_Powell_0001.jpg"
#define SAME_B LFW "Colin_Powell/Colin_Powell_0002.jpg"
#define OTHER LFW "Serena_Williams/Serena_Williams_0001.jpg"
#define GROUP "/data/faces/named_color/_multi/obama_and_biden.jpg"
#define PNG "/data/faces/named_color/alex_lacamoire/alex-lacamoire.png"
#define VIDEO "/data/video/face_640x480_15fps.y4m"
/* Looking towards the image's right: turned to his own left. */
#define TURNED_LEFT LFW "Hugo_Chavez/Hugo_Chavez_0003.jpg"
/* Looking towards the image's left: turned to his own right. */
#define TURNED_RIGHT LFW "Ariel_Sharon/Ariel_Sharon_0007.jpg"
#define FRONTAL LFW "Colin_Powell/Colin_Powell_0009.jpg"
#define YUNET "face_detection_yunet_2022mar.onnx"
#define FR512 "faceplugin_fr_feature.onnx"

struct fixture {
    char shared[1024];
    char models[1100];
    struct vision_engine *engine;
    struct vision_worker *worker;
};

static struct fixture fx;

/* The shared video's frames as quality-90 JPEGs, loaded once. */
#define VIDEO_MAX 64

static struct {
    int n;
    uint8_t *jpg[VIDEO_MAX];
    size_t len[VIDEO_MAX];
} vid;

/* ------------------------------------------------------------------------
 * Helpers
 * --------------------------------------------------------------------- */

static const char *shared_path(const char *rel)
{
    static char path[2][2048];
    static int turn;

    turn ^= 1;
    snprintf(path[turn], sizeof(path[0]), "%s%s", fx.shared, rel);
    return path[turn];
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long size;

    if (f == NULL)
        fail_msg("%s: cannot open", path);
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)size);
    assert_non_null(buf);
    *len = fread(buf, 1, (size_t)size, f);
    fclose(f);
    assert_int_equal(*len, (size_t)size);
    return buf;
}

static void write_file(const char *path, const uint8_t *buf, size_t len)
{
    FILE *f = fopen(path, "wb");

    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    fclose(f);
}

/* Analyses a shared photo through vision_analyze() (JPEG bytes). */
static int analyze_path(struct vision_worker *w, const char *rel,
                        struct vision_result *r)
{
    size_t len;
    uint8_t *jpeg = read_file(shared_path(rel), &len);
    int rc = vision_analyze(w, jpeg, len, r);

    free(jpeg);
    return rc;
}

static struct vision_engine *engine_from(const char *dir, char *err,
                                         size_t errlen)
{
    struct vision_options opt = {0};

    opt.models_dir = dir;
    return vision_engine_new(&opt, err, errlen);
}

static double elapsed_ms(const struct timespec *t0)
{
    struct timespec t1;

    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1e3 + (t1.tv_nsec - t0->tv_nsec) / 1e6;
}

static long max_rss_kb(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* A scratch directory under $TMPDIR (or /tmp), removed by rm_tree(). */
static void make_tmpdir(char *dir, size_t len)
{
    const char *tmp = getenv("TMPDIR");

    snprintf(dir, len, "%s/test_vision.XXXXXX",
             tmp != NULL && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(dir));
}

static void rm_tree(const char *dir)
{
    char cmd[1200];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* ------------------------------------------------------------------------
 * Setup: one engine and worker over the shared models
 * --------------------------------------------------------------------- */

static int group_setup(void **state)
{
    const char *shared = getenv("PROCTORD_SHARED");
    const char *source = getenv("PROCTORD_SOURCE");
    char err[256] = "";

    (void)state;
    if (shared)
        snprintf(fx.shared, sizeof(fx.shared), "%s", shared);
    else
        snprintf(fx.shared, sizeof(fx.shared), "%s/../shared",
                 source ? source : ".");
    snprintf(fx.models, sizeof(fx.models), "%s/models", fx.shared);
    if (access(fx.models, R_OK) != 0) {
        print_message("%s missing; vision tests skipped\n", fx.models);
        return 0;
    }
    fx.engine = engine_from(fx.models, err, sizeof(err));
    if (fx.engine == NULL) {
        print_message("vision_engine_new: %s\n", err);
        return -1;
    }
    fx.worker = vision_worker_new(fx.engine, err, sizeof(err));
    if (fx.worker == NULL) {
        print_message("vision_worker_new: %s\n", err);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < vid.n; i++)
        free(vid.jpg[i]);
    vision_worker_free(fx.worker);
    vision_engine_free(fx.engine);
    return 0;
}

static int need_engine(void **state)
{
    (void)state;
    if (fx.engine == NULL)
        skip();
    return 0;
}

/* ------------------------------------------------------------------------
 * Faces and identities
 * --------------------------------------------------------------------- */

static void test_engine_getters(void **state)
{
    (void)state;
    assert_string_equal(vision_model_id(fx.engine), "fr512f-87aacdfe");
    assert_int_equal(vision_embedding_dim(fx.engine), 512);
    assert_string_equal(vision_detector_name(fx.engine), "yunet-2022mar");
    assert_int_equal(vision_degraded(fx.engine), 0);
    assert_true(vision_default_threshold(fx.engine) > 0.3f);
    assert_true(vision_default_threshold(fx.engine) < 0.5f);
}

static void test_one_face(void **state)
{
    struct vision_result r;
    double norm = 0;

    (void)state;
    assert_int_equal(analyze_path(fx.worker, SAME_A, &r), VISION_OK);
    assert_int_equal(r.status, VISION_OK);
    assert_int_equal(r.width, 150);
    assert_int_equal(r.height, 150);
    assert_int_equal(r.faces, 1);
    assert_int_equal(r.dim, 512);
    for (int i = 0; i < r.dim; i++)
        norm += (double)r.embedding[i] * r.embedding[i];
    assert_float_equal(norm, 1.0, 1e-4);

    /* Both eyes inside the box, the right one (image left) first. */
    assert_true(r.landmarks[0] > r.box[0] && r.landmarks[0] < r.landmarks[2]);
    assert_true(r.landmarks[2] < r.box[0] + r.box[2]);
    assert_true(r.score > 0.7f);
    assert_true(r.brightness > 20 && r.brightness < 235);
    assert_true(r.contrast > 5 && r.sharpness > 1);
    assert_true(r.us_detect > 0 && r.us_embed > 0);
}

static void test_same_and_other_person(void **state)
{
    struct vision_result a, b, c;
    float t = vision_default_threshold(fx.engine);

    (void)state;
    assert_int_equal(analyze_path(fx.worker, SAME_A, &a), VISION_OK);
    assert_int_equal(analyze_path(fx.worker, SAME_B, &b), VISION_OK);
    assert_int_equal(analyze_path(fx.worker, OTHER, &c), VISION_OK);
    assert_int_equal(b.dim, 512);
    assert_int_equal(c.dim, 512);
    assert_true(vision_similarity(a.embedding, b.embedding, 512) >= t);
    assert_true(vision_similarity(a.embedding, c.embedding, 512) < t);
    assert_true(vision_similarity(b.embedding, c.embedding, 512) < t);
}

/* The same bytes give the same result (the alignment draws nothing at
 * random), whichever worker and thread runs them. */
static void *analyze_thread(void *arg)
{
    struct vision_result *r = arg;
    char err[256];
    struct vision_worker *w = vision_worker_new(fx.engine, err, sizeof(err));

    if (w == NULL)
        return NULL;
    for (int i = 0; i < 3; i++)
        analyze_path(w, SAME_A, r);
    vision_worker_free(w);
    return r;
}

static void test_workers_in_threads(void **state)
{
    static struct vision_result ref, r[2];
    pthread_t th[2];

    (void)state;
    assert_int_equal(analyze_path(fx.worker, SAME_A, &ref), VISION_OK);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, analyze_thread, &r[i]),
                         0);
    for (int i = 0; i < 2; i++) {
        void *ret;

        assert_int_equal(pthread_join(th[i], &ret), 0);
        assert_non_null(ret);
        assert_int_equal(r[i].dim, 512);
        assert_memory_equal(r[i].embedding, ref.embedding,
                            sizeof(ref.embedding));
    }
}

static void test_group_photo(void **state)
{
    struct vision_result r;

    (void)state;
    assert_int_equal(analyze_path(fx.worker, GROUP, &r), VISION_OK);
    assert_true(r.faces >= 2);
    assert_true(r.faces_raw >= r.faces);
    /* Decoded at half scale, reported in the JPEG's own pixels. */
    assert_int_equal(r.width, 2000);
    assert_int_equal(r.height, 1428);
    assert_true(r.box[0] + r.box[2] <= 2000 && r.box[2] > 100);
    assert_int_equal(r.dim, 512);
}

/* ------------------------------------------------------------------------
 * Bytes refused
 * --------------------------------------------------------------------- */

static void test_not_a_jpeg(void **state)
{
    static const uint8_t text[] = "GET / HTTP/1.1\r\nHost: example\r\n\r\n";
    static const uint8_t soi_only[] = {0xFF, 0xD8, 0xFF};
    struct vision_result r;
    size_t len;
    uint8_t *png = read_file(shared_path(PNG), &len);

    (void)state;
    assert_int_equal(vision_analyze(fx.worker, text, sizeof(text), &r),
                     VISION_BAD_IMAGE);
    assert_int_equal(r.status, VISION_BAD_IMAGE);
    assert_true(r.error[0] != '\0');
    assert_int_equal(vision_analyze(fx.worker, soi_only, sizeof(soi_only), &r),
                     VISION_BAD_IMAGE);
    assert_int_equal(vision_analyze(fx.worker, text, 0, &r), VISION_BAD_IMAGE);
    /* A PNG is an image, but the daemon's path takes JPEG only. */
    assert_int_equal(vision_analyze(fx.worker, png, len, &r),
                     VISION_BAD_IMAGE);
    free(png);

    /* A refused header leaves the worker able to read the next JPEG. */
    assert_int_equal(vision_analyze(fx.worker, soi_only, sizeof(soi_only), &r),
                     VISION_BAD_IMAGE);
    assert_int_equal(analyze_path(fx.worker, SAME_A, &r), VISION_OK);
    assert_int_equal(r.faces, 1);
}

static void test_truncated_jpeg(void **state)
{
    struct vision_result r;
    size_t len;
    uint8_t *jpeg = read_file(shared_path(SAME_A), &len);

    (void)state;
    assert_int_equal(vision_analyze(fx.worker, jpeg, len / 2, &r),
                     VISION_BAD_IMAGE);
    assert_int_equal(r.dim, 0);
    assert_int_equal(vision_analyze(fx.worker, jpeg, len - 2, &r),
                     VISION_BAD_IMAGE);
    assert_int_equal(vision_analyze(fx.worker, jpeg, 200, &r),
                     VISION_BAD_IMAGE);
    assert_int_equal(vision_analyze(fx.worker, jpeg, len, &r), VISION_OK);
    free(jpeg);
}

/* SOI, a quantisation table, a baseline frame of width x height with three
 * components, a scan header and a few bytes of entropy-coded data. */
static size_t make_header(uint8_t *buf, int width, int height)
{
    static const uint8_t sos[] = {0xFF, 0xDA, 0x00, 0x0C, 0x03, 0x01, 0x00,
                                  0x02, 0x11, 0x03, 0x11, 0x00, 0x3F, 0x00};
    size_t n = 0;

    buf[n++] = 0xFF, buf[n++] = 0xD8;
    buf[n++] = 0xFF, buf[n++] = 0xDB, buf[n++] = 0x00, buf[n++] = 0x43;
    buf[n++] = 0x00;
    for (int i = 0; i < 64; i++)
        buf[n++] = 0x01;
    buf[n++] = 0xFF, buf[n++] = 0xC0, buf[n++] = 0x00, buf[n++] = 0x11;
    buf[n++] = 0x08;
    buf[n++] = (uint8_t)(height >> 8), buf[n++] = (uint8_t)height;
    buf[n++] = (uint8_t)(width >> 8), buf[n++] = (uint8_t)width;
    buf[n++] = 0x03;
    for (int c = 1; c <= 3; c++)
        buf[n++] = (uint8_t)c, buf[n++] = 0x11, buf[n++] = 0x00;
    memcpy(buf + n, sos, sizeof(sos));
    n += sizeof(sos);
    for (int i = 0; i < 16; i++)
        buf[n++] = 0x55;
    buf[n++] = 0xFF, buf[n++] = 0xD9;
    return n;
}

/* Refused without allocating for the image: fast, and the peak resident
 * size does not move (65535 x 65535 x 3 would be 12 GB). libjpeg itself
 * stops at 65500; below that the header is read and the size refused. */
static void expect_refused_header(int width, int height, int reported)
{
    uint8_t buf[256];
    struct vision_result r;
    struct timespec t0;
    long rss0 = max_rss_kb();
    size_t len = make_header(buf, width, height);

    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(vision_analyze(fx.worker, buf, len, &r),
                     VISION_BAD_IMAGE);
    assert_true(elapsed_ms(&t0) < 50);
    assert_true(max_rss_kb() - rss0 < 16 * 1024);
    assert_int_equal(r.width, reported ? width : 0);
    assert_int_equal(r.height, reported ? height : 0);
}

static void test_absurd_dimensions(void **state)
{
    (void)state;
    expect_refused_header(65535, 65535, 0);
    expect_refused_header(60000, 60000, 1);
    expect_refused_header(16384, 16384, 1);
    expect_refused_header(16385, 100, 1);
    expect_refused_header(8, 8, 1);
    expect_refused_header(640, 15, 1);
}

static void test_max_pixels_option(void **state)
{
    struct vision_options opt = {0};
    struct vision_engine *e;
    struct vision_worker *w;
    struct vision_result r;
    char err[256];

    (void)state;
    opt.models_dir = fx.models;
    opt.max_pixels = 100 * 100;
    e = vision_engine_new(&opt, err, sizeof(err));
    assert_non_null(e);
    w = vision_worker_new(e, err, sizeof(err));
    assert_non_null(w);
    assert_int_equal(analyze_path(w, SAME_A, &r), VISION_BAD_IMAGE);
    assert_int_equal(r.width, 150);
    vision_worker_free(w);
    vision_engine_free(e);
}

/* ------------------------------------------------------------------------
 * Replay signature
 * --------------------------------------------------------------------- */

static void test_replay_signature(void **state)
{
    struct vision_result orig, same, copy, other;
    size_t len, clen;
    uint8_t *jpeg = read_file(shared_path(SAME_A), &len), *c;
    char err[256];

    (void)state;
    assert_int_equal(vision_analyze(fx.worker, jpeg, len, &orig), VISION_OK);
    assert_int_equal(vision_analyze(fx.worker, jpeg, len, &same), VISION_OK);
    assert_memory_equal(orig.sha256, same.sha256, 32);
    assert_float_equal(vision_signature_distance(orig.signature,
                                                 same.signature), 0, 1e-6);

    /* Shrunk to 0.75 and saved at quality 60: other bytes, same picture. */
    assert_int_equal(vision_transcode(jpeg, len, 0.75, 60, &c, &clen, err,
                                      sizeof(err)), VISION_OK);
    assert_int_equal(vision_analyze(fx.worker, c, clen, &copy), VISION_OK);
    assert_memory_not_equal(orig.sha256, copy.sha256, 32);
    assert_true(vision_signature_distance(orig.signature, copy.signature) <
                VISION_REPLAY_DISTANCE);

    assert_int_equal(analyze_path(fx.worker, SAME_B, &other), VISION_OK);
    assert_true(vision_signature_distance(orig.signature, other.signature) >
                VISION_REPLAY_DISTANCE);
    free(c);
    free(jpeg);
}

/* ------------------------------------------------------------------------
 * Quality gate
 * --------------------------------------------------------------------- */

/* A shared image edited as e says, analysed. */
static int analyze_edited(const char *rel, const struct vision_edit *e,
                          struct vision_result *r)
{
    size_t len, olen;
    uint8_t *src = read_file(shared_path(rel), &len), *out;
    char err[256];
    int rc;

    if (vision_edit(src, len, e, &out, &olen, err, sizeof(err)) != VISION_OK)
        fail_msg("vision_edit %s: %s", rel, err);
    rc = vision_analyze(fx.worker, out, olen, r);
    free(out);
    free(src);
    return rc;
}

/* Real photos pass; dark (x0.15), flat (contrast x0.2), blurred (sigma
 * 4) and shrunk (x0.25) copies of them are caught, each for its reason. */
static void test_quality_gate(void **state)
{
    static const char *const photos[] = {
        SAME_A, SAME_B, OTHER, TURNED_LEFT, TURNED_RIGHT,
        "/data/faces/att_faces/s3/1.pgm", "/data/faces/att_faces/s11/4.pgm",
    };
    static const struct {
        struct vision_edit e;
        int quality;
    } bad[] = {
        {{.gain = 0.15}, VISION_QUALITY_TOO_DARK},
        {{.contrast = 0.2}, VISION_QUALITY_LOW_CONTRAST},
        {{.blur_sigma = 4}, VISION_QUALITY_BLURRY},
        {{.scale = 0.25}, VISION_QUALITY_FACE_TOO_SMALL},
    };
    struct vision_result r;
    struct vision_edit same = {.quality = 90};

    (void)state;
    for (size_t i = 0; i < sizeof(photos) / sizeof(photos[0]); i++) {
        assert_int_equal(analyze_edited(photos[i], &same, &r), VISION_OK);
        if (r.faces != 1 || r.quality != VISION_QUALITY_OK)
            fail_msg("%s: faces %d quality %d", photos[i], r.faces,
                     r.quality);
        if (vision_brisque(fx.engine))
            assert_true(r.brisque >= 0 && r.brisque <=
                        VISION_DEFAULT_MAX_BRISQUE);
        for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
            assert_int_equal(analyze_edited(photos[i], &bad[k].e, &r),
                             VISION_OK);
            if (r.quality != bad[k].quality)
                fail_msg("%s, variant %zu: quality %d (%s), wanted %s",
                         photos[i], k, r.quality,
                         vision_quality_hint(r.quality),
                         vision_quality_hint(bad[k].quality));
        }
    }
    assert_string_equal(vision_quality_hint(VISION_QUALITY_TOO_DARK),
                        "too_dark");
    assert_string_equal(vision_quality_hint(VISION_QUALITY_OK), "");
}

/* A grey noise frame: no face, lit, as an empty room. */
static uint8_t *noise_jpeg(double gain, size_t *len)
{
    size_t n = 15 + 320 * 240 * 3;
    uint8_t *ppm = malloc(n), *out;
    struct vision_edit e = {.gain = gain};
    unsigned seed = 7;

    assert_non_null(ppm);
    memcpy(ppm, "P6 320 240 255\n", 15);
    for (size_t i = 15; i < n; i++)
        ppm[i] = (uint8_t)(120 + rand_r(&seed) % 16);
    assert_int_equal(vision_edit(ppm, n, &e, &out, len, NULL, 0), VISION_OK);
    free(ppm);
    return out;
}

/* Without a face only darkness counts: an empty lit room stays a frame
 * with no face, a dark one is too dark to tell. */
static void test_quality_without_face(void **state)
{
    struct vision_result r;
    size_t len;
    uint8_t *lit = noise_jpeg(0, &len), *dark;

    (void)state;
    assert_int_equal(vision_analyze(fx.worker, lit, len, &r), VISION_OK);
    assert_int_equal(r.faces, 0);
    assert_int_equal(r.quality, VISION_QUALITY_OK);
    dark = noise_jpeg(0.15, &len);
    assert_int_equal(vision_analyze(fx.worker, dark, len, &r), VISION_OK);
    assert_int_equal(r.faces, 0);
    assert_int_equal(r.quality, VISION_QUALITY_TOO_DARK);
    free(lit);
    free(dark);
}

/* Negative options turn checks off; BRISQUE is then not computed. */
static void test_quality_options(void **state)
{
    struct vision_options opt = {0};
    struct vision_edit dark = {.gain = 0.15};
    struct vision_engine *e;
    struct vision_worker *w, *keep = fx.worker;
    struct vision_result r;
    char err[256];

    (void)state;
    opt.models_dir = fx.models;
    opt.min_face_px = opt.min_brightness = opt.min_contrast = -1;
    opt.min_sharpness = opt.max_brisque = -1;
    e = vision_engine_new(&opt, err, sizeof(err));
    assert_non_null(e);
    assert_int_equal(vision_brisque(e), 0);
    w = vision_worker_new(e, err, sizeof(err));
    assert_non_null(w);
    fx.worker = w;
    assert_int_equal(analyze_edited(SAME_A, &dark, &r), VISION_OK);
    fx.worker = keep;
    assert_int_equal(r.faces, 1);
    assert_int_equal(r.quality, VISION_QUALITY_OK);
    assert_true(r.brisque == -1);
    vision_worker_free(w);
    vision_engine_free(e);
}

/* YuNet 2022mar throws on inputs under about 62 pixels a side; such an
 * image is padded, not refused. */
static void test_small_image(void **state)
{
    struct vision_edit e = {.scale = 0.35};
    struct vision_result r;

    (void)state;
    assert_int_equal(analyze_edited(SAME_A, &e, &r), VISION_OK);
    assert_int_equal(r.width, 53);
    assert_int_equal(r.faces, 1);
    assert_int_equal(r.quality, VISION_QUALITY_FACE_TOO_SMALL);
}

/* ------------------------------------------------------------------------
 * Liveness
 * --------------------------------------------------------------------- */

static uint8_t clamp_u8(double v)
{
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)lround(v);
}

/* One limited-range BT.601 4:2:0 frame as a binary PPM. */
static uint8_t *yuv_to_ppm(const uint8_t *yuv, int w, int h, size_t *len)
{
    const uint8_t *u = yuv + (size_t)w * h, *v = u + (size_t)(w / 2) * (h / 2);
    int hdr;
    uint8_t *ppm = malloc((size_t)w * h * 3 + 32), *p;

    assert_non_null(ppm);
    hdr = sprintf((char *)ppm, "P6 %d %d 255\n", w, h);
    p = ppm + hdr;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double c = 1.164 * (yuv[y * w + x] - 16);
            double d = u[(y / 2) * (w / 2) + x / 2] - 128;
            double e = v[(y / 2) * (w / 2) + x / 2] - 128;

            *p++ = clamp_u8(c + 1.596 * e);
            *p++ = clamp_u8(c - 0.392 * d - 0.813 * e);
            *p++ = clamp_u8(c + 2.017 * d);
        }
    *len = (size_t)(p - ppm);
    return ppm;
}

static void load_video(void)
{
    FILE *f;
    char line[512];
    int w = 640, h = 480;
    size_t fsize = (size_t)w * h * 3 / 2;
    uint8_t *yuv;

    if (vid.n > 0)
        return;
    f = fopen(shared_path(VIDEO), "rb");
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof(line), f));
    assert_non_null(strstr(line, "W640 H480"));
    yuv = malloc(fsize);
    assert_non_null(yuv);
    while (vid.n < VIDEO_MAX && fgets(line, sizeof(line), f) &&
           strncmp(line, "FRAME", 5) == 0 && fread(yuv, 1, fsize, f) == fsize) {
        size_t plen;
        uint8_t *ppm = yuv_to_ppm(yuv, w, h, &plen);

        assert_int_equal(vision_transcode(ppm, plen, 1.0, 90,
                                          &vid.jpg[vid.n], &vid.len[vid.n],
                                          NULL, 0), VISION_OK);
        vid.n++;
        free(ppm);
    }
    free(yuv);
    fclose(f);
    assert_int_equal(vid.n, 63);
}

/* A burst of four video frames, first + k * stride. */
static void video_burst(int first, int stride, int action,
                        struct vision_burst *b)
{
    const uint8_t *frames[4];
    size_t lens[4];

    load_video();
    for (int k = 0; k < 4; k++) {
        frames[k] = vid.jpg[first + k * stride];
        lens[k] = vid.len[first + k * stride];
    }
    assert_int_equal(vision_analyze_burst(fx.worker, frames, lens, 4, action,
                                          b), VISION_OK);
}

/* The sign on real photos seen turned, and on their mirror images: the
 * sign is the learner's own side, in an unmirrored picture. */
static void test_yaw_sign(void **state)
{
    struct vision_edit mirror = {.mirror = 1};
    struct vision_result r, m;

    (void)state;
    assert_int_equal(analyze_path(fx.worker, TURNED_LEFT, &r), VISION_OK);
    assert_int_equal(analyze_edited(TURNED_LEFT, &mirror, &m), VISION_OK);
    assert_true(r.yaw > 0.2f);
    assert_true(m.yaw < -0.2f);
    assert_float_equal(vision_yaw(r.landmarks), r.yaw, 1e-6);

    assert_int_equal(analyze_path(fx.worker, TURNED_RIGHT, &r), VISION_OK);
    assert_int_equal(analyze_edited(TURNED_RIGHT, &mirror, &m), VISION_OK);
    assert_true(r.yaw < -0.2f);
    assert_true(m.yaw > 0.2f);
    /* Not exactly opposite: YuNet is not mirror-symmetric (over lfw the
     * sum is 0.04 at the median, 0.16 at the 99th percentile). */
    assert_true(fabsf(r.yaw + m.yaw) < 0.25f);

    /* Nearly frontal. */
    assert_int_equal(analyze_path(fx.worker, FRONTAL, &r), VISION_OK);
    assert_true(fabsf(r.yaw) < 0.1f);
}

/* A rotation, scale, shift and corner push, as a photo held up and moved
 * about; a fixed generator, so the test is the same every run. */
static void random_pose(struct vision_edit *e, int w, int h, unsigned *seed)
{
    double cw = w + 2.0 * e->pad, ch = h + 2.0 * e->pad;
#define RND(lo, hi) ((lo) + ((hi) - (lo)) * (rand_r(seed) / (double)RAND_MAX))
    double a = RND(-0.35, 0.35), sc = RND(0.8, 1.2);
    double tx = RND(-0.1, 0.1) * cw, ty = RND(-0.1, 0.1) * ch;
    double cx[4] = {0, cw, cw, 0}, cy[4] = {0, 0, ch, ch};

    e->warp = 1;
    for (int k = 0; k < 4; k++) {
        double x = cx[k] - cw / 2, y = cy[k] - ch / 2;

        e->corners[2 * k] = sc * (cos(a) * x - sin(a) * y) + cw / 2 + tx +
                            RND(-0.06, 0.06) * cw;
        e->corners[2 * k + 1] = sc * (sin(a) * x + cos(a) * y) + ch / 2 +
                                ty + RND(-0.06, 0.06) * ch;
    }
#undef RND
}

/* Photos moved by random homographies: every frame shows the face, none
 * of the bursts is live for either action. */
static void test_planar_photo(void **state)
{
    static const char *const photos[] = {SAME_A, OTHER, TURNED_LEFT,
                                         TURNED_RIGHT};
    static struct vision_burst b;
    unsigned seed = 12345;

    (void)state;
    for (size_t i = 0; i < sizeof(photos) / sizeof(photos[0]); i++) {
        size_t len, lens[4];
        uint8_t *src = read_file(shared_path(photos[i]), &len), *jpg[4];

        for (int burst = 0; burst < 3; burst++) {
            for (int k = 0; k < 4; k++) {
                struct vision_edit e = {.pad = 75};

                random_pose(&e, 150, 150, &seed);
                assert_int_equal(vision_edit(src, len, &e, &jpg[k], &lens[k],
                                             NULL, 0), VISION_OK);
            }
            assert_int_equal(vision_analyze_burst(
                                 fx.worker, (const uint8_t *const *)jpg,
                                 lens, 4, VISION_ACTION_TURN_LEFT, &b),
                             VISION_OK);
            assert_int_equal(b.usable, 4);
            assert_false(b.live);
            vision_burst_judge(&b, VISION_ACTION_TURN_RIGHT);
            assert_false(b.live);
            assert_true(b.residual_max < 0.3f);
            for (int k = 0; k < 4; k++)
                free(jpg[k]);
        }
        free(src);
    }
}

/* The man in the shared video turns his head to his own right over
 * frames 0..21 (1.4 s) and back to his left over frames 16..37: real
 * turns, judged live for the way he turned and not for the other. */
static void test_video_turn(void **state)
{
    static struct vision_burst b;

    (void)state;
    video_burst(0, 7, VISION_ACTION_TURN_RIGHT, &b);
    assert_int_equal(b.usable, 4);
    assert_true(b.turned && !b.planar && b.live);
    assert_true(b.turn >= VISION_TURN_MIN && b.residual >= VISION_PLANAR_MAX);
    vision_burst_judge(&b, VISION_ACTION_TURN_LEFT);
    assert_false(b.turned);
    assert_false(b.live);

    video_burst(16, 7, VISION_ACTION_TURN_LEFT, &b);
    assert_true(b.live);
    assert_true(b.yaw[0] < 0 && b.yaw[3] > 0);
    vision_burst_judge(&b, VISION_ACTION_TURN_RIGHT);
    assert_false(b.live);
}

/* Every window of the video over 1.4 s: wherever the head turned at
 * least VISION_TURN_MIN one way, that way is judged live. Four copies of
 * one frame are still: never live. */
static void test_video_windows(void **state)
{
    static struct vision_burst b;
    const uint8_t *same[4];
    size_t lens[4];
    int turned = 0;

    (void)state;
    for (int first = 0; first + 21 < 63; first += 3) {
        video_burst(first, 7, VISION_ACTION_TURN_LEFT, &b);
        for (int a = VISION_ACTION_TURN_LEFT; a <= VISION_ACTION_TURN_RIGHT;
             a++) {
            vision_burst_judge(&b, a);
            turned += b.turned;
            if (b.turned && !b.live)
                fail_msg("frames %d..%d, action %d: turn %.3f residual %.3f "
                         "judged planar", first, first + 21, a, b.turn,
                         b.residual);
        }
    }
    assert_true(turned >= 14);

    for (int k = 0; k < 4; k++) {
        same[k] = vid.jpg[10];
        lens[k] = vid.len[10];
    }
    assert_int_equal(vision_analyze_burst(fx.worker, same, lens, 4,
                                          VISION_ACTION_TURN_LEFT, &b),
                     VISION_OK);
    assert_false(b.turned);
    assert_false(b.live);
}

static void test_burst_edges(void **state)
{
    static struct vision_burst b;
    static const uint8_t junk[] = "not a jpeg";
    const uint8_t *frames[VISION_BURST_MAX + 2];
    size_t lens[VISION_BURST_MAX + 2];

    (void)state;
    load_video();
    assert_int_equal(vision_analyze_burst(fx.worker, frames, lens, 0,
                                          VISION_ACTION_TURN_LEFT, &b),
                     VISION_OK);
    assert_int_equal(b.n, 0);
    assert_false(b.live);

    /* A corrupt frame is that frame's failure, not the burst's. */
    for (int k = 0; k < VISION_BURST_MAX + 2; k++) {
        frames[k] = vid.jpg[k];
        lens[k] = vid.len[k];
    }
    frames[1] = junk;
    lens[1] = sizeof(junk);
    assert_int_equal(vision_analyze_burst(fx.worker, frames, lens, 3,
                                          VISION_ACTION_NONE, &b),
                     VISION_OK);
    assert_int_equal(b.frame[1].status, VISION_BAD_IMAGE);
    assert_int_equal(b.found[1], 0);
    assert_int_equal(b.found[0], 1);
    assert_false(b.turned);

    /* Frames past the maximum are not looked at. */
    frames[1] = vid.jpg[1];
    lens[1] = vid.len[1];
    assert_int_equal(vision_analyze_burst(fx.worker, frames, lens,
                                          VISION_BURST_MAX + 2,
                                          VISION_ACTION_TURN_RIGHT, &b),
                     VISION_OK);
    assert_int_equal(b.given, VISION_BURST_MAX + 2);
    assert_int_equal(b.n, VISION_BURST_MAX);
    assert_int_equal(b.frame[0].faces, 1);
}

/* ------------------------------------------------------------------------
 * Model files
 * --------------------------------------------------------------------- */

/* Copies a shared model into dir with one byte changed. */
static void copy_corrupted(const char *dir, const char *name)
{
    char src[1200], dst[1200];
    size_t len;
    uint8_t *buf;

    snprintf(src, sizeof(src), "%s/%s", fx.models, name);
    snprintf(dst, sizeof(dst), "%s/%s", dir, name);
    buf = read_file(src, &len);
    buf[len / 2] ^= 0x01;
    write_file(dst, buf, len);
    free(buf);
}

static void link_model(const char *dir, const char *name)
{
    char src[1200], dst[1200];

    snprintf(src, sizeof(src), "%s/%s", fx.models, name);
    snprintf(dst, sizeof(dst), "%s/%s", dir, name);
    assert_int_equal(symlink(src, dst), 0);
}

static void expect_refused(const char *dir, const char *name)
{
    char err[512] = "";
    struct vision_engine *e = engine_from(dir, err, sizeof(err));

    assert_null(e);
    if (strstr(err, name) == NULL)
        fail_msg("error \"%s\" does not name %s", err, name);
}

static void test_wrong_checksum(void **state)
{
    char dir[64];

    (void)state;
    make_tmpdir(dir, sizeof(dir));
    copy_corrupted(dir, YUNET);
    link_model(dir, FR512);
    expect_refused(dir, YUNET);
    rm_tree(dir);

    make_tmpdir(dir, sizeof(dir));
    link_model(dir, YUNET);
    copy_corrupted(dir, FR512);
    expect_refused(dir, FR512);
    rm_tree(dir);
}

static void test_no_models(void **state)
{
    char dir[64], err[512] = "";

    (void)state;
    make_tmpdir(dir, sizeof(dir));
    link_model(dir, YUNET);
    assert_null(engine_from(dir, err, sizeof(err)));
    assert_non_null(strstr(err, "no recognizer"));
    assert_null(engine_from(NULL, err, sizeof(err)));
    rm_tree(dir);
}

static void test_degraded_without_yunet(void **state)
{
    char dir[64], err[512] = "";
    struct vision_engine *e;
    struct vision_worker *w;
    struct vision_result a, b;

    (void)state;
    make_tmpdir(dir, sizeof(dir));
    link_model(dir, FR512);
    e = engine_from(dir, err, sizeof(err));
    if (e == NULL)
        fail_msg("degraded engine: %s", err);
    assert_int_equal(vision_degraded(e), 1);
    assert_non_null(strstr(vision_detector_name(e), "cascade"));
    w = vision_worker_new(e, err, sizeof(err));
    assert_non_null(w);

    assert_int_equal(analyze_path(w, SAME_A, &a), VISION_OK);
    assert_int_equal(a.faces, 1);
    assert_int_equal(a.dim, 512);
    for (int i = 0; i < 10; i++)
        assert_true(a.landmarks[i] == 0);
    assert_int_equal(analyze_path(w, SAME_B, &b), VISION_OK);
    assert_true(vision_similarity(a.embedding, b.embedding, 512) >=
                vision_default_threshold(e));
    vision_worker_free(w);
    vision_engine_free(e);
    rm_tree(dir);
}

static void test_similarity(void **state)
{
    float a[4] = {1, 0, 0, 0}, b[4] = {0, 2, 0, 0}, z[4] = {0};

    (void)state;
    assert_float_equal(vision_similarity(a, a, 4), 1, 1e-6);
    assert_float_equal(vision_similarity(a, b, 4), 0, 1e-6);
    assert_float_equal(vision_similarity(a, z, 4), 0, 1e-6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_similarity),
        cmocka_unit_test_setup(test_engine_getters, need_engine),
        cmocka_unit_test_setup(test_one_face, need_engine),
        cmocka_unit_test_setup(test_same_and_other_person, need_engine),
        cmocka_unit_test_setup(test_workers_in_threads, need_engine),
        cmocka_unit_test_setup(test_group_photo, need_engine),
        cmocka_unit_test_setup(test_not_a_jpeg, need_engine),
        cmocka_unit_test_setup(test_truncated_jpeg, need_engine),
        cmocka_unit_test_setup(test_absurd_dimensions, need_engine),
        cmocka_unit_test_setup(test_max_pixels_option, need_engine),
        cmocka_unit_test_setup(test_replay_signature, need_engine),
        cmocka_unit_test_setup(test_quality_gate, need_engine),
        cmocka_unit_test_setup(test_quality_without_face, need_engine),
        cmocka_unit_test_setup(test_quality_options, need_engine),
        cmocka_unit_test_setup(test_small_image, need_engine),
        cmocka_unit_test_setup(test_yaw_sign, need_engine),
        cmocka_unit_test_setup(test_planar_photo, need_engine),
        cmocka_unit_test_setup(test_video_turn, need_engine),
        cmocka_unit_test_setup(test_video_windows, need_engine),
        cmocka_unit_test_setup(test_burst_edges, need_engine),
        cmocka_unit_test_setup(test_wrong_checksum, need_engine),
        cmocka_unit_test_setup(test_no_models, need_engine),
        cmocka_unit_test_setup(test_degraded_without_yunet, need_engine),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
