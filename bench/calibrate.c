/* Calibration of the vision module on the shared photographs: detection
 * misses, genuine and impostor cosine scores with the accept rates at fixed
 * false-accept rates, faces counted in group photos, the replay signature's
 * margins and per-stage times; with --liveness, the quality gate's pass and
 * catch rates and the liveness checks on the video and on warped photos.
 * It uses only vision.h, so it measures the daemon's own pipeline; it
 * writes nothing but its report on stdout. */

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "vision/vision.h"

#define MAX_SAMPLES 512
#define LIVE_GAP_FRAMES 15

struct sample {
    char id[64];
    char path[PATH_MAX];
    struct vision_result r;
    uint8_t *jpg;               /* video frames: the JPEG, owned */
    size_t jlen;
};

struct sample_set {
    const char *name;
    struct sample *s;
    int n;
};

struct scores {
    float *v;
    size_t n, cap;
};

static const int replay_quality[] = {40, 60, 80, 95};
static const double replay_scale[] = {0.5, 0.75, 1.0, 1.5, 2.0};

/* ------------------------------------------------------------------------
 * Helpers
 * --------------------------------------------------------------------- */

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);

    if (p == NULL) {
        perror("calloc");
        exit(1);
    }
    return p;
}

static void scores_add(struct scores *sc, float v)
{
    if (sc->n == sc->cap) {
        sc->cap = sc->cap ? 2 * sc->cap : 1024;
        sc->v = realloc(sc->v, sc->cap * sizeof(float));
        if (sc->v == NULL) {
            perror("realloc");
            exit(1);
        }
    }
    sc->v[sc->n++] = v;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;

    return (x > y) - (x < y);
}

static void scores_sort(struct scores *sc)
{
    qsort(sc->v, sc->n, sizeof(float), cmp_float);
}

static int read_all(const char *path, uint8_t **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    long size;

    if (f == NULL)
        return -1;
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    *buf = malloc(size > 0 ? (size_t)size : 1);
    *len = *buf && size >= 0 ? fread(*buf, 1, (size_t)size, f) : 0;
    fclose(f);
    if (size < 0 || *len != (size_t)size) {
        free(*buf);
        return -1;
    }
    return 0;
}

static int is_dir(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static double median_u32(uint32_t *v, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            uint32_t t = v[j];

            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n ? v[n / 2] : 0;
}

/* ------------------------------------------------------------------------
 * Loading a set: DIR/<identity>/<file>, sorted
 * --------------------------------------------------------------------- */

static int skip_name(const char *name)
{
    return name[0] == '.' || strcmp(name, "SHA256SUMS") == 0 ||
           strcmp(name, "SOURCES.md") == 0 || strcmp(name, "README") == 0 ||
           strcmp(name, "_multi") == 0;
}

static void add_files(struct sample_set *set, const char *dir,
                      const char *id)
{
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);

    if (n < 0) {
        fprintf(stderr, "%s: %s\n", dir, strerror(errno));
        return;
    }
    for (int i = 0; i < n; i++) {
        char path[PATH_MAX];

        snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
        if (!skip_name(names[i]->d_name) && !is_dir(path) &&
            set->n < MAX_SAMPLES) {
            snprintf(set->s[set->n].id, sizeof(set->s[0].id), "%s", id);
            snprintf(set->s[set->n].path, PATH_MAX, "%s", path);
            set->n++;
        }
        free(names[i]);
    }
    free(names);
}

/* Each subfolder of dir is one identity; with flat, dir holds the files. */
static void load_set(struct sample_set *set, const char *name,
                     const char *dir, int flat)
{
    struct dirent **names;
    int n;

    set->name = name;
    set->s = xcalloc(MAX_SAMPLES, sizeof(struct sample));
    set->n = 0;
    if (flat) {
        add_files(set, dir, "-");
        return;
    }
    n = scandir(dir, &names, NULL, alphasort);
    if (n < 0) {
        fprintf(stderr, "%s: %s\n", dir, strerror(errno));
        return;
    }
    for (int i = 0; i < n; i++) {
        char path[PATH_MAX];

        snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
        if (!skip_name(names[i]->d_name) && is_dir(path))
            add_files(set, path, names[i]->d_name);
        free(names[i]);
    }
    free(names);
}

static void analyze_set(struct vision_worker *w, struct sample_set *set)
{
    for (int i = 0; i < set->n; i++) {
        struct sample *s = &set->s[i];

        if (vision_analyze_file(w, s->path, &s->r) != VISION_OK)
            fprintf(stderr, "%s: %s\n", s->path, s->r.error);
    }
}

/* ------------------------------------------------------------------------
 * Verification scores
 * --------------------------------------------------------------------- */

/* A missed face scores -1: it counts against the genuine accept rate and
 * never as a false accept. */
static float pair_score(const struct sample *a, const struct sample *b)
{
    if (a->r.dim == 0 || b->r.dim == 0)
        return -1;
    return vision_similarity(a->r.embedding, b->r.embedding, a->r.dim);
}

static void pair_scores(const struct sample_set *set, struct scores *gen,
                        struct scores *imp)
{
    for (int i = 0; i < set->n; i++)
        for (int j = i + 1; j < set->n; j++) {
            float v = pair_score(&set->s[i], &set->s[j]);

            scores_add(strcmp(set->s[i].id, set->s[j].id) == 0 ? gen : imp,
                       v);
        }
}

/* The lowest threshold (accept at >= t) that accepts at most far of the
 * impostors. imp is sorted ascending. */
static float threshold_at(const struct scores *imp, double far)
{
    size_t k = (size_t)floor(far * (double)imp->n);

    if (imp->n == 0)
        return 1;
    return nextafterf(imp->v[imp->n - 1 - k], 2.0f);
}

static double accept_rate(const struct scores *gen, float t)
{
    size_t a = 0;

    for (size_t i = 0; i < gen->n; i++)
        a += gen->v[i] >= t;
    return gen->n ? 100.0 * (double)a / (double)gen->n : 0;
}

static void print_range(const char *what, const struct scores *sc)
{
    if (sc->n == 0)
        return;
    printf("  %-9s %6zu pairs  min %.3f  median %.3f  max %.3f\n", what,
           sc->n, sc->v[0], sc->v[sc->n / 2], sc->v[sc->n - 1]);
}

static void print_rates(const struct scores *gen, const struct scores *imp,
                        float deflt)
{
    static const double fars[] = {0.01, 0.001};

    printf("  at the default cos >= %.3f: TAR %.2f%%, FAR %.3f%%\n", deflt,
           accept_rate(gen, deflt), accept_rate(imp, deflt));

    for (size_t i = 0; i < sizeof(fars) / sizeof(fars[0]); i++) {
        float t = threshold_at(imp, fars[i]);

        printf("  FAR %4.1f%%: TAR %6.2f%% at cos >= %.4f\n", 100 * fars[i],
               accept_rate(gen, t), t);
    }
}

static int misses(const struct sample_set *set)
{
    int n = 0;

    for (int i = 0; i < set->n; i++)
        n += set->s[i].r.dim == 0;
    return n;
}

/* Adds the set's impostor scores to all_imp and, when keep is given, hands
 * it the genuine ones. */
static void report_set(const struct sample_set *set, struct scores *all_imp,
                       float deflt, struct scores *keep)
{
    struct scores gen = {0}, imp = {0};
    int multi = 0, raw = 0;

    for (int i = 0; i < set->n; i++) {
        multi += set->s[i].r.faces > 1;
        raw += set->s[i].r.faces_raw > 1;
    }
    printf("%s: %d images, %d without a face, %d counted with more than "
           "one face (%d with more than one detection)\n", set->name,
           set->n, misses(set), multi, raw);
    pair_scores(set, &gen, &imp);
    scores_sort(&gen);
    scores_sort(&imp);
    print_range("genuine", &gen);
    print_range("impostor", &imp);
    print_rates(&gen, &imp, deflt);
    for (size_t i = 0; all_imp && i < imp.n; i++)
        scores_add(all_imp, imp.v[i]);
    if (keep)
        *keep = gen;
    else
        free(gen.v);
    free(imp.v);
}

