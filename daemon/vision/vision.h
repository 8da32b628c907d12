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

/* The quality gate's defaults, calibrated on ../shared/data (bench/README.md,
 * "Liveness and quality"): the face box at least this wide in the image's
 * own pixels; the mean grey level and its standard deviation over the
 * face's centre in the aligned 112x112 crop at least these; the variance
 * of the Laplacian there at least this; BRISQUE of the crop at most this
 * (0 best, about 100 worst). */
#define VISION_DEFAULT_MIN_FACE_PX 24.0
#define VISION_DEFAULT_MIN_BRIGHTNESS 40.0
#define VISION_DEFAULT_MIN_CONTRAST 15.0
#define VISION_DEFAULT_MIN_SHARPNESS 8.0
#define VISION_DEFAULT_MAX_BRISQUE 65.0

/* vision_result.quality: VISION_QUALITY_OK, or the first check failed,
 * in this order. A frame without a face is judged on its darkness only
 * (whole frame), so an empty but lit room stays "no face". */
#define VISION_QUALITY_OK 0
#define VISION_QUALITY_FACE_TOO_SMALL 1
#define VISION_QUALITY_TOO_DARK 2
#define VISION_QUALITY_LOW_CONTRAST 3
#define VISION_QUALITY_BLURRY 4
#define VISION_QUALITY_POOR_IMAGE 5

/* Actions of a liveness challenge, as the protocol's Action. Left and
 * right are the learner's own, in a frame as the camera took it (not the
 * mirrored preview a browser shows). */
#define VISION_ACTION_NONE 0
#define VISION_ACTION_TURN_LEFT 1
#define VISION_ACTION_TURN_RIGHT 2

/* A burst has at least VISION_BURST_MIN frames; those past
 * VISION_BURST_MAX are not looked at. */
#define VISION_BURST_MIN 3
#define VISION_BURST_MAX 8

/* Liveness, in units of the inter-ocular distance (bench/README.md,
 * "Liveness and quality"). Yaw is the nose tip's offset from the eyes'
 * midpoint along the eye axis; a turn is the largest change of yaw in the
 * asked direction from an earlier frame to a later one, and counts from
 * VISION_TURN_MIN. The planar residual is how far the nose of the later
 * frame lies from where the homography taking the four outer points
 * (eyes, mouth corners) of the earlier frame onto the later one puts it:
 * a flat picture moved, rotated or tilted stays under
 * VISION_PLANAR_MAX, a turning head does not. Frames with |yaw| above
 * VISION_YAW_RELIABLE (near profile, where the landmarks wander) are left
 * out of both. */
#define VISION_TURN_MIN 0.20f
#define VISION_PLANAR_MAX 0.15f
#define VISION_YAW_RELIABLE 0.80f

/* A face turned this far (|yaw|, see vision_result.yaw) that does not
 * match is not judged: over ORL's genuine pairs against frontal
 * enrolments, 10 of 25 with |yaw| >= 0.45 fall under the threshold and
 * none below (lfw: 0 of 5 and 0 of 811), while no impostor pair there
 * matches at any yaw (bench/README.md, "Pose"). */
#define VISION_POSE_MAX 0.45f

/* A burst frame, whatever its yaw, must come this close to the enrolled
 * face, and to the frame before it (the evidence frame before the first);
 * the evidence frame must match as any snapshot does. Turned and moving
 * frames of a live learner score lower than a still frontal one: over the
 * video's real turns the lowest are 0.158 and 0.308, while 26.6% and
 * 2.3% of impostor pairs reach these floors (bench/README.md, "Liveness
 * and quality"). The daemon applies them (challenge.c); the calibration
 * reports them. */
#define VISION_BURST_FLOOR_ENROLLED 0.10f
#define VISION_BURST_FLOOR_ADJACENT 0.25f

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
    /* The quality gate (VISION_DEFAULT_*); a negative value turns that
     * check off. */
    double min_face_px;
    double min_brightness;
    double min_contrast;
    double min_sharpness;
    double max_brisque;
    /* Where brisque_model_live.yml and brisque_range_live.yml are: NULL
     * looks in models_dir, then in /usr/share/opencv4/quality. Without
     * them the BRISQUE check is off (vision_brisque() says so). */
    const char *brisque_dir;
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
    /* Of the face's centre in the aligned crop (of the whole frame when
     * there is no face): mean grey level, its standard deviation,
     * variance of the Laplacian. */
    float brightness, contrast, sharpness;
    /* BRISQUE of the aligned crop; -1 when not computed (no face, or the
     * check is off). */
    float brisque;
    /* The gate's verdict (VISION_QUALITY_*); anything but OK means the
     * frame is too poor to judge the face on. */
    int quality;
    /* The largest face's yaw (see VISION_TURN_MIN): positive when the
     * nose sits towards the learner's own left eye, that is, the head is
     * turned to the learner's left. 0 without landmarks. */
    float yaw;
    uint8_t sha256[32];         /* of the bytes exactly as given */
    uint8_t signature[VISION_SIG_BYTES];
    /* Microseconds per stage: header check and hash; decode; detection
     * with its resize; alignment, embedding, quality and signature. */
    uint32_t us_header, us_decode, us_detect, us_embed;
    /* Of us_embed: the quality gate alone, and BRISQUE within it. */
    uint32_t us_quality, us_brisque;
};

