/* The bare loop the daemon is measured against: N threads, each with its
 * own vision_worker, analysing the same JPEGs over and over and comparing
 * each embedding with a fixed one, as the daemon does per snapshot. Only
 * vision.h is used, so the OpenCV work is exactly the daemon's; there is
 * no network, no queue, no Redis. It prints one key=value line. */

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "vision/vision.h"

#define LOOP_MAX_THREADS 64

/* What one image cost, per stage, in microseconds. */
struct stage_times {
    float header, decode, detect, embed, compare;
};

struct image {
    uint8_t *data;
    size_t len;
};

struct loop_args {
    const char *models;
    int threads;
    double seconds;
    char **files;
    int nfiles;
};

struct loop_thread {
    pthread_t tid;
    int index, nthreads;
    struct vision_worker *worker;
    const struct image *images;
    int nimages;
    const float *reference;
    int dim;
    pthread_barrier_t *start;
    double deadline;

    /* Filled by the thread; times is malloc'd, freed by main. */
    struct stage_times *times;
    size_t n, cap;
    long bad, noface;
    double finished;
    /* Keeps the compiler from dropping the comparison. */
    float similarity_sum;
};

/* ------------------------------------------------------------------------
 * Helpers
 * --------------------------------------------------------------------- */

static double clock_s(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_s(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

static void die(const char *what, const char *why)
{
    fprintf(stderr, "proctord_vision_loop: %s: %s\n", what, why);
    exit(1);
}

static int read_file(const char *path, struct image *img)
{
    FILE *f = fopen(path, "rb");
    long size;

    if (f == NULL)
        return -1;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) <= 0 ||
        fseek(f, 0, SEEK_SET) != 0)
        goto fail;
    img->data = malloc((size_t)size);
    if (img->data == NULL ||
        fread(img->data, 1, (size_t)size, f) != (size_t)size)
        goto fail;
    img->len = (size_t)size;
    fclose(f);
    return 0;

fail:
    free(img->data);
    img->data = NULL;
    fclose(f);
    return -1;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;

    return (x > y) - (x < y);
}

/* The value at fraction q of the sorted v (nearest rank). */
static float quantile(float *v, size_t n, double q)
{
    size_t i;

    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cmp_float);
    i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

/* ------------------------------------------------------------------------
 * Worker threads
 * --------------------------------------------------------------------- */

static int record(struct loop_thread *t, const struct stage_times *st)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        struct stage_times *p = realloc(t->times, cap * sizeof(*p));

        if (p == NULL)
            return -1;
        t->times = p;
        t->cap = cap;
    }
    t->times[t->n++] = *st;
    return 0;
}

static void *loop_main(void *arg)
{
    struct loop_thread *t = arg;
    struct vision_result *r = malloc(sizeof(*r));
    struct stage_times st;
    double t0;
    int i;

    if (r == NULL)
        die("malloc", strerror(errno));

    /* Each thread starts at its own offset, as the daemon's sessions send
     * different photos at the same moment. */
    i = (int)(((long)t->index * t->nimages) / t->nthreads);

    /* The first inference allocates the networks' buffers; the daemon has
     * done that long before the snapshots a reader cares about. */
    vision_analyze(t->worker, t->images[i].data, t->images[i].len, r);
    pthread_barrier_wait(t->start);

    while (now_s() < t->deadline) {
        const struct image *img = &t->images[i];

        i = (i + 1) % t->nimages;
        if (vision_analyze(t->worker, img->data, img->len, r) != VISION_OK) {
            t->bad++;
            continue;
        }
        st.header = (float)r->us_header;
        st.decode = (float)r->us_decode;
        st.detect = (float)r->us_detect;
        st.embed = (float)r->us_embed;

        /* The daemon compares with the enrolled embedding; a face-less
         * image gets no comparison there either. */
        t0 = now_s();
        if (r->dim == t->dim)
            t->similarity_sum += vision_similarity(r->embedding,
                                                   t->reference, t->dim);
        else
            t->noface++;
        st.compare = (float)((now_s() - t0) * 1e6);
        if (record(t, &st) != 0)
            die("realloc", strerror(errno));
    }
    t->finished = now_s();
    free(r);
    return NULL;
}

/* ------------------------------------------------------------------------
 * Report
 * --------------------------------------------------------------------- */

/* Prints name_med_us and name_p90_us for one field of every record. */
static void print_stage(const char *name, struct loop_thread *th, int n,
                        size_t total, size_t offset)
{
    float *v = malloc((total > 0 ? total : 1) * sizeof(*v));
    size_t k = 0;

    if (v == NULL)
        die("malloc", strerror(errno));
    for (int i = 0; i < n; i++)
        for (size_t j = 0; j < th[i].n; j++)
            v[k++] = *(const float *)((const char *)&th[i].times[j] +
                                      offset);
    printf(" %s_med_us=%.1f", name, quantile(v, k, 0.5));
    printf(" %s_p90_us=%.1f", name, quantile(v, k, 0.9));
    free(v);
}

/* What the window cost the process: CPU seconds and the context
 * switches, which show how often others on the machine preempted it. */
struct window_usage {
    double cpu;
    long nvcsw, nivcsw;
};

static void usage_now(struct window_usage *u)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    u->cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    u->nvcsw = ru.ru_nvcsw;
    u->nivcsw = ru.ru_nivcsw;
}