static void report_multi(const struct sample_set *set)
{
    printf("multi-face photos (faces / faces_raw):\n");
    for (int i = 0; i < set->n; i++) {
        const char *base = strrchr(set->s[i].path, '/');

        printf("  %-24s %d / %d\n", base ? base + 1 : set->s[i].path,
               set->s[i].r.faces, set->s[i].r.faces_raw);
    }
}

/* ------------------------------------------------------------------------
 * Video: YUV4MPEG2 4:2:0, each frame encoded as a browser would send it
 * --------------------------------------------------------------------- */

static uint8_t clamp_u8(double v)
{
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)lround(v);
}

/* One limited-range BT.601 frame as a binary PPM in memory. */
static uint8_t *yuv_to_ppm(const uint8_t *yuv, int w, int h, size_t *len)
{
    int hdr;
    char head[64];
    uint8_t *ppm, *p;
    const uint8_t *u = yuv + (size_t)w * h, *v = u + (size_t)(w / 2) * (h / 2);

    hdr = snprintf(head, sizeof(head), "P6\n%d %d\n255\n", w, h);
    *len = (size_t)hdr + (size_t)w * h * 3;
    ppm = malloc(*len);
    memcpy(ppm, head, (size_t)hdr);
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
    return ppm;
}

static int read_y4m_header(FILE *f, int *w, int *h)
{
    char line[512];

    if (fgets(line, sizeof(line), f) == NULL ||
        strncmp(line, "YUV4MPEG2 ", 10) != 0)
        return -1;
    *w = *h = 0;
    for (char *t = strtok(line, " \n"); t; t = strtok(NULL, " \n")) {
        if (t[0] == 'W')
            *w = atoi(t + 1);
        if (t[0] == 'H')
            *h = atoi(t + 1);
        if (t[0] == 'C' && strncmp(t, "C420", 4) != 0)
            return -1;
    }
    return *w > 0 && *h > 0 ? 0 : -1;
}

/* Loads every frame as a quality-90 JPEG, analysed. Returns the count. */
static int load_video(struct vision_worker *w, const char *path,
                      struct sample *frames, int max)
{
    FILE *f = fopen(path, "rb");
    int width, height, n = 0;
    char line[64];
    uint8_t *yuv;
    size_t fsize;

    if (f == NULL || read_y4m_header(f, &width, &height) < 0) {
        fprintf(stderr, "%s: not a 4:2:0 y4m\n", path);
        if (f)
            fclose(f);
        return 0;
    }
    fsize = (size_t)width * height * 3 / 2;
    yuv = malloc(fsize);
    while (n < max && fgets(line, sizeof(line), f) &&
           strncmp(line, "FRAME", 5) == 0 && fread(yuv, 1, fsize, f) == fsize) {
        size_t plen, jlen;
        uint8_t *ppm = yuv_to_ppm(yuv, width, height, &plen), *jpg;

        if (vision_transcode(ppm, plen, 1.0, 90, &jpg, &jlen, NULL, 0) == 0) {
            snprintf(frames[n].path, PATH_MAX, "frame %d", n);
            vision_analyze(w, jpg, jlen, &frames[n].r);
            frames[n].jpg = jpg;
            frames[n].jlen = jlen;
            n++;
        }
        free(ppm);
    }
    free(yuv);
    fclose(f);
    return n;
}

static void report_video(const struct sample *video, int n)
{
    int none = 0, one = 0, more = 0, raw_more = 0;

    for (int i = 0; i < n; i++) {
        none += video[i].r.faces == 0;
        one += video[i].r.faces == 1;
        more += video[i].r.faces > 1;
        raw_more += video[i].r.faces_raw > 1;
    }
    printf("video: %d frames; faces 0: %d, 1: %d, more: %d; more than one "
           "detection: %d\n", n, none, one, more, raw_more);
    for (int i = 0; i < n; i++)
        if (video[i].r.faces > 1)
            printf("  frame %d: faces %d / %d\n", i, video[i].r.faces,
                   video[i].r.faces_raw);
}

/* ------------------------------------------------------------------------
 * Replay signature
 * --------------------------------------------------------------------- */

struct replay_stats {
    struct scores replays;      /* variant against its original */
    float worst;
    char worst_what[PATH_MAX + 32];
};

static void replay_variants(struct vision_worker *w, const struct sample *s,
                            struct replay_stats *st)
{
    uint8_t *data, *jpg;
    size_t len, jlen;
    struct vision_result r;

    if (read_all(s->path, &data, &len) < 0)
        return;
    for (size_t q = 0; q < sizeof(replay_quality) / sizeof(int); q++)
        for (size_t k = 0; k < sizeof(replay_scale) / sizeof(double); k++) {
            float d;

            if (vision_transcode(data, len, replay_scale[k],
                                 replay_quality[q], &jpg, &jlen, NULL, 0))
                continue;
            if (vision_analyze(w, jpg, jlen, &r) == VISION_OK) {
                d = vision_signature_distance(s->r.signature, r.signature);
                scores_add(&st->replays, d);
                if (d > st->worst) {
                    st->worst = d;
                    snprintf(st->worst_what, sizeof(st->worst_what),
                             "%s q%d x%.2f", s->path, replay_quality[q],
                             replay_scale[k]);
                }
            }
            free(jpg);
        }
    free(data);
}

static void print_dist(const char *what, struct scores *sc)
{
    scores_sort(sc);
    if (sc->n == 0)
        return;
    printf("  %-34s %6zu  min %.3f  p1 %.3f  median %.3f  p99 %.3f  "
           "max %.3f\n", what, sc->n, sc->v[0], sc->v[sc->n / 100],
           sc->v[sc->n / 2], sc->v[sc->n - 1 - sc->n / 100],
           sc->v[sc->n - 1]);
}

static void video_pairs(const struct sample *video, int n,
                        struct scores *consecutive, struct scores *near,
                        struct scores *apart)
{
    for (int j = 0; j < n; j++)
        for (int k = j + 1; k < n; k++) {
            float d = vision_signature_distance(video[j].r.signature,
                                                video[k].r.signature);

            if (k == j + 1)
                scores_add(consecutive, d);
            else if (k - j < LIVE_GAP_FRAMES)
                scores_add(near, d);
            else
                scores_add(apart, d);
        }
}

static void report_replay(struct vision_worker *w, struct sample_set **sets,
                          int nsets, const struct sample *video, int nvideo)
{
    struct replay_stats st = {0};
    struct scores same = {0}, consecutive = {0}, near = {0}, apart = {0};
    const struct sample_set *lfw = sets[0];

    for (int i = 0; i < nsets; i++)
        for (int j = 0; j < sets[i]->n; j++)
            replay_variants(w, &sets[i]->s[j], &st);
    for (int j = 0; j < lfw->n; j++)
        for (int k = j + 1; k < lfw->n; k++)
            if (strcmp(lfw->s[j].id, lfw->s[k].id) == 0)
                scores_add(&same, vision_signature_distance(
                           lfw->s[j].r.signature, lfw->s[k].r.signature));
    video_pairs(video, nvideo, &consecutive, &near, &apart);

    printf("replay signature distance (VISION_REPLAY_DISTANCE %.3f):\n",
           VISION_REPLAY_DISTANCE);
    print_dist("re-encoded/resized vs original", &st.replays);
    printf("    worst: %s\n", st.worst_what);
    print_dist("same person, other photo (lfw)", &same);
    print_dist("video, consecutive frames", &consecutive);
    print_dist("video, 2..14 frames apart", &near);
    print_dist("video, >= 15 frames (1 s) apart", &apart);
    free(st.replays.v);
    free(same.v);
    free(consecutive.v);
    free(near.v);
    free(apart.v);
}

