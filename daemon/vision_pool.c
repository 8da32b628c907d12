/* Worker threads around vision_analyze() and vision_analyze_burst(). Each
 * worker owns a
 * vision_worker (its own copies of the networks); the engine is shared
 * read-only. Finished jobs wait in a bounded queue for the core thread,
 * which always has room: it holds at most as many as were admitted. */
#include "vision_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "queue.h"

struct vision_pool {
    struct core *core;
    struct vision_engine *engine;
    struct vision_worker **workers;
    pthread_t *threads;
    int nworkers;
    int started;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct vision_job **jobs;   /* ring of capacity */
    int capacity;
    int head;
    int count;
    int running;                /* jobs being analysed */
    int stopping;

    struct queue done;          /* of struct vision_job * */
    struct event *done_ev;
};

struct worker_arg {
    struct vision_pool *pool;
    struct vision_worker *worker;
};

struct vision_job *vision_job_new(unsigned char *jpeg, size_t len,
                                  vision_job_cb done)
{
    struct vision_job *job = calloc(1, sizeof(*job));

    if (job == NULL)
        return NULL;
    job->jpeg = jpeg;
    job->len = len;
    job->done = done;
    return job;
}

static void free_frames(unsigned char **frames, size_t *lens, int n)
{
    for (int i = 0; frames != NULL && i < n; i++)
        free(frames[i]);
    free(frames);
    free(lens);
}

int vision_job_set_burst(struct vision_job *job, unsigned char **frames,
                         size_t *lens, int n, int action)
{
    job->burst = malloc(sizeof(*job->burst));
    if (job->burst == NULL) {
        free_frames(frames, lens, n);
        return -1;
    }
    job->frames = frames;
    job->frame_lens = lens;
    job->nframes = n;
    job->action = action;
    return VISION_POOL_OK;
}

void vision_job_free(struct vision_job *job)
{
    if (job == NULL)
        return;
    free(job->jpeg);
    free_frames(job->frames, job->frame_lens, job->nframes);
    free(job->burst);
    free(job);
}

/* A burst is analysed whole; the evidence JPEG only when it is none of
 * the burst's frames, so the usual answer (jpeg empty, or one of the
 * frames) costs nothing more. */
static void analyze_job(struct vision_worker *w, struct vision_job *job)
{
    const struct vision_burst *b = job->burst;

    if (job->nframes == 0) {
        vision_analyze(w, job->jpeg, job->len, &job->result);
        return;
    }
    vision_analyze_burst(w, (const uint8_t *const *)job->frames,
                         job->frame_lens, job->nframes, job->action,
                         job->burst);
    for (int i = 0; b->status == VISION_OK && i < b->n; i++) {
        if (job->len == job->frame_lens[i] &&
            memcmp(job->jpeg, job->frames[i], job->len) == 0) {
            memcpy(&job->result, &b->frame[i], sizeof(job->result));
            return;
        }
    }
    vision_analyze(w, job->jpeg, job->len, &job->result);
}