/* A liveness burst: every frame through the single-image pipeline, then
 * the landmarks measured again on an upright copy of each face, which
 * steadies them, and the motion between frames. */
struct vision_burst {
    int status;                 /* VISION_OK, or VISION_ERR */
    char error[VISION_ERRLEN];
    int given;                  /* frames passed in */
    int n;                      /* frames analysed: min(given, MAX) */
    int action;
    struct vision_result frame[VISION_BURST_MAX];
    /* Per frame: found (one face or more, with landmarks), the refined
     * landmarks (as vision_result.landmarks) and their yaw. */
    int found[VISION_BURST_MAX];
    float points[VISION_BURST_MAX][10];
    float yaw[VISION_BURST_MAX];
    /* Frames found with |yaw| at most VISION_YAW_RELIABLE. */
    int usable;
    float yaw_min, yaw_max;
    /* The largest yaw change in the asked direction (negative when the
     * head only turned the other way), its frames, and the planar
     * residual between them; residual_max is over every usable pair. */
    float turn;
    int turn_from, turn_to;
    float residual, residual_max;
    /* turned: turn >= VISION_TURN_MIN; planar: residual <
     * VISION_PLANAR_MAX; live: at least two usable frames, turned and
     * not planar. Identity is the caller's: compare each frame's
     * embedding with the enrolled one. */
    int turned, planar, live;
    uint32_t us_total;
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

/* Analyses a burst of n JPEGs (frames[i] of lens[i] bytes, the caller's)
 * taken while the learner followed action (VISION_ACTION_*), frame by
 * frame as vision_analyze() would, and judges the motion. Per-frame
 * failures (a corrupt frame, no face) are in out->frame[i].status and
 * out->found[i]; the return is out->status: VISION_OK once every frame
 * was looked at, VISION_ERR when the library failed. With action NONE
 * the motion fields stay zero. About n times the cost of one image. */
int vision_analyze_burst(struct vision_worker *worker,
                         const uint8_t *const *frames, const size_t *lens,
                         int n, int action, struct vision_burst *out);

/* Judges the motion of an analysed burst again as if action had been
 * asked (calibration and tests; the frames are not looked at again). */
void vision_burst_judge(struct vision_burst *burst, int action);

/* The yaw of five landmarks laid out as vision_result.landmarks; 0 when
 * the eyes coincide. */
float vision_yaw(const float landmarks[10]);

/* The planar residual (see VISION_PLANAR_MAX) of the nose from landmarks
 * a to landmarks b; -1 when the outer points are degenerate. */
float vision_planar_residual(const float a[10], const float b[10]);

/* "too_dark", "low_contrast", "blurry", "face_too_small", "poor_image"
 * for a VISION_QUALITY_* code; "" for OK. */
const char *vision_quality_hint(int quality);

/* Whether the engine has a BRISQUE model (the check is on). */
int vision_brisque(const struct vision_engine *engine);

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

/* For tools and tests, never for untrusted input: what vision_edit()
 * does to an image, in this order. Zero in a field leaves that step out. */
struct vision_edit {
    double scale;               /* resize by this factor */
    int pad;                    /* a mid-grey border this many pixels wide */
    int mirror;                 /* flip left-right */
    /* The perspective warp taking the image's corners (top left, top
     * right, bottom right, bottom left) to corners (x, y pairs, pixels),
     * into an image of the same size, mid-grey outside. */
    int warp;
    double corners[8];
    double gain;                /* every pixel value times this */
    double contrast;            /* deviations from the mean grey times this */
    double blur_sigma;          /* Gaussian blur */
    /* Gaussian noise of this standard deviation (grey levels) added to
     * every pixel after the rest, from noise_seed: a live sensor's. */
    double noise_sigma;
    uint64_t noise_seed;
    int quality;                /* of the JPEG written; 0 means 90 */
};

/* For tools and tests, never for untrusted input: decodes an image in any
 * format OpenCV reads, edits it as edit says and encodes it as a JPEG.
 * On success *out is a malloc'd buffer the caller frees with free(). */
int vision_edit(const uint8_t *data, size_t len,
                const struct vision_edit *edit, uint8_t **out,
                size_t *outlen, char *err, size_t errlen);

/* For fuzzing: the steps of vision_analyze() that read the untrusted
 * bytes, without any network: the header guard, the reduced-scale decode,
 * the resize for detection, the replay signature and the measures of a
 * frame without a face. A decoder holds one libjpeg-turbo handle, reused
 * from image to image as a worker's is (a failure replaces it), and
 * max_pixels (0: the default). Returns as vision_analyze(), with faces 0. */
struct vision_decoder;
struct vision_decoder *vision_decoder_new(int64_t max_pixels);
int vision_decode(struct vision_decoder *d, const uint8_t *jpeg, size_t len,
                  struct vision_result *out);
void vision_decoder_free(struct vision_decoder *d);

#ifdef __cplusplus
}
#endif

#endif