/* ------------------------------------------------------------------------
 * Stage times
 * --------------------------------------------------------------------- */

static void report_times(const char *what, const struct sample *s, int n)
{
    uint32_t *v = xcalloc((size_t)n + 1, sizeof(uint32_t) * 4);
    uint32_t *hdr = v, *dec = v + n, *det = v + 2 * n, *emb = v + 3 * n;

    for (int i = 0; i < n; i++) {
        hdr[i] = s[i].r.us_header;
        dec[i] = s[i].r.us_decode;
        det[i] = s[i].r.us_detect;
        emb[i] = s[i].r.us_embed;
    }
    printf("stage times, %s, median of %d (us): header %.0f  decode %.0f  "
           "detect %.0f  embed %.0f\n", what, n, median_u32(hdr, n),
           median_u32(dec, n), median_u32(det, n), median_u32(emb, n));
    free(v);
}

static void report_named_times(const struct sample_set *set)
{
    printf("decode and detect per photo (us):\n");
    for (int i = 0; i < set->n; i++) {
        const struct vision_result *r = &set->s[i].r;
        const char *base = strrchr(set->s[i].path, '/');

        printf("  %-24s %5dx%-5d decode %6u  detect %6u  embed %6u\n",
               base ? base + 1 : set->s[i].path, r->width, r->height,
               r->us_decode, r->us_detect, r->us_embed);
    }
}

/* ------------------------------------------------------------------------
 * Quality gate: pass rates on the real photos and frames, catch rates on
 * darkened, flattened, blurred and shrunk copies of them
 * --------------------------------------------------------------------- */

struct variant {
    const char *name;
    struct vision_edit edit;
    int must_catch;             /* counted in the catch rate */
};

static const struct variant variants[] = {
    {"dark x0.15", {.gain = 0.15}, 1},
    {"dark x0.3", {.gain = 0.3}, 0},
    {"contrast x0.2", {.contrast = 0.2}, 1},
    {"contrast x0.35", {.contrast = 0.35}, 0},
    {"blur sigma 4", {.blur_sigma = 4}, 1},
    {"blur sigma 6", {.blur_sigma = 6}, 1},
    {"blur sigma 2", {.blur_sigma = 2}, 0},
    {"blur sigma 1", {.blur_sigma = 1}, 0},
    {"shrunk x0.25", {.scale = 0.25}, 1},
    {"jpeg q15", {.quality = 15}, 0},
};

#define NVARIANTS (sizeof(variants) / sizeof(variants[0]))
#define NQUALITY 6

/* What the daemon would answer for r against the genuine embedding ref. */
enum gate_class { G_BAD, G_LOW, G_NOFACE, G_MATCH, G_MISMATCH, G_NCLASS };

struct gate_tally {
    int n;
    int cls[G_NCLASS];
    int hint[NQUALITY];
    int mismatch_ungated;       /* a face, under the threshold, gate or not */
    struct scores bright, contrast, sharp, brisque, width;
};

static enum gate_class classify(const struct vision_result *r,
                                const float *ref, float t)
{
    if (r->status != VISION_OK)
        return G_BAD;
    if (r->quality != VISION_QUALITY_OK)
        return G_LOW;
    if (r->faces == 0 || r->dim == 0)
        return G_NOFACE;
    return vision_similarity(r->embedding, ref, r->dim) >= t ? G_MATCH
                                                               : G_MISMATCH;
}

static void tally_add(struct gate_tally *g, const struct vision_result *r,
                      const float *ref, float t)
{
    enum gate_class c = classify(r, ref, t);

    if (getenv("CALIBRATE_VERBOSE") &&
        (ref == r->embedding ? c != G_MATCH : c != G_LOW))
        printf("      %s: faces %d q %d bright %.1f contrast %.1f sharp "
               "%.1f brisque %.1f width %.0f cos %.3f\n",
               c == G_LOW ? "LOW" : c == G_NOFACE ? "NO_FACE"
               : c == G_MATCH ? "MATCH" : c == G_BAD ? "BAD" : "MISMATCH",
               r->faces, r->quality, r->brightness, r->contrast,
               r->sharpness, r->brisque, r->box[2],
               r->dim ? vision_similarity(r->embedding, ref, r->dim) : 0);
    g->n++;
    g->cls[c]++;
    if (c == G_LOW && r->quality < NQUALITY)
        g->hint[r->quality]++;
    if (r->status == VISION_OK && r->dim > 0 &&
        vision_similarity(r->embedding, ref, r->dim) < t)
        g->mismatch_ungated++;
    if (r->status != VISION_OK || r->faces == 0)
        return;
    scores_add(&g->bright, r->brightness);
    scores_add(&g->contrast, r->contrast);
    scores_add(&g->sharp, r->sharpness);
    if (r->brisque >= 0)
        scores_add(&g->brisque, r->brisque);
    scores_add(&g->width, r->box[2]);
}

static float quantile(struct scores *sc, double q)
{
    size_t k;

    if (sc->n == 0)
        return NAN;
    scores_sort(sc);
    k = (size_t)floor(q * (double)(sc->n - 1) + 0.5);
    return sc->v[k];
}

static double pct(int a, int n)
{
    return n ? 100.0 * a / n : 0;
}

static void print_metric(const char *what, struct scores *sc)
{
    if (sc->n == 0)
        return;
    printf("      %-10s min %7.1f  p1 %7.1f  p50 %7.1f  p99 %7.1f  "
           "max %7.1f\n", what, quantile(sc, 0), quantile(sc, 0.01),
           quantile(sc, 0.5), quantile(sc, 0.99), quantile(sc, 1));
}

static void tally_print(const char *set, const char *what,
                        struct gate_tally *g)
{
    printf("  %-12s %-15s n %4d  LOW_QUALITY %6.2f%% (dark %d, contrast %d, "
           "blurry %d, small %d, brisque %d)  NO_FACE %d  MATCH %d  "
           "MISMATCH %d  [no gate: MISMATCH %d]  BAD %d\n", set, what, g->n,
           pct(g->cls[G_LOW], g->n), g->hint[VISION_QUALITY_TOO_DARK],
           g->hint[VISION_QUALITY_LOW_CONTRAST],
           g->hint[VISION_QUALITY_BLURRY],
           g->hint[VISION_QUALITY_FACE_TOO_SMALL],
           g->hint[VISION_QUALITY_POOR_IMAGE], g->cls[G_NOFACE],
           g->cls[G_MATCH], g->cls[G_MISMATCH], g->mismatch_ungated,
           g->cls[G_BAD]);
    print_metric("brightness", &g->bright);
    print_metric("contrast", &g->contrast);
    print_metric("sharpness", &g->sharp);
    print_metric("brisque", &g->brisque);
    print_metric("face width", &g->width);
}

static void tally_free(struct gate_tally *g)
{
    free(g->bright.v);
    free(g->contrast.v);
    free(g->sharp.v);
    free(g->brisque.v);
    free(g->width.v);
}

/* The sample's bytes: the frame's JPEG, or the file. Caller frees. */
static int sample_bytes(const struct sample *s, uint8_t **buf, size_t *len)
{
    if (s->jpg != NULL) {
        *buf = malloc(s->jlen);
        if (*buf == NULL)
            return -1;
        memcpy(*buf, s->jpg, s->jlen);
        *len = s->jlen;
        return 0;
    }
    return read_all(s->path, buf, len);
}