static void report(const struct loop_args *a,
                   const struct vision_engine *engine,
                   struct loop_thread *th, double started,
                   const struct window_usage *u)
{
    size_t total = 0;
    long bad = 0, noface = 0;
    double elapsed = 0;

    for (int i = 0; i < a->threads; i++) {
        total += th[i].n;
        bad += th[i].bad;
        noface += th[i].noface;
        if (th[i].finished - started > elapsed)
            elapsed = th[i].finished - started;
    }
    printf("vision_loop model=%s detector=%s threads=%d seconds=%.2f "
           "files=%d images=%zu images_per_s=%.2f cpu_s=%.2f nvcsw=%ld "
           "nivcsw=%ld bad=%ld noface=%ld", vision_model_id(engine),
           vision_detector_name(engine), a->threads, elapsed, a->nfiles,
           total, elapsed > 0 ? (double)total / elapsed : 0.0, u->cpu,
           u->nvcsw, u->nivcsw, bad, noface);
    print_stage("header", th, a->threads, total,
                offsetof(struct stage_times, header));
    print_stage("decode", th, a->threads, total,
                offsetof(struct stage_times, decode));
    print_stage("detect", th, a->threads, total,
                offsetof(struct stage_times, detect));
    print_stage("embed", th, a->threads, total,
                offsetof(struct stage_times, embed));
    print_stage("compare", th, a->threads, total,
                offsetof(struct stage_times, compare));
    printf("\n");
}

/* ------------------------------------------------------------------------
 * Main
 * --------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: proctord_vision_loop --models DIR --threads N "
                    "--seconds S FILE...\n");
    exit(2);
}

static void parse_args(int argc, char **argv, struct loop_args *a)
{
    int i;

    memset(a, 0, sizeof(*a));
    a->threads = 1;
    a->seconds = 10;
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--models") == 0 && i + 1 < argc)
            a->models = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            a->threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            a->seconds = atof(argv[++i]);
        else if (strncmp(argv[i], "--", 2) == 0)
            usage();
        else
            break;
    }
    a->files = argv + i;
    a->nfiles = argc - i;
    if (a->models == NULL || a->nfiles == 0 || a->threads < 1 ||
        a->threads > LOOP_MAX_THREADS || a->seconds <= 0)
        usage();
}

/* The reference embedding: the first file's face, as an enrolment
 * photo would be. */
static float *reference_embedding(struct vision_worker *w,
                                  const struct image *img, int *dim)
{
    struct vision_result *r = malloc(sizeof(*r));
    float *emb;

    if (r == NULL)
        die("malloc", strerror(errno));
    if (vision_analyze(w, img->data, img->len, r) != VISION_OK ||
        r->dim == 0)
        die("reference", "no face in the first file");
    emb = malloc((size_t)r->dim * sizeof(*emb));
    if (emb == NULL)
        die("malloc", strerror(errno));
    memcpy(emb, r->embedding, (size_t)r->dim * sizeof(*emb));
    *dim = r->dim;
    free(r);
    return emb;
}

int main(int argc, char **argv)
{
    struct loop_args a;
    struct vision_options opt;
    struct vision_engine *engine;
    struct loop_thread *th;
    struct image *images;
    pthread_barrier_t start;
    char err[256];
    float *reference;
    struct window_usage u0, u1;
    double started;
    int dim;

    parse_args(argc, argv, &a);
    images = calloc((size_t)a.nfiles, sizeof(*images));
    th = calloc((size_t)a.threads, sizeof(*th));
    if (images == NULL || th == NULL)
        die("calloc", strerror(errno));
    for (int i = 0; i < a.nfiles; i++)
        if (read_file(a.files[i], &images[i]) != 0)
            die(a.files[i], strerror(errno));

    /* The daemon's options: models_dir, everything else at its default. */
    memset(&opt, 0, sizeof(opt));
    opt.models_dir = a.models;
    engine = vision_engine_new(&opt, err, sizeof(err));
    if (engine == NULL)
        die("vision_engine_new", err);

    /* Workers are made before the clock starts: the daemon makes its own
     * at start-up, not per snapshot. */
    for (int i = 0; i < a.threads; i++) {
        th[i].worker = vision_worker_new(engine, err, sizeof(err));
        if (th[i].worker == NULL)
            die("vision_worker_new", err);
    }
    reference = reference_embedding(th[0].worker, &images[0], &dim);

    pthread_barrier_init(&start, NULL, (unsigned)a.threads + 1);
    for (int i = 0; i < a.threads; i++) {
        th[i].index = i;
        th[i].nthreads = a.threads;
        th[i].images = images;
        th[i].nimages = a.nfiles;
        th[i].reference = reference;
        th[i].dim = dim;
        th[i].start = &start;
        if (pthread_create(&th[i].tid, NULL, loop_main, &th[i]) != 0)
            die("pthread_create", "cannot start a thread");
    }
    /* The barrier publishes the deadlines to the threads. Process CPU
     * time over the window lets a reader see how much of the machine the
     * loop got when others share it. */
    started = now_s();
    for (int i = 0; i < a.threads; i++)
        th[i].deadline = started + a.seconds;
    pthread_barrier_wait(&start);
    usage_now(&u0);
    for (int i = 0; i < a.threads; i++)
        pthread_join(th[i].tid, NULL);
    usage_now(&u1);
    u1.cpu -= u0.cpu;
    u1.nvcsw -= u0.nvcsw;
    u1.nivcsw -= u0.nivcsw;

    report(&a, engine, th, started, &u1);

    for (int i = 0; i < a.threads; i++) {
        vision_worker_free(th[i].worker);
        free(th[i].times);
    }
    for (int i = 0; i < a.nfiles; i++)
        free(images[i].data);
    vision_engine_free(engine);
    pthread_barrier_destroy(&start);
    free(reference);
    free(images);
    free(th);
    return 0;
}
