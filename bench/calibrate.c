/* Calibration of the vision module on the shared photographs: detection
 * misses, genuine and impostor cosine scores with the accept rates at fixed
 * false-accept rates, faces counted in group photos, the replay signature's
 * margins and per-stage times. It uses only vision.h, so it measures the
 * daemon's own pipeline; it writes nothing but its report on stdout. */

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
            free(jpg);
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
 * Main
 * --------------------------------------------------------------------- */

struct calib_args {
    char models[PATH_MAX];
    char data[PATH_MAX];
    int embed_mode;
    long detect_pixels;
    int replay;
};

static void usage(void)
{
    fprintf(stderr, "usage: proctord_calibrate [--models DIR] [--data DIR] "
            "[--embed plain|flip] [--detect-pixels N] [--no-replay]\n"
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
    struct scores imp = {0}, gen_lfw, gen_orl;
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