static void report_gate_set(struct vision_worker *w, const char *name,
                            const struct sample *s, int n, float t,
                            int *caught, int *must)
{
    struct gate_tally orig = {0}, var[NVARIANTS];

    memset(var, 0, sizeof(var));
    for (int i = 0; i < n; i++) {
        uint8_t *data, *jpg;
        size_t len, jlen;

        tally_add(&orig, &s[i].r, s[i].r.embedding, t);
        if (s[i].r.dim == 0 || sample_bytes(&s[i], &data, &len) < 0)
            continue;
        for (size_t v = 0; v < NVARIANTS; v++) {
            struct vision_result r;

            if (vision_edit(data, len, &variants[v].edit, &jpg, &jlen, NULL,
                            0) != VISION_OK)
                continue;
            vision_analyze(w, jpg, jlen, &r);
            tally_add(&var[v], &r, s[i].r.embedding, t);
            if (variants[v].must_catch) {
                (*must)++;
                *caught += classify(&r, s[i].r.embedding, t) == G_LOW;
            }
            free(jpg);
        }
        free(data);
    }
    tally_print(name, "original", &orig);
    tally_free(&orig);
    for (size_t v = 0; v < NVARIANTS; v++) {
        tally_print(name, variants[v].name, &var[v]);
        tally_free(&var[v]);
    }
}

static uint32_t total_us(const struct vision_result *r)
{
    return r->us_header + r->us_decode + r->us_detect + r->us_embed;
}

static void report_gate_times(const char *what, const struct sample *s, int n)
{
    uint32_t *q = xcalloc((size_t)n + 1, sizeof(uint32_t));
    uint32_t *b = xcalloc((size_t)n + 1, sizeof(uint32_t));
    uint32_t *t = xcalloc((size_t)n + 1, sizeof(uint32_t));
    int k = 0;

    for (int i = 0; i < n; i++) {
        if (s[i].r.faces == 0)
            continue;
        q[k] = s[i].r.us_quality;
        t[k] = total_us(&s[i].r);
        b[k++] = s[i].r.us_brisque;
    }
    printf("times, %s, median of %d (us): whole image %.0f, of which the "
           "gate %.0f, of which BRISQUE %.0f\n", what, k, median_u32(t, k),
           median_u32(q, k), median_u32(b, k));
    free(q);
    free(b);
    free(t);
}

/* ------------------------------------------------------------------------
 * Liveness: yaw sign, real turns in the video, flat photos moved about
 * --------------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static double rnd(double lo, double hi)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return lo + (hi - lo) * (double)(rng_state >> 11) / 9007199254740992.0;
}

static void report_yaw_sign(struct vision_worker *w, const struct sample *s,
                            int n, const char *name)
{
    int judged = 0, flipped = 0, turned = 0;
    struct scores sum = {0};

    for (int i = 0; i < n; i++) {
        struct vision_edit e = {.mirror = 1};
        struct vision_result r;
        uint8_t *data, *jpg;
        size_t len, jlen;

        if (s[i].r.faces != 1 || sample_bytes(&s[i], &data, &len) < 0)
            continue;
        if (vision_edit(data, len, &e, &jpg, &jlen, NULL, 0) == VISION_OK) {
            vision_analyze(w, jpg, jlen, &r);
            if (r.faces == 1) {
                judged++;
                scores_add(&sum, fabsf(s[i].r.yaw + r.yaw));
                if (fabsf(s[i].r.yaw) >= 0.1f) {
                    turned++;
                    flipped += (s[i].r.yaw > 0) != (r.yaw > 0);
                }
            }
            free(jpg);
        }
        free(data);
    }
    printf("yaw sign, %s: %d faces and their mirror images; |yaw + mirrored "
           "yaw| median %.3f p99 %.3f; of %d with |yaw| >= 0.1, %d change "
           "sign\n", name, judged, quantile(&sum, 0.5), quantile(&sum, 0.99),
           turned, flipped);
    free(sum.v);
}

/* The frontal-most frame with one face: the video's "enrolment". */
static int frontal_frame(const struct sample *video, int n)
{
    int best = -1;

    for (int i = 0; i < n; i++)
        if (video[i].r.faces == 1 &&
            (best < 0 || fabsf(video[i].r.yaw) < fabsf(video[best].r.yaw)))
            best = i;
    return best;
}

static float burst_min_similarity(const struct vision_burst *b,
                                  const float *ref)
{
    float m = 2;

    for (int i = 0; i < b->n; i++)
        if (b->frame[i].dim > 0)
            m = fminf(m, vision_similarity(b->frame[i].embedding, ref,
                                           b->frame[i].dim));
    return m;
}

/* The lowest similarity of a frame to the one before it. */
static float burst_min_adjacent(const struct vision_burst *b)
{
    float m = 2;

    for (int i = 1; i < b->n; i++)
        if (b->frame[i].dim > 0 && b->frame[i - 1].dim > 0)
            m = fminf(m, vision_similarity(b->frame[i].embedding,
                                           b->frame[i - 1].embedding,
                                           b->frame[i].dim));
    return m;
}

struct live_tally {
    int windows, turned[3], live[3], spoof_turned[3];
    struct scores res_turned, min_enrol, min_adjacent;
    uint32_t us[256], own[256];
    int nus;
};

static void video_window(struct vision_worker *w, const struct sample *video,
                         int first, int stride, const float *ref,
                         struct live_tally *lt, int verbose)
{
    static struct vision_burst b;
    const uint8_t *frames[4];
    size_t lens[4];
    int live[3] = {0}, turned[3] = {0};
    float turn[3] = {0}, res[3] = {0};

    for (int k = 0; k < 4; k++) {
        frames[k] = video[first + k * stride].jpg;
        lens[k] = video[first + k * stride].jlen;
    }
    vision_analyze_burst(w, frames, lens, 4, VISION_ACTION_TURN_LEFT, &b);
    if (lt->nus < 256) {
        lt->own[lt->nus] = 0;
        for (int k = 0; k < 4; k++)
            lt->own[lt->nus] += total_us(&b.frame[k]);
        lt->us[lt->nus++] = b.us_total;
    }
    for (int a = VISION_ACTION_TURN_LEFT; a <= VISION_ACTION_TURN_RIGHT; a++) {
        vision_burst_judge(&b, a);
        live[a] = b.live;
        turned[a] = b.turned;
        turn[a] = b.turn;
        res[a] = b.residual;
        lt->turned[a] += b.turned;
        lt->live[a] += b.live;
        lt->spoof_turned[a] += b.turned && !b.live;
        if (b.turned)
            scores_add(&lt->res_turned, b.residual);
    }
    lt->windows++;
    if (verbose)
        printf("  frames %2d..%2d yaw %+.2f %+.2f %+.2f %+.2f  left: turn "
               "%+.2f res %.2f %s  right: turn %+.2f res %.2f %s  min cos "
               "%.3f, to frame 0 %.3f, adjacent %.3f\n", first,
               first + 3 * stride, b.yaw[0], b.yaw[1], b.yaw[2], b.yaw[3],
               turn[1], res[1], live[1] ? "LIVE" : turned[1] ? "planar" : "-",
               turn[2], res[2], live[2] ? "LIVE" : turned[2] ? "planar" : "-",
               burst_min_similarity(&b, ref),
               burst_min_similarity(&b, b.frame[0].embedding),
               burst_min_adjacent(&b));
    scores_add(&lt->min_enrol, burst_min_similarity(&b, ref));
    scores_add(&lt->min_adjacent, burst_min_adjacent(&b));
}

