/* The fixed pool of face-analysis threads. Jobs go in through a bounded
 * queue; a full queue refuses the job (the caller answers with back-
 * pressure) instead of growing. A job is one JPEG, or one JPEG and a
 * liveness burst. Results come back to the core thread, where each job's
 * done callback runs and frees the job. */
#ifndef PROCTORD_VISION_POOL_H
#define PROCTORD_VISION_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "vision/vision.h"

#define VISION_POOL_OK 0
#define VISION_POOL_FULL -2

struct vision_job;

/* Runs on the core thread with the analysed job; it must free the job
 * with vision_job_free(). */
typedef void (*vision_job_cb)(struct core *core, struct vision_job *job);

struct vision_job {
    vision_job_cb done;
    uint64_t conn;              /* the session's connection, if any */
    uint64_t serial;            /* the session's serial, if any */
    uint64_t challenge_id;
    int64_t submitted_ms;
    void *arg;                  /* the submitter's, untouched */
    /* Frees arg when the pool drops the job at shutdown without calling
     * done; NULL when arg needs no freeing. */
    void (*drop_arg)(void *arg);
    unsigned char *jpeg;        /* owned by the job */
    size_t len;
    struct vision_result result;
    /* A burst (nframes > 0): the frames, each malloc'd and owned with
     * the arrays, the action asked and what the burst showed. result is
     * then of jpeg, taken from the burst when jpeg is its first frame. */
    unsigned char **frames;
    size_t *frame_lens;
    int nframes;
    int action;
    struct vision_burst *burst; /* owned; NULL without frames */
};

/* Allocates a job and takes ownership of jpeg (malloc'd). */
struct vision_job *vision_job_new(unsigned char *jpeg, size_t len,
                                  vision_job_cb done);

/* Makes job a burst of n frames (n > 0, at most VISION_BURST_MAX) for
 * action, taking ownership of frames, lens (malloc'd arrays) and every
 * frames[i] (malloc'd), also on failure. Returns VISION_POOL_OK, or -1
 * when out of memory. */
int vision_job_set_burst(struct vision_job *job, unsigned char **frames,
                         size_t *lens, int n, int action);
void vision_job_free(struct vision_job *job);

/* Loads the engine from vision.models_dir and starts vision.workers
 * threads. NULL with err filled when the models cannot be used. */
struct vision_pool *vision_pool_new(struct core *core, char *err,
                                    size_t errlen);

/* Queues job. VISION_POOL_FULL when the queue is full: the job stays the
 * caller's. */
int vision_pool_submit(struct vision_pool *pool, struct vision_job *job);

/* Jobs queued or being analysed. */
int vision_pool_busy(struct vision_pool *pool);

const struct vision_engine *vision_pool_engine(struct vision_pool *pool);

/* Stops the workers after their current job and joins them; queued jobs
 * are dropped. */
void vision_pool_stop(struct vision_pool *pool);

void vision_pool_free(struct vision_pool *pool);

#endif