static void *worker_main(void *arg)
{
    struct worker_arg *wa = arg;
    struct vision_pool *pool = wa->pool;
    struct vision_job *job;
    pid_t tid = (pid_t)syscall(SYS_gettid);
    int nice = pool->core->cfg.vision_nice;

    /* Analyses take tens of milliseconds of CPU each; a heartbeat takes
     * microseconds but waits behind whatever holds the CPU. Below the
     * network and core threads' priority the workers still get every
     * idle cycle, and snapshots do not delay everyone else's acks. */
    errno = 0;
    if (nice > 0 &&
        setpriority(PRIO_PROCESS, (id_t)tid,
                    getpriority(PRIO_PROCESS, (id_t)tid) + nice) != 0)
        log_warning("msg=\"vision worker keeps the daemon's priority\" "
                    "vision.nice=%d error=\"%s\"", nice, strerror(errno));

    for (;;) {
        pthread_mutex_lock(&pool->lock);
        while (pool->count == 0 && !pool->stopping)
            pthread_cond_wait(&pool->cond, &pool->lock);
        if (pool->stopping) {
            pthread_mutex_unlock(&pool->lock);
            break;
        }
        job = pool->jobs[pool->head];
        pool->head = (pool->head + 1) % pool->capacity;
        pool->count--;
        pool->running++;
        pthread_mutex_unlock(&pool->lock);

        analyze_job(wa->worker, job);
        metrics_add(snapshots_analyzed, 1);

        /* done has room for every admitted job, so this cannot fail. */
        queue_push(&pool->done, &job, NULL);
        event_active(pool->done_ev, EV_READ, 0);
        pthread_mutex_lock(&pool->lock);
        pool->running--;
        pthread_mutex_unlock(&pool->lock);
    }
    free(wa);
    return NULL;
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    struct vision_pool *pool = arg;
    struct vision_job *batch[32];
    size_t n;

    (void)fd;
    (void)what;
    while ((n = queue_pop_many(&pool->done, batch, 32)) > 0) {
        for (size_t i = 0; i < n; i++)
            batch[i]->done(pool->core, batch[i]);
    }
}

static int start_workers(struct vision_pool *pool, char *err, size_t errlen)
{
    for (int i = 0; i < pool->nworkers; i++) {
        struct worker_arg *wa = malloc(sizeof(*wa));

        pool->workers[i] = vision_worker_new(pool->engine, err, errlen);
        if (wa == NULL || pool->workers[i] == NULL) {
            free(wa);
            return -1;
        }
        wa->pool = pool;
        wa->worker = pool->workers[i];
        if (pthread_create(&pool->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            snprintf(err, errlen, "vision.workers: cannot start a thread");
            return -1;
        }
        pool->started++;
    }
    return 0;
}

static double gate_option(double v)
{
    return v > 0 ? v : -1;
}

struct vision_pool *vision_pool_new(struct core *core, char *err,
                                    size_t errlen)
{
    struct vision_pool *pool = calloc(1, sizeof(*pool));
    struct vision_options opt;
    char why[256] = "";

    if (pool == NULL)
        return NULL;
    pool->core = core;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->cond, NULL);

    memset(&opt, 0, sizeof(opt));
    opt.models_dir = core->cfg.models_dir;
    opt.second_face_ratio = core->cfg.second_face_ratio;
    opt.max_pixels = core->cfg.max_pixels;
    /* In the config 0 turns a check off; in vision_options that is -1. */
    opt.min_face_px = gate_option(core->cfg.min_face_px);
    opt.min_brightness = gate_option(core->cfg.min_brightness);
    opt.min_contrast = gate_option(core->cfg.min_contrast);
    opt.min_sharpness = gate_option(core->cfg.min_sharpness);
    opt.max_brisque = gate_option(core->cfg.max_brisque);
    pool->engine = vision_engine_new(&opt, why, sizeof(why));
    if (pool->engine == NULL) {
        snprintf(err, errlen, "vision.models_dir: %s", why);
        goto fail;
    }
    if (vision_degraded(pool->engine))
        log_warning("msg=\"running degraded: no YuNet detector, using a "
                    "cascade; more missed faces, no landmarks, so no "
                    "liveness challenges\" detector=%s",
                    vision_detector_name(pool->engine));
    if (!vision_brisque(pool->engine) && core->cfg.max_brisque > 0)
        log_warning("msg=\"no BRISQUE model (brisque_model_live.yml and "
                    "brisque_range_live.yml of opencv-data); the "
                    "vision.max_brisque check is off\"");
    log_notice("msg=\"vision ready\" detector=%s model=%s threshold=%.3f "
               "workers=%d brisque=%d", vision_detector_name(pool->engine),
               vision_model_id(pool->engine),
               vision_default_threshold(pool->engine),
               core->cfg.vision_workers, vision_brisque(pool->engine));

    pool->nworkers = core->cfg.vision_workers > 0 ? core->cfg.vision_workers
                                                  : 1;
    pool->capacity = core->cfg.vision_queue > 0 ? core->cfg.vision_queue
                                                : 64;
    pool->jobs = calloc((size_t)pool->capacity, sizeof(*pool->jobs));
    pool->workers = calloc((size_t)pool->nworkers, sizeof(*pool->workers));
    pool->threads = calloc((size_t)pool->nworkers, sizeof(*pool->threads));
    if (pool->jobs == NULL || pool->workers == NULL ||
        pool->threads == NULL ||
        queue_init(&pool->done, (size_t)(pool->capacity + pool->nworkers),
                   sizeof(struct vision_job *)) != QUEUE_OK) {
        snprintf(err, errlen, "vision: out of memory");
        goto fail;
    }
    pool->done_ev = event_new(core->base, -1, 0, on_done, pool);
    if (start_workers(pool, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "vision.workers: %s", why);
        goto fail;
    }
    return pool;

fail:
    vision_pool_stop(pool);
    vision_pool_free(pool);
    return NULL;
}