static void report_video_liveness(struct vision_worker *w,
                                  const struct sample *video, int n, float t)
{
    int enrol = frontal_frame(video, n);
    static const int strides[] = {5, 7};

    if (enrol < 0)
        return;
    printf("video bursts of 4 frames; identity against frame %d (yaw "
           "%+.3f), threshold %.3f\n", enrol, video[enrol].r.yaw, t);
    for (size_t k = 0; k < sizeof(strides) / sizeof(int); k++) {
        struct live_tally lt = {0};

        printf(" stride %d frames (%.2f s between frames, %.2f s a burst):\n",
               strides[k], strides[k] / 15.0, 3 * strides[k] / 15.0);
        for (int i = 0; i + 3 * strides[k] < n; i++)
            video_window(w, video, i, strides[k], video[enrol].r.embedding,
                         &lt, strides[k] == 7);
        printf("  %d windows: turned left in %d (judged live %d), right in "
               "%d (live %d); residual of turns: min %.3f p5 %.3f median "
               "%.3f; burst time median %.0f us\n", lt.windows,
               lt.turned[1], lt.live[1], lt.turned[2], lt.live[2],
               quantile(&lt.res_turned, 0), quantile(&lt.res_turned, 0.05),
               quantile(&lt.res_turned, 0.5), median_u32(lt.us, lt.nus));
        printf("  burst of 4 frames median %.0f us, of which the frames' own "
               "pipeline %.0f us (the rest: refining landmarks, motion)\n",
               median_u32(lt.us, lt.nus), median_u32(lt.own, lt.nus));
        printf("  lowest cos of a window's frames: to the frontal frame min "
               "%.3f p5 %.3f median %.3f; to the frame before min %.3f p5 "
               "%.3f median %.3f\n", quantile(&lt.min_enrol, 0),
               quantile(&lt.min_enrol, 0.05), quantile(&lt.min_enrol, 0.5),
               quantile(&lt.min_adjacent, 0), quantile(&lt.min_adjacent, 0.05),
               quantile(&lt.min_adjacent, 0.5));
        free(lt.res_turned.v);
        free(lt.min_enrol.v);
        free(lt.min_adjacent.v);
    }
}

/* Similarity to the frontal frame against |yaw|, frame by frame. */
static void report_video_identity(const struct sample *video, int n, float t)
{
    static const float edges[] = {0, 0.1f, 0.2f, 0.3f, 0.45f, 0.8f, 10};
    int enrol = frontal_frame(video, n);

    if (enrol < 0)
        return;
    printf("video frames against frame %d by |yaw|:\n", enrol);
    for (int b = 0; b + 1 < (int)(sizeof(edges) / sizeof(float)); b++) {
        struct scores sc = {0};
        int below = 0;

        for (int i = 0; i < n; i++) {
            float y = fabsf(video[i].r.yaw), v;

            if (i == enrol || video[i].r.dim == 0 || y < edges[b] ||
                y >= edges[b + 1])
                continue;
            v = vision_similarity(video[i].r.embedding,
                                  video[enrol].r.embedding, 512);
            scores_add(&sc, v);
            below += v < t;
        }
        if (sc.n)
            printf("  |yaw| %.2f-%.2f: %3zu frames, cos min %.3f median "
                   "%.3f, under %.2f: %d\n", edges[b], edges[b + 1], sc.n,
                   quantile(&sc, 0), quantile(&sc, 0.5), t, below);
        free(sc.v);
    }
}

/* How often an impostor pair of lfw and ORL reaches a low floor. */
static void report_impostor_tail(struct sample_set **sets, int nsets)
{
    static const float floors[] = {0.1f, 0.15f, 0.2f, 0.25f, 0.3f};
    struct scores imp = {0}, gen = {0};

    for (int i = 0; i < nsets; i++)
        pair_scores(sets[i], &gen, &imp);
    printf("impostor pairs of lfw and ORL (%zu) at or above:", imp.n);
    for (size_t k = 0; k < sizeof(floors) / sizeof(float); k++)
        printf(" %.2f: %.2f%%", floors[k], accept_rate(&imp, floors[k]));
    printf("\n");
    free(imp.v);
    free(gen.v);
}

/* Genuine lfw pairs by the larger |yaw| of the two. */
static void report_lfw_identity(const struct sample_set *set, float t)
{
    static const float edges[] = {0, 0.1f, 0.2f, 0.3f, 0.45f, 0.8f, 10};

    printf("lfw genuine pairs by the larger |yaw| of the two:\n");
    for (int b = 0; b + 1 < (int)(sizeof(edges) / sizeof(float)); b++) {
        struct scores sc = {0};

        for (int i = 0; i < set->n; i++)
            for (int j = i + 1; j < set->n; j++) {
                float y = fmaxf(fabsf(set->s[i].r.yaw),
                                fabsf(set->s[j].r.yaw));

                if (strcmp(set->s[i].id, set->s[j].id) != 0 ||
                    set->s[i].r.dim == 0 || set->s[j].r.dim == 0 ||
                    y < edges[b] || y >= edges[b + 1])
                    continue;
                scores_add(&sc, pair_score(&set->s[i], &set->s[j]));
            }
        if (sc.n)
            printf("  |yaw| %.2f-%.2f: %4zu pairs, cos p5 %.3f median %.3f, "
                   "accepted at %.2f: %.1f%%\n", edges[b], edges[b + 1], sc.n,
                   quantile(&sc, 0.05), quantile(&sc, 0.5), t,
                   accept_rate(&sc, t));
        free(sc.v);
    }
}

/* A photo held up and moved: a grey border half its size around it, then
 * a random pose (rotation up to 20 degrees, scale 0.8-1.2, a shift of up
 * to a tenth, each corner pushed up to 6% for perspective). */
static void random_pose(struct vision_edit *e, int w, int h)
{
    double cw = w + 2.0 * e->pad, ch = h + 2.0 * e->pad;
    double a = rnd(-0.35, 0.35), sc = rnd(0.8, 1.2);
    double tx = rnd(-0.1, 0.1) * cw, ty = rnd(-0.1, 0.1) * ch;
    double cx[4] = {0, cw, cw, 0}, cy[4] = {0, 0, ch, ch};

    e->warp = 1;
    for (int k = 0; k < 4; k++) {
        double x = cx[k] - cw / 2, y = cy[k] - ch / 2;

        e->corners[2 * k] = sc * (cos(a) * x - sin(a) * y) + cw / 2 + tx +
                            rnd(-0.06, 0.06) * cw;
        e->corners[2 * k + 1] = sc * (sin(a) * x + cos(a) * y) + ch / 2 +
                                ty + rnd(-0.06, 0.06) * ch;
    }
}

static void report_planar_set(struct vision_worker *w,
                              const struct sample_set *set, int bursts)
{
    static struct vision_burst b;
    int tried = 0, live[3] = {0}, turned[3] = {0}, frames = 0, found = 0;
    struct scores turn = {0}, res = {0}, resmax = {0};

    for (int i = 0; i < set->n; i++) {
        const struct vision_result *o = &set->s[i].r;
        uint8_t *data, *jpg[4];
        size_t len, lens[4];

        if (o->faces != 1 || read_all(set->s[i].path, &data, &len) < 0)
            continue;
        for (int k = 0; k < bursts; k++) {
            int ok = 1;

            for (int f = 0; f < 4; f++) {
                struct vision_edit e = {.pad = o->width / 2};

                random_pose(&e, o->width, o->height);
                if (vision_edit(data, len, &e, &jpg[f], &lens[f], NULL,
                                0) != VISION_OK)
                    ok = 0;
            }
            if (ok) {
                vision_analyze_burst(w, (const uint8_t *const *)jpg, lens, 4,
                                     VISION_ACTION_TURN_LEFT, &b);
                tried++;
                for (int f = 0; f < 4; f++) {
                    frames++;
                    found += b.found[f];
                }
                scores_add(&resmax, b.residual_max);
                for (int a = 1; a <= 2; a++) {
                    vision_burst_judge(&b, a);
                    live[a] += b.live;
                    turned[a] += b.turned;
                    scores_add(&turn, b.turn);
                    if (b.turned)
                        scores_add(&res, b.residual);
                }
            }
            for (int f = 0; f < 4; f++)
                free(jpg[f]);
        }
        free(data);
    }
    printf("flat photo moved, %s: %d bursts of 4 (faces found in %d of %d "
           "frames); judged live: left %d, right %d (%.2f%% of %d "
           "challenges); turned: left %d, right %d; turn p50 %.3f p99 %.3f "
           "max %.3f; residual of the turned p50 %.3f max %.3f; largest "
           "residual of any pair p50 %.3f p99 %.3f\n", set->name, tried,
           found, frames, live[1], live[2],
           pct(live[1] + live[2], 2 * tried), 2 * tried, turned[1],
           turned[2], quantile(&turn, 0.5), quantile(&turn, 0.99),
           quantile(&turn, 1), quantile(&res, 0.5), quantile(&res, 1),
           quantile(&resmax, 0.5), quantile(&resmax, 0.99));
    free(turn.v);
    free(res.v);
    free(resmax.v);
}

