/* Face checks on webcam snapshots: a plain C interface over the OpenCV code
 * in vision.cpp. An engine holds the verified models and is shared
 * read-only; every thread that analyses images owns a worker holding its
 * own copies of the networks. Nothing is remembered between images: the
 * caller compares embeddings and signatures with what it stored. */
#ifndef PROCTORD_VISION_H
#define PROCTORD_VISION_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VISION_OK 0
#define VISION_ERR -1
/* The bytes are not an image this module accepts: not a JPEG, corrupt or
 * truncated, or with dimensions out of bounds. Never fatal. */
#define VISION_BAD_IMAGE -2

#define VISION_MAX_DIM 512
#define VISION_ERRLEN 128

/* A replay signature: a 32x24 grey thumbnail of the whole frame,
 * normalised to zero mean and unit variance, one byte a pixel. */
#define VISION_SIG_BYTES (32 * 24)

/* Two signatures closer than this are the same picture, re-encoded or
 * resized; two frames of a live camera are farther apart. The figures
 * behind it are in bench/README.md, "Vision". */
#define VISION_REPLAY_DISTANCE 0.09f

#define VISION_DEFAULT_SECOND_FACE_RATIO 0.25
#define VISION_DEFAULT_MAX_PIXELS (4096 * 4096)
#define VISION_DEFAULT_DETECT_PIXELS (320 * 240)

/* How the embedding is taken; calibration compares the two. */
#define VISION_EMBED_DEFAULT 0
#define VISION_EMBED_PLAIN 1
/* The aligned face and its mirror image, summed and normalised. */
#define VISION_EMBED_FLIP 2

/* Zero in a field means its default. */
struct vision_options {
    const char *models_dir;
    /* A face counts in vision_result.faces when its area is at least this
     * fraction of the largest face's, so a small face far behind the
     * learner does not. */
    double second_face_ratio;
    /* Larger JPEGs (width * height) are refused before decoding. */
    int64_t max_pixels;
    /* The detector runs on a copy scaled down to about this many pixels. */
    int64_t detect_pixels;
    int embed_mode;
};

struct vision_engine;
struct vision_worker;

/* Everything one image yields. Coordinates are in the pixels of the image
 * as sent, whatever scale it was decoded at. */
struct vision_result {
    int status;                 /* VISION_OK, VISION_BAD_IMAGE, VISION_ERR */
    char error[VISION_ERRLEN];  /* why, when status is not VISION_OK */
    int width, height;
    /* faces: the largest and those at least second_face_ratio of its
     * area with a detector score of 0.8 or more (a second face raises a
     * flag); faces_raw: every detection the detector kept. */
    int faces;
    int faces_raw;
    /* The largest face: x, y, w, h and the detector's score (0 for the
     * cascade, which gives none). */
    float box[4];
    float score;
    /* x, y of the right eye, left eye, nose tip, right and left mouth
     * corners (the person's right and left). All zero in degraded mode,
     * where the detector finds no landmarks. */
    float landmarks[10];
    /* L2-normalised; dim is 0 when no face was found. */
    int dim;
    float embedding[VISION_MAX_DIM];
    /* Of the aligned face crop (of the whole frame when there is no face):
     * mean grey level, its standard deviation, variance of the Laplacian. */
    float brightness, contrast, sharpness;
    uint8_t sha256[32];         /* of the bytes exactly as given */
    uint8_t signature[VISION_SIG_BYTES];
    /* Microseconds per stage: header check and hash; decode; detection
     * with its resize; alignment, embedding, quality and signature. */
    uint32_t us_header, us_decode, us_detect, us_embed;
};

/* Loads and verifies the models in opt->models_dir. The detector is
 * face_detection_yunet_2022mar.onnx when present, else an OpenCV cascade
 * from the system's opencv-data (degraded mode: no landmarks, more misses).
 * The recognizer is the first present of face_recognition_sface_2021dec
 * (fp32, then int8) and the 512-d fr_feature.onnx or
 * faceplugin_fr_feature.onnx. A file whose sha256 is not the known one is
 * refused, never skipped. Sets OpenCV to one thread: the worker pool is
 * the parallelism. Returns NULL and writes the reason into err (which may
 * be NULL) on failure. Free with vision_engine_free() after every worker. */
struct vision_engine *vision_engine_new(const struct vision_options *opt,
                                        char *err, size_t errlen);
void vision_engine_free(struct vision_engine *engine);

/* Names the recognizer, its weights and how it embeds, such as
 * "fr512f-87aacdfe" (f: flip-averaged; "fr512-..." is plain). Store it
 * beside every embedding: only embeddings with the same id may be
 * compared. The string lives as long as the engine. */
const char *vision_model_id(const struct vision_engine *engine);
int vision_embedding_dim(const struct vision_engine *engine);
/* The cosine at or above which two faces are taken as one person,
 * calibrated for this model and embedding mode. */
float vision_default_threshold(const struct vision_engine *engine);
int vision_degraded(const struct vision_engine *engine);
/* "yunet-2022mar" or the cascade's file name. Lives as long as the engine. */
const char *vision_detector_name(const struct vision_engine *engine);

/* A worker owns copies of the networks and may be used by one thread at a
 * time. Returns NULL with the reason in err on failure. */
struct vision_worker *vision_worker_new(const struct vision_engine *engine,
                                        char *err, size_t errlen);
void vision_worker_free(struct vision_worker *worker);

/* Checks the JPEG header before allocating anything for the image, then
 * decodes (at a reduced scale when the image is large), detects, embeds the
 * largest face and fills *out. Only JPEG is accepted. Returns out->status:
 * VISION_OK even with no face (out->faces is 0 then), VISION_BAD_IMAGE for
 * data refused, VISION_ERR when the library failed; out->error says why.
 * The caller keeps ownership of jpeg. */
int vision_analyze(struct vision_worker *worker, const uint8_t *jpeg,
                   size_t len, struct vision_result *out);

/* For tools, never for untrusted input: reads any format OpenCV reads
 * (JPEG files take the vision_analyze() path, others OpenCV's decoder,
 * with no size check) and runs the same pipeline. Returns as
 * vision_analyze(). */
int vision_analyze_file(struct vision_worker *worker, const char *path,
                        struct vision_result *out);

/* Cosine of two embeddings of dim floats; 0 when either is all zero. */
float vision_similarity(const float *a, const float *b, int dim);

/* Distance between two replay signatures: the RMS difference of the
 * thumbnails in standard deviations (0 for the same picture, about 1.4
 * for unrelated ones). Below VISION_REPLAY_DISTANCE means a replay. */
float vision_signature_distance(const uint8_t *a, const uint8_t *b);

/* For tools and tests, never for untrusted input: decodes an image in any
 * format OpenCV reads (PGM, PNG, a binary PPM, JPEG), resizes it by scale
 * and encodes it as a JPEG of the given quality. On success *out is a
 * malloc'd buffer the caller frees with free(). */
int vision_transcode(const uint8_t *data, size_t len, double scale,
                     int quality, uint8_t **out, size_t *outlen,
                     char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