int vision_pool_submit(struct vision_pool *pool, struct vision_job *job)
{
    int slot;

    /* No pool at all (the HTTP fuzz target runs without models): refused
     * as a full one is, so the caller's back-pressure path answers. */
    if (pool == NULL)
        return VISION_POOL_FULL;
    pthread_mutex_lock(&pool->lock);
    if (pool->stopping || pool->count + pool->running >= pool->capacity) {
        pthread_mutex_unlock(&pool->lock);
        metrics_add(vision_busy, 1);
        return VISION_POOL_FULL;
    }
    slot = (pool->head + pool->count) % pool->capacity;
    pool->jobs[slot] = job;
    pool->count++;
    pthread_cond_signal(&pool->cond);
    pthread_mutex_unlock(&pool->lock);
    return VISION_POOL_OK;
}

int vision_pool_busy(struct vision_pool *pool)
{
    int n;

    if (pool == NULL)
        return 0;
    pthread_mutex_lock(&pool->lock);
    n = pool->count + pool->running;
    pthread_mutex_unlock(&pool->lock);
    return n + (int)queue_depth(&pool->done);
}

const struct vision_engine *vision_pool_engine(struct vision_pool *pool)
{
    return pool->engine;
}

void vision_pool_stop(struct vision_pool *pool)
{
    if (pool == NULL)
        return;
    pthread_mutex_lock(&pool->lock);
    pool->stopping = 1;
    pthread_cond_broadcast(&pool->cond);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->started; i++)
        pthread_join(pool->threads[i], NULL);
    pool->started = 0;
}

/* Their done callbacks cannot run any more (the HTTP side and the
 * sessions may be gone), so what they would have freed is freed here. */
static void drop_job(struct vision_job *job)
{
    if (job->drop_arg != NULL)
        job->drop_arg(job->arg);
    vision_job_free(job);
}

void vision_pool_free(struct vision_pool *pool)
{
    if (pool == NULL)
        return;
    /* Jobs still queued or finished but unhandled are dropped here. */
    for (int i = 0; i < pool->count; i++)
        drop_job(pool->jobs[(pool->head + i) % pool->capacity]);
    if (pool->done.items != NULL) {
        struct vision_job *job;
        while (queue_pop_many(&pool->done, &job, 1) == 1)
            drop_job(job);
        queue_cleanup(&pool->done);
    }
    for (int i = 0; pool->workers != NULL && i < pool->nworkers; i++)
        vision_worker_free(pool->workers[i]);
    if (pool->engine != NULL)
        vision_engine_free(pool->engine);
    if (pool->done_ev != NULL)
        event_free(pool->done_ev);
    free(pool->jobs);
    free(pool->workers);
    free(pool->threads);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->cond);
    free(pool);
}