/* ORL photographs each person at several head angles: four of one
 * person's photos in order of yaw stand for a head turning that way. The
 * person's most frontal photo is the enrolment, the first of the four the
 * evidence frame. A sequence spanning at least VISION_TURN_MIN of yaw is
 * a genuine turn that should pass; one spanning less is a learner who did
 * not turn enough, and SPOOF is the right answer for it. */
struct orl_tally {
    int seq[2], live[2], ident[2], evidence[2], accepted[2];
    struct scores span, res;
};

static int by_yaw(const void *a, const void *b)
{
    const struct sample *x = *(const struct sample *const *)a;
    const struct sample *y = *(const struct sample *const *)b;

    return (x->r.yaw > y->r.yaw) - (x->r.yaw < y->r.yaw);
}

static void orl_sequence(struct vision_worker *w, struct sample **four,
                         const struct sample *enrol, int action, float t,
                         struct orl_tally *ot)
{
    static struct vision_burst b;
    uint8_t *data[4] = {0};
    size_t lens[4];
    int ok = 1, genuine, ident;
    float span;

    /* ORL is PGM; a client sends JPEGs (quality 90, as vision_edit's). */
    for (int k = 0; k < 4; k++) {
        struct vision_edit none = {0};
        uint8_t *raw;
        size_t rlen;

        if (read_all(four[k]->path, &raw, &rlen) < 0) {
            ok = 0;
            continue;
        }
        if (vision_edit(raw, rlen, &none, &data[k], &lens[k], NULL, 0) !=
            VISION_OK)
            ok = 0;
        free(raw);
    }
    if (ok) {
        vision_analyze_burst(w, (const uint8_t *const *)data, lens, 4,
                             action, &b);
        span = fabsf(four[3]->r.yaw - four[0]->r.yaw);
        genuine = span >= VISION_TURN_MIN;
        scores_add(&ot->span, span);
        ot->seq[genuine]++;
        ot->live[genuine] += b.live;
        if (b.turned)
            scores_add(&ot->res, b.residual);
        ident = burst_min_similarity(&b, enrol->r.embedding) >=
                    VISION_BURST_FLOOR_ENROLLED &&
                burst_min_adjacent(&b) >= VISION_BURST_FLOOR_ADJACENT;
        ot->ident[genuine] += ident;
        ot->evidence[genuine] +=
            vision_similarity(b.frame[0].embedding, enrol->r.embedding,
                              b.frame[0].dim) >= t;
        ot->accepted[genuine] +=
            b.live && ident &&
            vision_similarity(b.frame[0].embedding, enrol->r.embedding,
                              b.frame[0].dim) >= t;
    }
    for (int k = 0; k < 4; k++)
        free(data[k]);
}

static void report_orl_turns(struct vision_worker *w,
                             const struct sample_set *set, float t, int per)
{
    struct orl_tally ot[3] = {0};
    struct sample *mine[MAX_SAMPLES], *four[4];

    for (int i = 0; i < set->n;) {
        int n = 0, j = i, enrol = -1;

        while (j < set->n && strcmp(set->s[j].id, set->s[i].id) == 0) {
            if (set->s[j].r.faces == 1 && set->s[j].r.dim > 0)
                mine[n++] = &set->s[j];
            j++;
        }
        i = j;
        if (n < 5)
            continue;
        for (int k = 0; k < n; k++)
            if (enrol < 0 || fabsf(mine[k]->r.yaw) < fabsf(mine[enrol]->r.yaw))
                enrol = k;
        {
            struct sample *e = mine[enrol];

            mine[enrol] = mine[--n];
            qsort(mine, (size_t)n, sizeof(mine[0]), by_yaw);
            for (int s = 0; s < per; s++) {
                int pick[4], c = 0;

                /* Four distinct photos, kept in order of yaw. */
                while (c < 4) {
                    int v = (int)rnd(0, n), dup = 0;

                    for (int q = 0; q < c; q++)
                        dup |= pick[q] == v;
                    if (!dup && v < n)
                        pick[c++] = v;
                }
                for (int a = 0; a < 4; a++)
                    for (int b2 = a + 1; b2 < 4; b2++)
                        if (pick[b2] < pick[a]) {
                            int tmp = pick[a];

                            pick[a] = pick[b2];
                            pick[b2] = tmp;
                        }
                /* Rising yaw turns the head to the learner's left. */
                for (int k = 0; k < 4; k++)
                    four[k] = mine[pick[k]];
                orl_sequence(w, four, e, VISION_ACTION_TURN_LEFT, t, &ot[1]);
                for (int k = 0; k < 4; k++)
                    four[k] = mine[pick[3 - k]];
                orl_sequence(w, four, e, VISION_ACTION_TURN_RIGHT, t,
                             &ot[2]);
            }
        }
    }
    for (int a = 1; a <= 2; a++) {
        const char *way = a == 1 ? "left" : "right";

        printf("ORL as turning heads, %s: %d sequences spanning >= %.2f of "
               "yaw: judged live %d (%.1f%%), identity floors kept %d, "
               "evidence frame matches %d, accepted (all three) %d "
               "(%.1f%%); %d spanning less: judged live %d (%.1f%%), "
               "accepted %d; span p50 %.3f; residual of the turned p5 "
               "%.3f p50 %.3f\n", way, ot[a].seq[1], VISION_TURN_MIN,
               ot[a].live[1], pct(ot[a].live[1], ot[a].seq[1]),
               ot[a].ident[1], ot[a].evidence[1], ot[a].accepted[1],
               pct(ot[a].accepted[1], ot[a].seq[1]), ot[a].seq[0],
               ot[a].live[0], pct(ot[a].live[0], ot[a].seq[0]),
               ot[a].accepted[0], quantile(&ot[a].span, 0.5),
               quantile(&ot[a].res, 0.05), quantile(&ot[a].res, 0.5));
        free(ot[a].span.v);
        free(ot[a].res.v);
    }
}

/* How pose bears on verification: the probe's |yaw| in bins, against
 * frontal enrolments (|yaw| under 0.2) of the same person (genuine) and
 * of others (impostors). A pose gate turning a non-match with |yaw| over
 * a bound into LOW_QUALITY saves the genuine non-matches of the upper
 * bins from a flag, and defers (does not miss) the impostors there. */
#define POSE_BINS 5
static const float pose_edge[POSE_BINS] = {0.0f, 0.2f, 0.3f, 0.45f, 0.6f};

static int pose_bin(float yaw)
{
    int k = POSE_BINS - 1;

    while (k > 0 && fabsf(yaw) < pose_edge[k])
        k--;
    return k;
}

static void report_pose(struct sample_set **sets, int nsets, float t)
{
    for (int si = 0; si < nsets; si++) {
        const struct sample_set *set = sets[si];
        long probes[POSE_BINS] = {0}, gen[POSE_BINS] = {0};
        long gen_miss[POSE_BINS] = {0}, imp[POSE_BINS] = {0};
        long imp_hit[POSE_BINS] = {0};

        for (int i = 0; i < set->n; i++) {
            const struct sample *p = &set->s[i];
            int k = pose_bin(p->r.yaw);

            if (p->r.faces != 1 || p->r.dim == 0)
                continue;
            probes[k]++;
            if (fabsf(p->r.yaw) >= VISION_POSE_MAX)
                printf("  turned: %s yaw %+.3f\n", p->path, p->r.yaw);
            for (int j = 0; j < set->n; j++) {
                const struct sample *e = &set->s[j];
                float c;

                if (j == i || e->r.faces != 1 || e->r.dim == 0 ||
                    fabsf(e->r.yaw) >= 0.2f)
                    continue;
                c = vision_similarity(p->r.embedding, e->r.embedding,
                                      p->r.dim);
                if (strcmp(p->id, e->id) == 0) {
                    gen[k]++;
                    gen_miss[k] += c < t;
                } else {
                    imp[k]++;
                    imp_hit[k] += c >= t;
                }
            }
        }
        printf("pose, %s (threshold %.3f): probe |yaw| bin: probes, genuine "
               "pairs vs frontal enrolments (non-matches), impostor pairs "
               "(false matches)\n", set->name, t);
        for (int k = 0; k < POSE_BINS; k++)
            printf("  |yaw| >= %.2f%s: %ld probes; genuine %ld (%ld = "
                   "%.2f%% MISMATCH); impostor %ld (%ld accepted)\n",
                   pose_edge[k], k + 1 < POSE_BINS ? "" : " (top)",
                   probes[k], gen[k], gen_miss[k], pct((int)gen_miss[k],
                                                       (int)gen[k]),
                   imp[k], imp_hit[k]);
    }
}

/* A learner sitting still in front of a live camera, at its most
 * demanding: one photo twice, each time with sensor noise of its own
 * (sigma grey levels), encoded as a browser does (quality 92). The
 * thumbnail signature cannot tell such a pair from a replay; this says by
 * how much. (A grain signature, the image less its 3x3 blur sampled at
 * its own size, was tried: live pairs of sigma 1-2 correlated 0.93-0.99,
 * above the 0.78-0.92 of re-encodes at quality 40-80, so it was dropped.) */
static const double still_sigma[] = {1, 2, 3, 5};

static int capture(const uint8_t *data, size_t len, double sigma,
                   uint64_t seed, struct vision_worker *w,
                   struct vision_result *r)
{
    struct vision_edit e = {.noise_sigma = sigma, .noise_seed = seed,
                            .quality = 92};
    uint8_t *jpg;
    size_t jlen;
    int rc;

    if (vision_edit(data, len, &e, &jpg, &jlen, NULL, 0) != VISION_OK)
        return -1;
    rc = vision_analyze(w, jpg, jlen, r) == VISION_OK ? 0 : -1;
    free(jpg);
    return rc;
}

static void still_one(struct vision_worker *w, const uint8_t *data,
                      size_t len, struct scores dist[4], uint64_t seed)
{
    static struct vision_result a, b;

    for (int k = 0; k < 4; k++)
        if (capture(data, len, still_sigma[k], seed * 8 + 1, w, &a) == 0 &&
            capture(data, len, still_sigma[k], seed * 8 + 2, w, &b) == 0)
            scores_add(&dist[k],
                       vision_signature_distance(a.signature, b.signature));
}

static void report_still(struct vision_worker *w, const struct sample_set *lfw,
                         const struct sample *video, int nvideo)
{
    struct scores dl[4] = {0}, dv[4] = {0};

    for (int i = 0; i < lfw->n && i < 120; i++) {
        uint8_t *data;
        size_t len;

        if (read_all(lfw->s[i].path, &data, &len) < 0)
            continue;
        still_one(w, data, len, dl, (uint64_t)i);
        free(data);
    }
    for (int i = 0; i < nvideo; i += 2)
        still_one(w, video[i].jpg, video[i].jlen, dv, (uint64_t)(1000 + i));
    for (int k = 0; k < 4; k++) {
        printf("still learner, noise sigma %.0f: lfw %zu pairs, thumbnail "
               "distance p50 %.3f max %.3f; video %zu pairs, p50 %.3f max "
               "%.3f (replay under %.2f)\n", still_sigma[k], dl[k].n,
               quantile(&dl[k], 0.5), quantile(&dl[k], 1), dv[k].n,
               quantile(&dv[k], 0.5), quantile(&dv[k], 1),
               VISION_REPLAY_DISTANCE);
        free(dl[k].v);
        free(dv[k].v);
    }
}

/* Added cost, measured side by side on the video's frames: one image
 * with the gate off and on (BRISQUE within it), and bursts of four, in
 * alternating rounds so that other work on the machine spreads evenly. */
static void report_costs(const char *models, const struct sample *video,
                         int n)
{
    static struct vision_burst b;
    struct vision_options opt = {0};
    struct vision_engine *off_e, *on_e;
    struct vision_worker *off, *on;
    struct vision_result r;
    char err[256];
    int rounds = 3, k = 0, m = 0;
    uint32_t *t_off = xcalloc((size_t)(rounds * n), sizeof(uint32_t));
    uint32_t *t_on = xcalloc((size_t)(rounds * n), sizeof(uint32_t));
    uint32_t *t_burst = xcalloc((size_t)(rounds * n), sizeof(uint32_t));
    uint32_t *t_brisque = xcalloc((size_t)(rounds * n), sizeof(uint32_t));

    opt.models_dir = models;
    opt.min_face_px = opt.min_brightness = opt.min_contrast = -1;
    opt.min_sharpness = opt.max_brisque = -1;
    off_e = vision_engine_new(&opt, err, sizeof(err));
    off = off_e ? vision_worker_new(off_e, err, sizeof(err)) : NULL;
    opt = (struct vision_options){.models_dir = models};
    on_e = vision_engine_new(&opt, err, sizeof(err));
    on = off && on_e ? vision_worker_new(on_e, err, sizeof(err)) : NULL;
    if (on == NULL) {
        fprintf(stderr, "costs: %s\n", err);
        exit(1);
    }
    for (int round = 0; round < rounds; round++)
        for (int i = 0; i < n; i++) {
            const uint8_t *frames[4];
            size_t lens[4];

            vision_analyze(off, video[i].jpg, video[i].jlen, &r);
            t_off[k] = total_us(&r);
            vision_analyze(on, video[i].jpg, video[i].jlen, &r);
            t_on[k] = total_us(&r);
            t_brisque[k++] = r.us_brisque;
            if (i + 21 >= n)
                continue;
            for (int f = 0; f < 4; f++) {
                frames[f] = video[i + 7 * f].jpg;
                lens[f] = video[i + 7 * f].jlen;
            }
            vision_analyze_burst(on, frames, lens, 4,
                                 VISION_ACTION_TURN_LEFT, &b);
            t_burst[m++] = b.us_total;
        }
    printf("cost per snapshot, 640x480 video frames, %d rounds, median (us): "
           "gate off %.0f, gate on %.0f (BRISQUE %.0f); burst of 4 %.0f\n",
           rounds, median_u32(t_off, k), median_u32(t_on, k),
           median_u32(t_brisque, k), median_u32(t_burst, m));
    free(t_off);
    free(t_on);
    free(t_burst);
    free(t_brisque);
    vision_worker_free(off);
    vision_engine_free(off_e);
    vision_worker_free(on);
    vision_engine_free(on_e);
}

static void report_liveness(struct vision_worker *w, struct vision_engine *e,
                            struct sample_set **sets, int nsets,
                            const struct sample *video, int nvideo)
{
    float t = vision_default_threshold(e);
    int caught = 0, must = 0;

    printf("quality gate (BRISQUE %s): defaults face >= %.0f px, brightness "
           ">= %.0f, contrast >= %.0f, sharpness >= %.0f, BRISQUE <= %.0f\n",
           vision_brisque(e) ? "on" : "off", VISION_DEFAULT_MIN_FACE_PX,
           VISION_DEFAULT_MIN_BRIGHTNESS, VISION_DEFAULT_MIN_CONTRAST,
           VISION_DEFAULT_MIN_SHARPNESS, VISION_DEFAULT_MAX_BRISQUE);
    for (int i = 0; i < nsets; i++)
        report_gate_set(w, sets[i]->name, sets[i]->s, sets[i]->n, t, &caught,
                        &must);
    report_gate_set(w, "video", video, nvideo, t, &caught, &must);
    printf("caught over the variants that must be: %d of %d (%.2f%%)\n",
           caught, must, pct(caught, must));
    report_gate_times("640x480 video frames", video, nvideo);
    report_gate_times("lfw", sets[0]->s, sets[0]->n);

    for (int i = 0; i < nsets; i++)
        report_yaw_sign(w, sets[i]->s, sets[i]->n, sets[i]->name);
    report_yaw_sign(w, video, nvideo, "video");
    report_impostor_tail(sets, 2);
    report_video_identity(video, nvideo, t);
    report_lfw_identity(sets[0], t);
    report_video_liveness(w, video, nvideo, t);
    for (int i = 0; i < 2 && i < nsets; i++)
        report_planar_set(w, sets[i], 3);
    if (nsets > 1)
        report_orl_turns(w, sets[1], t, 6);
}

/* ------------------------------------------------------------------------
 * Main
 * --------------------------------------------------------------------- */

struct calib_args {
    char models[PATH_MAX];
    char data[PATH_MAX];
    int embed_mode;
    long detect_pixels;
    int replay;
    int liveness;
    int costs;
    int turns;
    int still;
};

static void usage(void)
{
    fprintf(stderr, "usage: proctord_calibrate [--models DIR] [--data DIR] "
            "[--embed plain|flip] [--detect-pixels N] [--no-replay] "
            "[--liveness] [--costs] [--turns] [--still]\n"
            "DIR defaults: $PROCTORD_SHARED/models and $PROCTORD_SHARED/data"
            " (PROCTORD_SHARED defaults to ../shared)\n");
    exit(2);
}

static void parse_args(int argc, char **argv, struct calib_args *a)
{
    const char *shared = getenv("PROCTORD_SHARED");

    if (shared == NULL)
        shared = "../shared";
    snprintf(a->models, sizeof(a->models), "%s/models", shared);
    snprintf(a->data, sizeof(a->data), "%s/data", shared);
    a->replay = 1;
    for (int i = 1; i < argc; i++) {
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;

        if (strcmp(argv[i], "--models") == 0 && next)
            snprintf(a->models, sizeof(a->models), "%s", argv[++i]);
        else if (strcmp(argv[i], "--data") == 0 && next)
            snprintf(a->data, sizeof(a->data), "%s", argv[++i]);
        else if (strcmp(argv[i], "--embed") == 0 && next)
            a->embed_mode = strcmp(argv[++i], "plain") == 0
                ? VISION_EMBED_PLAIN : VISION_EMBED_FLIP;
        else if (strcmp(argv[i], "--detect-pixels") == 0 && next)
            a->detect_pixels = atol(argv[++i]);
        else if (strcmp(argv[i], "--no-replay") == 0)
            a->replay = 0;
        else if (strcmp(argv[i], "--liveness") == 0)
            a->liveness = 1;
        else if (strcmp(argv[i], "--costs") == 0)
            a->costs = 1;
        else if (strcmp(argv[i], "--turns") == 0)
            a->turns = 1;
        else if (strcmp(argv[i], "--still") == 0)
            a->still = 1;
        else
            usage();
    }
}

static struct vision_worker *start(const struct calib_args *a,
                                   struct vision_engine **engine)
{
    struct vision_options opt = {0};
    struct vision_worker *w;
    char err[256];

    opt.models_dir = a->models;
    opt.embed_mode = a->embed_mode;
    opt.detect_pixels = a->detect_pixels;
    *engine = vision_engine_new(&opt, err, sizeof(err));
    if (*engine == NULL || (w = vision_worker_new(*engine, err,
                                                  sizeof(err))) == NULL) {
        fprintf(stderr, "vision: %s\n", err);
        exit(1);
    }
    printf("model %s, dim %d, detector %s%s, default threshold %.3f\n",
           vision_model_id(*engine), vision_embedding_dim(*engine),
           vision_detector_name(*engine),
           vision_degraded(*engine) ? " (degraded)" : "",
           vision_default_threshold(*engine));
    return w;
}

int main(int argc, char **argv)
{
    struct calib_args a = {0};
    struct vision_engine *engine;
    struct vision_worker *w;
    struct sample_set lfw, orl, named, multi;
    struct sample *video = xcalloc(MAX_SAMPLES, sizeof(struct sample));
    struct scores imp = {0}, gen_lfw = {0}, gen_orl = {0};
    char dir[PATH_MAX + 64];
    float t;
    int nvideo;

    parse_args(argc, argv, &a);
    w = start(&a, &engine);
    snprintf(dir, sizeof(dir), "%s/faces/lfw", a.data);
    load_set(&lfw, "lfw", dir, 0);
    snprintf(dir, sizeof(dir), "%s/faces/att_faces", a.data);
    load_set(&orl, "att_faces (ORL)", dir, 0);
    snprintf(dir, sizeof(dir), "%s/faces/named_color", a.data);
    load_set(&named, "named_color", dir, 0);
    snprintf(dir, sizeof(dir), "%s/faces/named_color/_multi", a.data);
    load_set(&multi, "_multi", dir, 1);
    analyze_set(w, &lfw);
    analyze_set(w, &orl);
    analyze_set(w, &named);
    analyze_set(w, &multi);

    if (a.costs) {
        snprintf(dir, sizeof(dir), "%s/video/face_640x480_15fps.y4m", a.data);
        nvideo = load_video(w, dir, video, MAX_SAMPLES);
        report_costs(a.models, video, nvideo);
        goto done;
    }
    if (a.still) {
        snprintf(dir, sizeof(dir), "%s/video/face_640x480_15fps.y4m", a.data);
        nvideo = load_video(w, dir, video, MAX_SAMPLES);
        report_still(w, &lfw, video, nvideo);
        goto done;
    }
    if (a.turns) {
        struct sample_set *sets[] = {&lfw, &orl, &named};

        report_pose(sets, 3, vision_default_threshold(engine));
        report_orl_turns(w, &orl, vision_default_threshold(engine), 6);
        goto done;
    }
    if (a.liveness) {
        struct sample_set *sets[] = {&lfw, &orl, &named};

        snprintf(dir, sizeof(dir), "%s/video/face_640x480_15fps.y4m", a.data);
        nvideo = load_video(w, dir, video, MAX_SAMPLES);
        report_liveness(w, engine, sets, 3, video, nvideo);
        goto done;
    }

    report_set(&lfw, &imp, vision_default_threshold(engine), &gen_lfw);
    report_set(&orl, &imp, vision_default_threshold(engine), &gen_orl);
    report_set(&named, NULL, vision_default_threshold(engine), NULL);
    scores_sort(&imp);
    t = threshold_at(&imp, 0.001);
    printf("lfw + ORL impostors: %zu pairs, FAR 1%% at cos >= %.4f, "
           "FAR 0.1%% at cos >= %.4f (TAR there: lfw %.2f%%, ORL %.2f%%)\n",
           imp.n, threshold_at(&imp, 0.01), t, accept_rate(&gen_lfw, t),
           accept_rate(&gen_orl, t));
    report_multi(&multi);

    snprintf(dir, sizeof(dir), "%s/video/face_640x480_15fps.y4m", a.data);
    nvideo = load_video(w, dir, video, MAX_SAMPLES);
    report_video(video, nvideo);
    report_times("640x480 q90 video frames", video, nvideo);
    report_times("150x150 lfw", lfw.s, lfw.n);
    report_named_times(&named);
    if (a.replay) {
        struct sample_set *sets[] = {&lfw, &named, &multi};

        report_replay(w, sets, 3, video, nvideo);
    }

done:
    for (int i = 0; i < MAX_SAMPLES; i++)
        free(video[i].jpg);
    free(lfw.s);
    free(orl.s);
    free(named.s);
    free(multi.s);
    free(video);
    free(imp.v);
    free(gen_lfw.v);
    free(gen_orl.v);
    vision_worker_free(w);
    vision_engine_free(engine);
    return 0;
}
