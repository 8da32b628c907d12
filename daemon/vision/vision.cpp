/* The OpenCV side of vision.h: JPEG header checks and scaled decoding with
 * libturbojpeg, YuNet (or cascade) detection, five-point alignment, the
 * embedding network, the quality gate (with BRISQUE), the replay signature
 * and the head motion of liveness bursts. This is the only file that
 * includes OpenCV, and every function exported to C catches every
 * exception: nothing unwinds into the C callers. */

#include "vision.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <openssl/evp.h>
#include <turbojpeg.h>

#include <opencv2/core.hpp>
#include <opencv2/dnn.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/objdetect.hpp>
#include <opencv2/quality.hpp>

/* ------------------------------------------------------------------------
 * Models and constants
 * --------------------------------------------------------------------- */

enum model_kind { MODEL_YUNET, MODEL_SFACE, MODEL_FR512 };

struct known_model {
    const char *file;
    enum model_kind kind;
    const char *sha256;
};

/* Checksums from shared/models/SOURCES.md; recognizers in order of
 * preference. */
static const struct known_model known_models[] = {
    {"face_detection_yunet_2022mar.onnx", MODEL_YUNET,
     "50ef07f702a31741ca46a4c0d947773b64143b9362780237bf0d427d6c79bab7"},
    {"face_recognition_sface_2021dec.onnx", MODEL_SFACE,
     "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79"},
    {"face_recognition_sface_2021dec_int8.onnx", MODEL_SFACE,
     "2b0e941e6f16cc048c20aee0c8e31f569118f65d702914540f7bfdc14048d78a"},
    {"fr_feature.onnx", MODEL_FR512,
     "87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581"},
    {"faceplugin_fr_feature.onnx", MODEL_FR512,
     "87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581"},
};

/* BRISQUE's model trained on LIVE-R2, as opencv-data ships it (OpenCV
 * contrib's samples), looked up in models_dir first. */
#define BRISQUE_MODEL "brisque_model_live.yml"
#define BRISQUE_RANGE "brisque_range_live.yml"
#define BRISQUE_SYSTEM_DIR "/usr/share/opencv4/quality"
static const char brisque_model_sha256[] =
    "4c44c7eec9e5139830c0bb0e4a044c9cd351ba5bbc9e3798beca3243e2782ff4";
static const char brisque_range_sha256[] =
    "a18427f4f7ad087524bd0d63389649a3899b51ca6d44a4d5f8d8171f1f914a9c";

/* Cascades of Debian's opencv-data, tried in order when YuNet is absent. */
static const char *const cascade_paths[] = {
    "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml",
    "/usr/share/opencv4/lbpcascades/lbpcascade_frontalface_improved.xml",
    "/usr/share/opencv4/lbpcascades/lbpcascade_frontalface.xml",
};

/* The ArcFace five-point template of a 112x112 crop, used by both
 * recognizers (FaceRecognizerSF::alignCrop holds the same points). */
static const float face_template[10] = {
    38.2946f, 51.6963f, 73.5318f, 51.5014f, 56.0252f,
    71.7366f, 41.5493f, 92.3655f, 70.7299f, 92.2041f,
};

/* Where the five points sit, as fractions of a box of Haar's
 * frontalface_default: the mean of YuNet's landmarks over the 148 lfw
 * photos where both found the face, made left-right symmetric. The
 * cascade gives only a box, so degraded mode aligns to these. */
static const float cascade_template[10] = {
    0.318f, 0.394f, 0.682f, 0.394f, 0.500f,
    0.613f, 0.343f, 0.784f, 0.657f, 0.784f,
};

/* YuNet keeps detections above YUNET_SCORE: every face of the calibration
 * photos scores at least 0.745 (the lowest are ORL's grey crops). Another
 * face beside the largest counts in vision_result.faces only from
 * YUNET_COUNT_SCORE, since a second face raises a flag: the hands the
 * video shows score up to 0.72, the background faces of lfw large enough
 * to count score from 0.84. */
#define YUNET_SCORE 0.7f
#define YUNET_COUNT_SCORE 0.8f
#define YUNET_NMS 0.3f
#define YUNET_TOP_K 50

/* Decoding stops reducing the scale once the longer side would fall
 * under this: enough for the 112x112 crop of a face a quarter as wide. */
#define DECODE_MIN_SIDE 640
#define SIDE_MIN 16
#define SIDE_MAX 16384

#define CROP 112
/* The face's centre in the aligned crop, where the gate measures light,
 * contrast and sharpness: the template's eyes and mouth corners with a
 * margin, clear of most background and of the black fill past the edge
 * of a photo cropped tight (ORL's). */
#define CENTRE_X 24
#define CENTRE_Y 32
#define CENTRE_W 64
#define CENTRE_H 72

/* Landmarks of a burst frame are taken again on an upright copy of the
 * face, eyes level and REFINE_IOD pixels apart in a REFINE_SIDE square,
 * REFINE_PASSES times (each pass levels by the previous one's eyes).
 * YuNet's points on a small or tilted face lean to a frontal layout; on
 * the upright copy they follow the face: over warped lfw photos the
 * median nose wander falls from 0.060 to 0.030 of the eye distance. */
#define REFINE_IOD 40.0
#define REFINE_SIDE 160
#define REFINE_PASSES 2
#define SIG_W 32
#define SIG_H 24
/* A normalised pixel v is stored as 128 + SIG_GAIN * v, clamped to 0..255:
 * a resolution of 1/40 of a standard deviation, clipping past 3.2. */
#define SIG_GAIN 40.0f

struct recognizer_info {
    enum model_kind kind;
    const char *prefix;
    int dim;
    int flip;                   /* flip-average unless told otherwise */
    /* The cosine thresholds, [flip][degraded]. */
    float threshold[2][2];
};

/* fr512: the cosine at which 0.1% of the 29,500 impostor pairs of lfw and
 * ORL together are accepted, rounded up (bench/README.md, "Vision"):
 * flip-averaged 0.3709 with YuNet and 0.3876 with the cascade; plain
 * 0.3708 and 0.3872. Flip-averaging is the default: at 0.38 it accepts
 * 97.78% of lfw's genuine pairs against 97.33% plain, the same 96.89% of
 * ORL's with fewer false accepts (0.132% against 0.142%), for a second
 * pass of the network (about 11 ms).
 * SFace: OpenCV's published cosine threshold, on the plain embedding as it
 * was published; not calibrated here, its file being unavailable. */
static const struct recognizer_info recognizers[] = {
    {MODEL_SFACE, "sface", 128, 0, {{0.363f, 0.363f}, {0.363f, 0.363f}}},
    {MODEL_FR512, "fr512", 512, 1, {{0.38f, 0.39f}, {0.38f, 0.39f}}},
};

struct vision_engine {
    std::string models_dir;
    std::string detector_path;      /* YuNet, or a cascade when degraded */
    std::string detector_name;
    const char *detector_sha256;    /* NULL for a cascade */
    bool degraded;
    const struct recognizer_info *rec;
    std::string rec_path;
    const char *rec_sha256;
    std::vector<uchar> rec_bytes;   /* verified weights, fr512 only */
    std::string model_id;
    bool flip;
    float threshold;
    double second_face_ratio;
    int64_t max_pixels;
    int64_t detect_pixels;
    /* The gate's thresholds, negative when off. */
    double min_face_px, min_brightness, min_contrast, min_sharpness;
    double max_brisque;
    std::string brisque_model, brisque_range;  /* empty: BRISQUE off */
};

struct vision_worker {
    const struct vision_engine *engine;
    cv::Ptr<cv::FaceDetectorYN> yunet;
    cv::CascadeClassifier cascade;
    cv::dnn::Net net;
    cv::Ptr<cv::FaceRecognizerSF> sface;
    cv::Ptr<cv::quality::QualityBRISQUE> brisque;
    tjhandle tj;
};

struct face {
    cv::Rect2f box;
    cv::Point2f lm[5];
    float score;
};

/* ------------------------------------------------------------------------
 * Small helpers
 * --------------------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint32_t since_us(int64_t t0)
{
    return (uint32_t)(now_us() - t0);
}

static bool file_exists(const std::string &path)
{
    struct stat st;

    return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

static bool read_file(const std::string &path, std::vector<uchar> &out)
{
    std::ifstream in(path, std::ios::binary);

    if (!in)
        return false;
    out.assign(std::istreambuf_iterator<char>(in),
               std::istreambuf_iterator<char>());
    return !in.bad();
}

static void sha256(const uchar *data, size_t len, uint8_t md[32])
{
    unsigned int mdlen = 32;

    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
}

static std::string to_hex(const uint8_t *md, size_t len)
{
    static const char digits[] = "0123456789abcdef";
    std::string s;

    for (size_t i = 0; i < len; i++) {
        s += digits[md[i] >> 4];
        s += digits[md[i] & 15];
    }
    return s;
}

/* Reads path and checks it against the known checksum. Fills bytes when
 * asked, so a network is built from exactly what was verified. */
static int verify_model(const std::string &path, const char *want,
                        std::vector<uchar> *bytes, char *err, size_t errlen)
{
    std::vector<uchar> buf;
    uint8_t md[32];

    if (!read_file(path, buf)) {
        set_err(err, errlen, "%s: %s", path.c_str(), strerror(errno));
        return VISION_ERR;
    }
    sha256(buf.data(), buf.size(), md);
    if (to_hex(md, 32) != want) {
        set_err(err, errlen, "%s: sha256 %.16s... is not the known %.16s...",
                path.c_str(), to_hex(md, 32).c_str(), want);
        return VISION_ERR;
    }
    if (bytes)
        bytes->swap(buf);
    return VISION_OK;
}

/* ------------------------------------------------------------------------
 * Engine
 * --------------------------------------------------------------------- */

static const struct known_model *find_model(const std::string &dir,
                                            enum model_kind kind)
{
    for (const auto &m : known_models) {
        bool wanted = kind == MODEL_YUNET ? m.kind == MODEL_YUNET
                                          : m.kind != MODEL_YUNET;

        if (wanted && file_exists(dir + "/" + m.file))
            return &m;
    }
    return NULL;
}

static int engine_detector(struct vision_engine *e, const std::string &dir,
                           char *err, size_t errlen)
{
    const struct known_model *m = find_model(dir, MODEL_YUNET);

    if (m) {
        e->detector_path = dir + "/" + m->file;
        e->detector_name = "yunet-2022mar";
        e->detector_sha256 = m->sha256;
        e->degraded = false;
        return verify_model(e->detector_path, m->sha256, NULL, err, errlen);
    }
    for (const char *p : cascade_paths) {
        if (!file_exists(p))
            continue;
        e->detector_path = p;
        e->detector_name = strrchr(p, '/') + 1;
        e->detector_sha256 = NULL;
        e->degraded = true;
        return VISION_OK;
    }
    set_err(err, errlen, "%s: no face_detection_yunet_2022mar.onnx and no "
            "cascade of opencv-data under /usr/share/opencv4", dir.c_str());
    return VISION_ERR;
}

static int engine_recognizer(struct vision_engine *e, const std::string &dir,
                             int embed_mode, char *err, size_t errlen)
{
    const struct known_model *m = find_model(dir, MODEL_FR512);
    char id[64];

    if (m == NULL) {
        set_err(err, errlen, "%s: no recognizer (face_recognition_sface_"
                "2021dec.onnx, fr_feature.onnx or faceplugin_fr_feature.onnx)",
                dir.c_str());
        return VISION_ERR;
    }
    e->rec_path = dir + "/" + m->file;
    e->rec_sha256 = m->sha256;
    for (const auto &r : recognizers)
        if (r.kind == m->kind)
            e->rec = &r;
    if (verify_model(e->rec_path, m->sha256, &e->rec_bytes, err, errlen) < 0)
        return VISION_ERR;
    if (m->kind == MODEL_SFACE)
        std::vector<uchar>().swap(e->rec_bytes);

    if (embed_mode == VISION_EMBED_DEFAULT)
        e->flip = e->rec->flip != 0;
    else
        e->flip = embed_mode == VISION_EMBED_FLIP;
    e->threshold = e->rec->threshold[e->flip][e->degraded];
    snprintf(id, sizeof(id), "%s%s-%.8s", e->rec->prefix, e->flip ? "f" : "",
             m->sha256);
    e->model_id = id;
    return VISION_OK;
}

/* BRISQUE's two files from dir, models_dir or opencv-data's folder,
 * verified like the networks; neither found leaves the check off. */
static int engine_brisque(struct vision_engine *e,
                          const struct vision_options *opt, char *err,
                          size_t errlen)
{
    std::vector<std::string> dirs;

    if (opt->max_brisque < 0)
        return VISION_OK;
    if (opt->brisque_dir != NULL && *opt->brisque_dir)
        dirs.push_back(opt->brisque_dir);
    else
        dirs = {opt->models_dir, BRISQUE_SYSTEM_DIR};
    for (const std::string &d : dirs) {
        std::string model = d + "/" BRISQUE_MODEL;
        std::string range = d + "/" BRISQUE_RANGE;

        if (!file_exists(model) || !file_exists(range))
            continue;
        if (verify_model(model, brisque_model_sha256, NULL, err, errlen) < 0 ||
            verify_model(range, brisque_range_sha256, NULL, err, errlen) < 0)
            return VISION_ERR;
        e->brisque_model = model;
        e->brisque_range = range;
        return VISION_OK;
    }
    return VISION_OK;
}

/* 0 means the default, negative turns the check off (-1). */
static double gate_value(double v, double def)
{
    return v < 0 ? -1 : v > 0 ? v : def;
}

static void engine_gate(struct vision_engine *e,
                        const struct vision_options *opt)
{
    e->min_face_px = gate_value(opt->min_face_px, VISION_DEFAULT_MIN_FACE_PX);
    e->min_brightness = gate_value(opt->min_brightness,
                                   VISION_DEFAULT_MIN_BRIGHTNESS);
    e->min_contrast = gate_value(opt->min_contrast,
                                 VISION_DEFAULT_MIN_CONTRAST);
    e->min_sharpness = gate_value(opt->min_sharpness,
                                  VISION_DEFAULT_MIN_SHARPNESS);
    e->max_brisque = gate_value(opt->max_brisque, VISION_DEFAULT_MAX_BRISQUE);
}

static struct vision_engine *engine_new(const struct vision_options *opt,
                                        char *err, size_t errlen)
{
    std::unique_ptr<vision_engine> e(new vision_engine());
    struct vision_worker *probe;

    if (opt == NULL || opt->models_dir == NULL || !*opt->models_dir) {
        set_err(err, errlen, "vision: no models_dir");
        return NULL;
    }
    e->second_face_ratio = opt->second_face_ratio > 0
        ? opt->second_face_ratio : VISION_DEFAULT_SECOND_FACE_RATIO;
    e->max_pixels = opt->max_pixels > 0 ? opt->max_pixels
                                        : VISION_DEFAULT_MAX_PIXELS;
    e->detect_pixels = opt->detect_pixels > 0 ? opt->detect_pixels
                                              : VISION_DEFAULT_DETECT_PIXELS;
    e->models_dir = opt->models_dir;
    engine_gate(e.get(), opt);
    if (engine_detector(e.get(), opt->models_dir, err, errlen) < 0 ||
        engine_recognizer(e.get(), opt->models_dir, opt->embed_mode, err,
                          errlen) < 0 ||
        engine_brisque(e.get(), opt, err, errlen) < 0)
        return NULL;

    /* Build the networks once, so a file OpenCV cannot load fails here
     * rather than in the first worker. */
    cv::setNumThreads(1);
    probe = vision_worker_new(e.get(), err, errlen);
    if (probe == NULL)
        return NULL;
    vision_worker_free(probe);
    return e.release();
}

/* ------------------------------------------------------------------------
 * Worker
 * --------------------------------------------------------------------- */

/* OpenCV 4.6 reads YuNet and SFace only from a path, so each worker checks
 * the file again just before: it is what was verified, not a later copy.
 * OpenCV throws when it cannot parse a network. */
static int worker_nets(struct vision_worker *w, char *err, size_t errlen)
{
    const struct vision_engine *e = w->engine;

    if (e->degraded) {
        if (!w->cascade.load(e->detector_path)) {
            set_err(err, errlen, "%s: cannot load cascade",
                    e->detector_path.c_str());
            return VISION_ERR;
        }
    } else {
        if (verify_model(e->detector_path, e->detector_sha256, NULL, err,
                         errlen) < 0)
            return VISION_ERR;
        w->yunet = cv::FaceDetectorYN::create(e->detector_path, "",
                                              cv::Size(320, 240), YUNET_SCORE,
                                              YUNET_NMS, YUNET_TOP_K);
    }

    if (e->rec->kind == MODEL_FR512) {
        w->net = cv::dnn::readNetFromONNX(e->rec_bytes);
    } else {
        if (verify_model(e->rec_path, e->rec_sha256, NULL, err, errlen) < 0)
            return VISION_ERR;
        w->sface = cv::FaceRecognizerSF::create(e->rec_path, "");
    }
    if (!e->brisque_model.empty()) {
        if (verify_model(e->brisque_model, brisque_model_sha256, NULL, err,
                         errlen) < 0 ||
            verify_model(e->brisque_range, brisque_range_sha256, NULL, err,
                         errlen) < 0)
            return VISION_ERR;
        w->brisque = cv::quality::QualityBRISQUE::create(e->brisque_model,
                                                         e->brisque_range);
    }
    if ((!e->degraded && w->yunet.empty()) ||
        (w->net.empty() && w->sface.empty())) {
        set_err(err, errlen, "%s: OpenCV could not load a network",
                e->models_dir.c_str());
        return VISION_ERR;
    }
    return VISION_OK;
}

static struct vision_worker *worker_new(const struct vision_engine *e,
                                        char *err, size_t errlen)
{
    std::unique_ptr<vision_worker, void (*)(vision_worker *)> w(
        new vision_worker(), vision_worker_free);

    w->engine = e;
    w->tj = tjInitDecompress();
    if (w->tj == NULL) {
        set_err(err, errlen, "tjInitDecompress: %s", tjGetErrorStr2(NULL));
        return NULL;
    }
    if (worker_nets(w.get(), err, errlen) < 0)
        return NULL;
    return w.release();
}

/* ------------------------------------------------------------------------
 * Decoding
 * --------------------------------------------------------------------- */

/* The smallest of 1/2, 1/4 and 1/8 that keeps the longer side at least
 * DECODE_MIN_SIDE, else 1/1. libjpeg-turbo has fast reduced transforms
 * for these three only: a 1920x1440 JPEG decodes in 7.2 ms at 1/1,
 * 4.5 ms at 1/2, but 5.9 ms at 3/8 and 15 ms at 3/4. */
static tjscalingfactor decode_scale(int width, int height)
{
    int longer = std::max(width, height);
    tjscalingfactor best = {1, 1};

    for (int denom = 2; denom <= 8; denom *= 2) {
        tjscalingfactor f = {1, denom};

        if (TJSCALED(longer, f) < DECODE_MIN_SIDE)
            break;
        best = f;
    }
    return best;
}

/* libjpeg-turbo 2.1 leaves its decoder mid-stream when a header or a
 * decode fails, and the next JPEG on the handle then fails too ("two SOI
 * markers"), so the handle is replaced after every failure. */
static int reset_decoder(struct vision_worker *w, struct vision_result *out)
{
    tjDestroy(w->tj);
    w->tj = tjInitDecompress();
    if (w->tj == NULL) {
        set_err(out->error, sizeof(out->error), "tjInitDecompress: %s",
                tjGetErrorStr2(NULL));
        return VISION_ERR;
    }
    return VISION_BAD_IMAGE;
}

/* Reads the header, refuses what must not be decoded, decodes to BGR. */
static int decode_jpeg(struct vision_worker *w, const uint8_t *jpeg,
                       size_t len, cv::Mat &bgr, struct vision_result *out)
{
    int width, height, subsamp, colorspace;
    int64_t t0 = now_us();
    tjscalingfactor s;

    if (len < 4 || jpeg[0] != 0xFF || jpeg[1] != 0xD8) {
        set_err(out->error, sizeof(out->error), "not a JPEG");
        return VISION_BAD_IMAGE;
    }
    if (tjDecompressHeader3(w->tj, jpeg, len, &width, &height, &subsamp,
                            &colorspace) < 0) {
        set_err(out->error, sizeof(out->error), "JPEG header: %s",
                tjGetErrorStr2(w->tj));
        return reset_decoder(w, out);
    }
    out->width = width;
    out->height = height;
    if (width < SIDE_MIN || height < SIDE_MIN || width > SIDE_MAX ||
        height > SIDE_MAX ||
        (int64_t)width * height > w->engine->max_pixels) {
        set_err(out->error, sizeof(out->error), "JPEG of %dx%d refused",
                width, height);
        return VISION_BAD_IMAGE;
    }
    sha256(jpeg, len, out->sha256);
    out->us_header = since_us(t0);

    /* Stop at the first warning (a truncated file decodes with grey fill
     * otherwise) and cap progressive scans, which can cost minutes. */
    t0 = now_us();
    s = decode_scale(width, height);
    bgr.create(TJSCALED(height, s), TJSCALED(width, s), CV_8UC3);
    if (tjDecompress2(w->tj, jpeg, len, bgr.data, bgr.cols, (int)bgr.step,
                      bgr.rows, TJPF_BGR,
                      TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS) < 0) {
        set_err(out->error, sizeof(out->error), "JPEG: %s",
                tjGetErrorStr2(w->tj));
        return reset_decoder(w, out);
    }
    out->us_decode = since_us(t0);
    return VISION_OK;
}

/* ------------------------------------------------------------------------
 * Detection
 * --------------------------------------------------------------------- */

/* YuNet 2022mar's pooling fails under about 62 pixels a side (OpenCV
 * throws: a 53x53 JPEG came back VISION_ERR); a smaller image is padded
 * at the bottom and right, which leaves the coordinates as they are. */
#define YUNET_MIN_SIDE 64

static void detect_yunet(struct vision_worker *w, const cv::Mat &small,
                         std::vector<struct face> &faces)
{
    cv::Mat rows, in = small;

    if (small.cols < YUNET_MIN_SIDE || small.rows < YUNET_MIN_SIDE)
        cv::copyMakeBorder(small, in, 0,
                           std::max(0, YUNET_MIN_SIDE - small.rows), 0,
                           std::max(0, YUNET_MIN_SIDE - small.cols),
                           cv::BORDER_CONSTANT, cv::Scalar(0, 0, 0));
    w->yunet->setInputSize(in.size());
    w->yunet->detect(in, rows);
    for (int i = 0; i < rows.rows; i++) {
        const float *r = rows.ptr<float>(i);
        struct face f;

        f.box = cv::Rect2f(r[0], r[1], r[2], r[3]);
        for (int k = 0; k < 5; k++)
            f.lm[k] = cv::Point2f(r[4 + 2 * k], r[5 + 2 * k]);
        f.score = r[14];
        faces.push_back(f);
    }
}

/* The cascade gives boxes only; the landmarks are placed where they sit on
 * average in such a box, which is enough to align an upright face. */
static void detect_cascade(struct vision_worker *w, const cv::Mat &small,
                           std::vector<struct face> &faces)
{
    std::vector<cv::Rect> rects;
    cv::Mat gray;

    cv::cvtColor(small, gray, cv::COLOR_BGR2GRAY);
    cv::equalizeHist(gray, gray);
    w->cascade.detectMultiScale(gray, rects, 1.1, 4, 0, cv::Size(24, 24));
    for (const cv::Rect &r : rects) {
        struct face f;

        f.box = cv::Rect2f(r);
        for (int k = 0; k < 5; k++)
            f.lm[k] = cv::Point2f(r.x + cascade_template[2 * k] * r.width,
                                  r.y + cascade_template[2 * k + 1] * r.height);
        f.score = 0;
        faces.push_back(f);
    }
}

/* Detects on a copy of about detect_pixels and maps the faces back to the
 * coordinates of bgr. Never enlarges. */
/* The copy the detector sees: at most detect_pixels, else bgr itself. */
static void detect_input(const struct vision_worker *w, const cv::Mat &bgr,
                         cv::Mat &small)
{
    double s = sqrt((double)w->engine->detect_pixels /
                    ((double)bgr.cols * bgr.rows));

    if (s < 1.0) {
        cv::Size size(std::max(1, (int)lround(bgr.cols * s)),
                      std::max(1, (int)lround(bgr.rows * s)));
        cv::resize(bgr, small, size, 0, 0, cv::INTER_AREA);
    } else {
        small = bgr;
    }
}

static void detect(struct vision_worker *w, const cv::Mat &bgr,
                   cv::Mat &small, std::vector<struct face> &faces)
{
    float sx, sy;

    detect_input(w, bgr, small);
    if (w->yunet)
        detect_yunet(w, small, faces);
    else
        detect_cascade(w, small, faces);

    sx = (float)bgr.cols / small.cols;
    sy = (float)bgr.rows / small.rows;
    for (struct face &f : faces) {
        f.box = cv::Rect2f(f.box.x * sx, f.box.y * sy, f.box.width * sx,
                           f.box.height * sy);
        for (cv::Point2f &p : f.lm)
            p = cv::Point2f(p.x * sx, p.y * sy);
    }
}

/* Index of the largest face, after counting it and the others at least
 * ratio of its area and scored at least YUNET_COUNT_SCORE. The cascade
 * gives no score; there every face large enough counts. */
static int count_faces(const std::vector<struct face> &faces, double ratio,
                       bool scored, int *counted)
{
    int best = -1;
    float largest = 0;

    for (size_t i = 0; i < faces.size(); i++) {
        if (faces[i].box.area() > largest) {
            largest = faces[i].box.area();
            best = (int)i;
        }
    }
    *counted = best >= 0;
    for (size_t i = 0; i < faces.size(); i++)
        if ((int)i != best && faces[i].box.area() >= ratio * largest &&
            (!scored || faces[i].score >= YUNET_COUNT_SCORE))
            (*counted)++;
    return best;
}

/* ------------------------------------------------------------------------
 * Alignment and embedding
 * --------------------------------------------------------------------- */

/* The least-squares similarity taking the five points onto the template
 * (Umeyama without reflection, as insightface aligns). Deterministic,
 * unlike cv::estimateAffinePartial2D, whose RANSAC draws from a shared RNG
 * and could align the same bytes differently from one call to the next. */
static cv::Mat similarity(const cv::Point2f src[5], const float dst[10])
{
    double sx = 0, sy = 0, dx = 0, dy = 0, num_a = 0, num_b = 0, den = 0;
    double a, b;

    for (int i = 0; i < 5; i++) {
        sx += src[i].x / 5;
        sy += src[i].y / 5;
        dx += dst[2 * i] / 5;
        dy += dst[2 * i + 1] / 5;
    }
    for (int i = 0; i < 5; i++) {
        double px = src[i].x - sx, py = src[i].y - sy;
        double qx = dst[2 * i] - dx, qy = dst[2 * i + 1] - dy;

        num_a += px * qx + py * qy;
        num_b += px * qy - py * qx;
        den += px * px + py * py;
    }
    if (den <= 0)
        den = 1;
    a = num_a / den;
    b = num_b / den;
    return (cv::Mat_<double>(2, 3) << a, -b, dx - (a * sx - b * sy),
            b, a, dy - (b * sx + a * sy));
}

static void l2_normalise(const cv::Mat &v, struct vision_result *out)
{
    double norm = cv::norm(v);

    out->dim = (int)v.total();
    for (int i = 0; i < out->dim; i++)
        out->embedding[i] = norm > 0 ? (float)(v.at<float>(i) / norm) : 0;
}

static void embed(struct vision_worker *w, const cv::Mat &crop,
                  struct vision_result *out)
{
    const struct vision_engine *e = w->engine;
    std::vector<cv::Mat> crops = {crop};
    cv::Mat feat, sum;

    if (e->flip) {
        crops.emplace_back();
        cv::flip(crop, crops.back(), 1);
    }
    if (e->rec->kind == MODEL_SFACE) {
        for (const cv::Mat &c : crops) {
            w->sface->feature(c, feat);
            feat = feat.reshape(1, 1) / std::max(cv::norm(feat), 1e-12);
            sum = sum.empty() ? feat.clone() : sum + feat;
        }
    } else {
        /* The 512-d model wants RGB and (x - 127) / 128. */
        cv::Mat blob = cv::dnn::blobFromImages(crops, 1.0 / 128,
                                               cv::Size(CROP, CROP),
                                               cv::Scalar(127, 127, 127),
                                               true, false);
        w->net.setInput(blob);
        feat = w->net.forward().reshape(1, (int)crops.size());
        for (int i = 0; i < feat.rows; i++) {
            cv::Mat row = feat.row(i) / std::max(cv::norm(feat.row(i)),
                                                 1e-12);
            sum = sum.empty() ? row.clone() : sum + row;
        }
    }
    l2_normalise(sum, out);
}

/* ------------------------------------------------------------------------
 * Quality and replay signature
 * --------------------------------------------------------------------- */

/* Mean grey, its standard deviation and the variance of the Laplacian
 * of a grey image, over the pixels of roi that mask (may be empty: all)
 * keeps. The Laplacian is taken over the whole image, so the edge of the
 * region is not an edge. Nothing kept: all zero. */
static void measure(const cv::Mat &gray, const cv::Rect &roi,
                    const cv::Mat &mask, struct vision_result *out)
{
    cv::Mat lap, m = mask.empty() ? cv::Mat() : mask(roi);
    cv::Scalar mean, sd;

    if (!m.empty() && cv::countNonZero(m) == 0) {
        out->brightness = out->contrast = out->sharpness = 0;
        return;
    }
    cv::meanStdDev(gray(roi), mean, sd, m);
    out->brightness = (float)mean[0];
    out->contrast = (float)sd[0];
    cv::Laplacian(gray, lap, CV_32F);
    cv::meanStdDev(lap(roi), mean, sd, m);
    out->sharpness = (float)(sd[0] * sd[0]);
}

/* The first check failed, in the order of VISION_QUALITY_*. */
static int gate(const struct vision_engine *e, const struct vision_result *r)
{
    if (e->min_face_px >= 0 && r->box[2] < e->min_face_px)
        return VISION_QUALITY_FACE_TOO_SMALL;
    if (e->min_brightness >= 0 && r->brightness < e->min_brightness)
        return VISION_QUALITY_TOO_DARK;
    if (e->min_contrast >= 0 && r->contrast < e->min_contrast)
        return VISION_QUALITY_LOW_CONTRAST;
    if (e->min_sharpness >= 0 && r->sharpness < e->min_sharpness)
        return VISION_QUALITY_BLURRY;
    if (e->max_brisque >= 0 && r->brisque >= 0 && r->brisque > e->max_brisque)
        return VISION_QUALITY_POOR_IMAGE;
    return VISION_QUALITY_OK;
}

/* The gate on the face aligned by warp (box must be filled). A face near
 * the edge of a photo cropped tight (ORL's) aligns partly onto fill, which
 * is no part of the face: the fill is the edge pixels repeated, and the
 * statistics leave it out (with a margin, so its border is no edge). */
static void quality_face(struct vision_worker *w, const cv::Mat &bgr,
                         const cv::Mat &warp, struct vision_result *out)
{
    int64_t t0 = now_us(), t1;
    cv::Mat crop, gray, inside;

    cv::warpAffine(bgr, crop, warp, cv::Size(CROP, CROP), cv::INTER_LINEAR,
                   cv::BORDER_REPLICATE);
    cv::cvtColor(crop, gray, cv::COLOR_BGR2GRAY);
    cv::warpAffine(cv::Mat(bgr.size(), CV_8U, cv::Scalar(255)), inside, warp,
                   cv::Size(CROP, CROP), cv::INTER_NEAREST,
                   cv::BORDER_CONSTANT, cv::Scalar(0));
    cv::erode(inside, inside, cv::Mat(), cv::Point(-1, -1), 2);
    measure(gray, cv::Rect(CENTRE_X, CENTRE_Y, CENTRE_W, CENTRE_H), inside,
            out);
    out->brisque = -1;
    if (w->brisque) {
        t1 = now_us();
        out->brisque = (float)w->brisque->compute(gray)[0];
        out->us_brisque = since_us(t1);
    }
    out->quality = gate(w->engine, out);
    out->us_quality = since_us(t0);
}

/* A frame without a face: only darkness can be told apart from an empty
 * room, where a grey wall has no contrast and no edges either. */
static void quality_frame(struct vision_worker *w, const cv::Mat &bgr,
                          struct vision_result *out)
{
    const struct vision_engine *e = w->engine;
    int64_t t0 = now_us();
    cv::Mat gray;

    cv::cvtColor(bgr, gray, cv::COLOR_BGR2GRAY);
    measure(gray, cv::Rect(0, 0, gray.cols, gray.rows), cv::Mat(), out);
    out->brisque = -1;
    out->quality = e->min_brightness >= 0 && out->brightness < e->min_brightness
        ? VISION_QUALITY_TOO_DARK : VISION_QUALITY_OK;
    out->us_quality = since_us(t0);
}

/* The replay signature: a thumbnail of the whole frame, normalised to zero
 * mean and unit variance so that the small level shifts of re-encoding
 * leave it where it was. A face-aligned thumbnail was tried as well and
 * dropped: landmarks move by a pixel or two when the image is resized,
 * which moved it more than a live learner does. */
static void thumbnail(const cv::Mat &bgr, uint8_t sig[VISION_SIG_BYTES])
{
    cv::Mat gray, t;
    cv::Scalar mean, sd;

    cv::cvtColor(bgr, gray, cv::COLOR_BGR2GRAY);
    cv::resize(gray, t, cv::Size(SIG_W, SIG_H), 0, 0, cv::INTER_AREA);
    t.convertTo(t, CV_32F);
    cv::meanStdDev(t, mean, sd);
    for (int y = 0; y < SIG_H; y++) {
        for (int x = 0; x < SIG_W; x++) {
            double v = (t.at<float>(y, x) - mean[0]) / std::max(sd[0], 1.0);
            double q = lround(128 + SIG_GAIN * v);

            sig[y * SIG_W + x] = (uint8_t)std::min(255.0, std::max(0.0, q));
        }
    }
}

static double sig_rms(const uint8_t *a, const uint8_t *b, int n)
{
    double sum = 0;

    for (int i = 0; i < n; i++) {
        double d = ((double)a[i] - b[i]) / SIG_GAIN;

        sum += d * d;
    }
    return sqrt(sum / n);
}

/* ------------------------------------------------------------------------
 * Head pose and motion
 * --------------------------------------------------------------------- */

static cv::Point2f point(const float lm[10], int k)
{
    return cv::Point2f(lm[2 * k], lm[2 * k + 1]);
}

/* The nose tip's offset from the eyes' midpoint, along the axis from the
 * right eye to the left one, over their distance: positive towards the
 * learner's left. Measuring along the eye axis keeps a tilted head (roll)
 * out of it. */
static float yaw_of(const float lm[10])
{
    cv::Point2f re = point(lm, 0), le = point(lm, 1), nose = point(lm, 2);
    cv::Point2f axis = le - re, d = nose - (re + le) * 0.5f;
    double iod2 = axis.dot(axis);

    return iod2 > 1e-6 ? (float)(d.dot(axis) / iod2) : 0;
}

/* Where the homography of the outer points of a onto b leaves a's nose,
 * against b's nose, over the mean eye distance. */
static float residual_of(const float a[10], const float b[10])
{
    static const int outer[4] = {0, 1, 3, 4};
    cv::Point2f src[4], dst[4];
    std::vector<cv::Point2f> nose = {point(a, 2)}, moved;
    double iod = 0.5 * (cv::norm(point(a, 1) - point(a, 0)) +
                        cv::norm(point(b, 1) - point(b, 0)));
    cv::Mat h;

    for (int i = 0; i < 4; i++) {
        src[i] = point(a, outer[i]);
        dst[i] = point(b, outer[i]);
    }
    if (iod < 1e-3)
        return -1;
    h = cv::getPerspectiveTransform(src, dst, cv::DECOMP_SVD);
    if (h.empty() || !cv::checkRange(h))
        return -1;
    cv::perspectiveTransform(nose, moved, h);
    if (!cv::checkRange(moved))
        return -1;
    return (float)(cv::norm(moved[0] - point(b, 2)) / iod);
}

/* One pass of the refinement: the face levelled and scaled about the
 * middle of its outer points, YuNet on that square, the detection
 * nearest its centre mapped back into p. False when none is found. */
static bool refine_pass(struct vision_worker *w, const cv::Mat &bgr,
                        cv::Point2f p[5])
{
    cv::Point2f c = (p[0] + p[1] + p[3] + p[4]) * 0.25f, axis = p[1] - p[0];
    double iod = cv::norm(axis), best_d = 1e30;
    cv::Mat m, inv, crop, rows;
    int best = -1;

    if (iod < 2)
        return false;
    m = cv::getRotationMatrix2D(c, atan2(axis.y, axis.x) * 180 / CV_PI,
                                REFINE_IOD / iod);
    m.at<double>(0, 2) += REFINE_SIDE / 2.0 - c.x;
    m.at<double>(1, 2) += REFINE_SIDE / 2.0 - c.y;
    cv::warpAffine(bgr, crop, m, cv::Size(REFINE_SIDE, REFINE_SIDE),
                   cv::INTER_LINEAR, cv::BORDER_REPLICATE);
    w->yunet->setInputSize(crop.size());
    w->yunet->detect(crop, rows);
    for (int i = 0; i < rows.rows; i++) {
        const float *r = rows.ptr<float>(i);
        double dx = r[0] + r[2] / 2 - REFINE_SIDE / 2.0;
        double dy = r[1] + r[3] / 2 - REFINE_SIDE / 2.0;

        if (dx * dx + dy * dy < best_d) {
            best_d = dx * dx + dy * dy;
            best = i;
        }
    }
    if (best < 0)
        return false;
    cv::invertAffineTransform(m, inv);
    for (int k = 0; k < 5; k++) {
        const float *r = rows.ptr<float>(best);
        double x = r[4 + 2 * k], y = r[5 + 2 * k];

        p[k] = cv::Point2f(
            (float)(inv.at<double>(0, 0) * x + inv.at<double>(0, 1) * y +
                    inv.at<double>(0, 2)),
            (float)(inv.at<double>(1, 0) * x + inv.at<double>(1, 1) * y +
                    inv.at<double>(1, 2)));
    }
    return true;
}

/* Refines r's landmarks (image pixels) on bgr (decoded pixels) into lm;
 * keeps the detector's own where a pass finds nothing. */
static void refine_landmarks(struct vision_worker *w, const cv::Mat &bgr,
                             const struct vision_result *r, float lm[10])
{
    float fx = (float)r->width / bgr.cols, fy = (float)r->height / bgr.rows;
    cv::Point2f p[5], q[5];

    for (int k = 0; k < 5; k++)
        p[k] = cv::Point2f(r->landmarks[2 * k] / fx,
                           r->landmarks[2 * k + 1] / fy);
    for (int pass = 0; pass < REFINE_PASSES; pass++) {
        std::copy(p, p + 5, q);
        if (!refine_pass(w, bgr, q))
            break;
        std::copy(q, q + 5, p);
    }
    for (int k = 0; k < 5; k++) {
        lm[2 * k] = p[k].x * fx;
        lm[2 * k + 1] = p[k].y * fy;
    }
}

/* The turn in the asked direction over the usable frames, taken between
 * the pair of frames that shows it best, and the planar residuals. */
static void judge_motion(struct vision_burst *b)
{
    float sign = b->action == VISION_ACTION_TURN_LEFT ? 1.0f
               : b->action == VISION_ACTION_TURN_RIGHT ? -1.0f : 0.0f;
    bool usable[VISION_BURST_MAX];

    b->usable = 0;
    b->residual = b->residual_max = 0;
    b->yaw_min = 1e9f;
    b->yaw_max = -1e9f;
    for (int i = 0; i < b->n; i++) {
        usable[i] = b->found[i] && fabsf(b->yaw[i]) <= VISION_YAW_RELIABLE;
        if (!usable[i])
            continue;
        b->usable++;
        b->yaw_min = std::min(b->yaw_min, b->yaw[i]);
        b->yaw_max = std::max(b->yaw_max, b->yaw[i]);
    }
    if (b->usable == 0)
        b->yaw_min = b->yaw_max = 0;
    b->turn = -1e9f;
    b->turn_from = b->turn_to = -1;
    for (int i = 0; i < b->n; i++)
        for (int j = i + 1; j < b->n; j++) {
            float d, res;

            if (!usable[i] || !usable[j])
                continue;
            d = sign * (b->yaw[j] - b->yaw[i]);
            res = residual_of(b->points[i], b->points[j]);
            b->residual_max = std::max(b->residual_max, res);
            if (d > b->turn) {
                b->turn = d;
                b->turn_from = i;
                b->turn_to = j;
                b->residual = res;
            }
        }
    if (b->turn_from < 0 || sign == 0) {
        b->turn = 0;
        b->residual = 0;
    }
    b->turned = b->usable >= 2 && sign != 0 && b->turn >= VISION_TURN_MIN;
    b->planar = b->residual < VISION_PLANAR_MAX;
    b->live = b->turned && !b->planar;
}

/* ------------------------------------------------------------------------
 * The pipeline after decoding
 * --------------------------------------------------------------------- */

static void analyze_face(struct vision_worker *w, const cv::Mat &bgr,
                         const struct face &f, struct vision_result *out)
{
    cv::Mat crop, warp = similarity(f.lm, face_template);

    crop.create(CROP, CROP, CV_8UC3);
    cv::warpAffine(bgr, crop, warp, cv::Size(CROP, CROP), cv::INTER_LINEAR,
                   cv::BORDER_CONSTANT, cv::Scalar(0, 0, 0));
    embed(w, crop, out);
    quality_face(w, bgr, warp, out);
}

/* bgr is the decoded image; (fx, fy) take its pixels to the image's own. */
static void analyze_decoded(struct vision_worker *w, const cv::Mat &bgr,
                            struct vision_result *out)
{
    std::vector<struct face> faces;
    cv::Mat small;
    int64_t t0 = now_us();
    float fx = (float)out->width / bgr.cols, fy = (float)out->height / bgr.rows;
    int best;

    detect(w, bgr, small, faces);
    best = count_faces(faces, w->engine->second_face_ratio,
                       !w->engine->degraded, &out->faces);
    out->faces_raw = (int)faces.size();
    out->us_detect = since_us(t0);

    t0 = now_us();
    thumbnail(small, out->signature);
    if (best < 0) {
        quality_frame(w, small, out);
        out->us_embed = since_us(t0);
        return;
    }
    const struct face &f = faces[best];
    out->box[0] = f.box.x * fx;
    out->box[1] = f.box.y * fy;
    out->box[2] = f.box.width * fx;
    out->box[3] = f.box.height * fy;
    out->score = f.score;
    for (int k = 0; k < 5 && !w->engine->degraded; k++) {
        out->landmarks[2 * k] = f.lm[k].x * fx;
        out->landmarks[2 * k + 1] = f.lm[k].y * fy;
    }
    out->yaw = yaw_of(out->landmarks);
    analyze_face(w, bgr, f, out);
    out->us_embed = since_us(t0);
}

static void result_clear(struct vision_result *out)
{
    memset(out, 0, sizeof(*out));
    out->status = VISION_ERR;
}

/* Decodes into bgr, which the caller may keep looking at. */
static int analyze_into(struct vision_worker *w, const uint8_t *jpeg,
                        size_t len, cv::Mat &bgr, struct vision_result *out)
{
    out->status = decode_jpeg(w, jpeg, len, bgr, out);
    if (out->status != VISION_OK)
        return out->status;
    analyze_decoded(w, bgr, out);
    return out->status = VISION_OK;
}

static int analyze(struct vision_worker *w, const uint8_t *jpeg, size_t len,
                   struct vision_result *out)
{
    cv::Mat bgr;

    return analyze_into(w, jpeg, len, bgr, out);
}

/* A worker without networks: the untrusted-input steps of analyze() that
 * come before detection and after it when there is no face. */
struct vision_decoder {
    struct vision_engine engine;
    struct vision_worker worker;
};

static struct vision_decoder *decoder_new(int64_t max_pixels)
{
    std::unique_ptr<vision_decoder> d(new vision_decoder());
    struct vision_options opt;

    memset(&opt, 0, sizeof(opt));
    d->engine.max_pixels = max_pixels > 0 ? max_pixels
                                          : VISION_DEFAULT_MAX_PIXELS;
    d->engine.detect_pixels = VISION_DEFAULT_DETECT_PIXELS;
    engine_gate(&d->engine, &opt);
    d->worker.engine = &d->engine;
    d->worker.tj = tjInitDecompress();
    if (d->worker.tj == NULL)
        return NULL;
    return d.release();
}

static int decode(struct vision_decoder *d, const uint8_t *jpeg, size_t len,
                  struct vision_result *out)
{
    cv::Mat bgr, small;

    out->status = decode_jpeg(&d->worker, jpeg, len, bgr, out);
    if (out->status != VISION_OK)
        return out->status;
    detect_input(&d->worker, bgr, small);
    thumbnail(small, out->signature);
    quality_frame(&d->worker, small, out);
    return out->status = VISION_OK;
}

static int analyze_burst(struct vision_worker *w,
                         const uint8_t *const *frames, const size_t *lens,
                         int n, int action, struct vision_burst *out)
{
    int64_t t0 = now_us();

    out->given = n;
    out->n = std::max(0, std::min(n, VISION_BURST_MAX));
    out->action = action;
    for (int i = 0; i < out->n; i++) {
        struct vision_result *r = &out->frame[i];
        cv::Mat bgr;

        result_clear(r);
        if (analyze_into(w, frames[i], lens[i], bgr, r) != VISION_OK ||
            r->faces == 0 || w->engine->degraded)
            continue;
        refine_landmarks(w, bgr, r, out->points[i]);
        out->yaw[i] = yaw_of(out->points[i]);
        out->found[i] = 1;
    }
    judge_motion(out);
    out->us_total = since_us(t0);
    return out->status = VISION_OK;
}

static int analyze_file(struct vision_worker *w, const char *path,
                        struct vision_result *out)
{
    std::vector<uchar> buf;
    cv::Mat bgr;

    if (!read_file(path, buf)) {
        set_err(out->error, sizeof(out->error), "%s: %s", path,
                strerror(errno));
        return out->status = VISION_ERR;
    }
    if (buf.size() >= 2 && buf[0] == 0xFF && buf[1] == 0xD8)
        return analyze(w, buf.data(), buf.size(), out);

    bgr = cv::imdecode(buf, cv::IMREAD_COLOR);
    if (bgr.empty() || bgr.cols < SIDE_MIN || bgr.rows < SIDE_MIN) {
        set_err(out->error, sizeof(out->error), "%s: not an image", path);
        return out->status = VISION_BAD_IMAGE;
    }
    out->width = bgr.cols;
    out->height = bgr.rows;
    sha256(buf.data(), buf.size(), out->sha256);
    analyze_decoded(w, bgr, out);
    return out->status = VISION_OK;
}

static int transcode(const uint8_t *data, size_t len, double scale,
                     int quality, uint8_t **out, size_t *outlen, char *err,
                     size_t errlen)
{
    cv::Mat img = cv::imdecode(cv::Mat(1, (int)len, CV_8U, (void *)data),
                               cv::IMREAD_COLOR);
    std::vector<uchar> jpg;

    if (img.empty()) {
        set_err(err, errlen, "transcode: not an image");
        return VISION_BAD_IMAGE;
    }
    if (scale != 1.0) {
        cv::Size size(std::max(1, (int)lround(img.cols * scale)),
                      std::max(1, (int)lround(img.rows * scale)));
        cv::resize(img, img, size, 0, 0,
                   scale < 1 ? cv::INTER_AREA : cv::INTER_LINEAR);
    }
    cv::imencode(".jpg", img, jpg, {cv::IMWRITE_JPEG_QUALITY, quality});
    *out = (uint8_t *)malloc(jpg.size());
    if (*out == NULL) {
        set_err(err, errlen, "transcode: out of memory");
        return VISION_ERR;
    }
    memcpy(*out, jpg.data(), jpg.size());
    *outlen = jpg.size();
    return VISION_OK;
}

static void edit_image(cv::Mat &img, const struct vision_edit *e)
{
    const cv::Scalar grey(128, 128, 128);

    if (e->scale > 0 && e->scale != 1.0) {
        cv::Size size(std::max(1, (int)lround(img.cols * e->scale)),
                      std::max(1, (int)lround(img.rows * e->scale)));
        cv::resize(img, img, size, 0, 0,
                   e->scale < 1 ? cv::INTER_AREA : cv::INTER_LINEAR);
    }
    if (e->pad > 0)
        cv::copyMakeBorder(img, img, e->pad, e->pad, e->pad, e->pad,
                           cv::BORDER_CONSTANT, grey);
    if (e->mirror)
        cv::flip(img, img, 1);
    if (e->warp) {
        float w = (float)img.cols, h = (float)img.rows;
        cv::Point2f src[4] = {{0, 0}, {w, 0}, {w, h}, {0, h}}, dst[4];

        for (int k = 0; k < 4; k++)
            dst[k] = cv::Point2f((float)e->corners[2 * k],
                                 (float)e->corners[2 * k + 1]);
        cv::warpPerspective(img, img, cv::getPerspectiveTransform(src, dst),
                            img.size(), cv::INTER_LINEAR,
                            cv::BORDER_CONSTANT, grey);
    }
    if (e->gain > 0)
        img.convertTo(img, -1, e->gain, 0);
    if (e->contrast > 0) {
        cv::Mat gray;

        cv::cvtColor(img, gray, cv::COLOR_BGR2GRAY);
        img.convertTo(img, -1, e->contrast,
                      cv::mean(gray)[0] * (1 - e->contrast));
    }
    if (e->blur_sigma > 0)
        cv::GaussianBlur(img, img, cv::Size(0, 0), e->blur_sigma);
    if (e->noise_sigma > 0) {
        cv::RNG rng(e->noise_seed);
        cv::Mat noise(img.size(), CV_32FC3), f;

        rng.fill(noise, cv::RNG::NORMAL, 0, e->noise_sigma);
        img.convertTo(f, CV_32FC3);
        f += noise;
        f.convertTo(img, CV_8UC3);
    }
}

static int edit(const uint8_t *data, size_t len, const struct vision_edit *e,
                uint8_t **out, size_t *outlen, char *err, size_t errlen)
{
    cv::Mat img = cv::imdecode(cv::Mat(1, (int)len, CV_8U, (void *)data),
                               cv::IMREAD_COLOR);
    std::vector<uchar> jpg;

    if (img.empty()) {
        set_err(err, errlen, "edit: not an image");
        return VISION_BAD_IMAGE;
    }
    edit_image(img, e);
    cv::imencode(".jpg", img, jpg,
                 {cv::IMWRITE_JPEG_QUALITY, e->quality > 0 ? e->quality : 90});
    *out = (uint8_t *)malloc(jpg.size());
    if (*out == NULL) {
        set_err(err, errlen, "edit: out of memory");
        return VISION_ERR;
    }
    memcpy(*out, jpg.data(), jpg.size());
    *outlen = jpg.size();
    return VISION_OK;
}

/* ------------------------------------------------------------------------
 * The C interface: every entry point catches everything
 * --------------------------------------------------------------------- */

#define CATCH_ALL(err, errlen, fn, ret)                                    \
    catch (const std::exception &ex) {                                     \
        set_err(err, errlen, "%s: %s", fn, ex.what());                     \
        return ret;                                                        \
    } catch (...) {                                                        \
        set_err(err, errlen, "%s: unknown exception", fn);                 \
        return ret;                                                        \
    }

extern "C" {

struct vision_engine *vision_engine_new(const struct vision_options *opt,
                                        char *err, size_t errlen)
{
    try {
        return engine_new(opt, err, errlen);
    }
    CATCH_ALL(err, errlen, "vision_engine_new", NULL)
}

void vision_engine_free(struct vision_engine *engine)
{
    delete engine;
}

const char *vision_model_id(const struct vision_engine *engine)
{
    return engine->model_id.c_str();
}

int vision_embedding_dim(const struct vision_engine *engine)
{
    return engine->rec->dim;
}

float vision_default_threshold(const struct vision_engine *engine)
{
    return engine->threshold;
}

int vision_degraded(const struct vision_engine *engine)
{
    return engine->degraded;
}

const char *vision_detector_name(const struct vision_engine *engine)
{
    return engine->detector_name.c_str();
}

struct vision_worker *vision_worker_new(const struct vision_engine *engine,
                                        char *err, size_t errlen)
{
    try {
        return worker_new(engine, err, errlen);
    }
    CATCH_ALL(err, errlen, "vision_worker_new", NULL)
}

void vision_worker_free(struct vision_worker *worker)
{
    if (worker == NULL)
        return;
    if (worker->tj)
        tjDestroy(worker->tj);
    try {
        delete worker;
    } catch (...) {
        /* Destructors of OpenCV objects do not throw; nothing to report. */
    }
}

int vision_analyze(struct vision_worker *worker, const uint8_t *jpeg,
                   size_t len, struct vision_result *out)
{
    result_clear(out);
    try {
        return analyze(worker, jpeg, len, out);
    }
    CATCH_ALL(out->error, sizeof(out->error), "vision_analyze",
              out->status = VISION_ERR)
}

int vision_analyze_file(struct vision_worker *worker, const char *path,
                        struct vision_result *out)
{
    result_clear(out);
    try {
        return analyze_file(worker, path, out);
    }
    CATCH_ALL(out->error, sizeof(out->error), "vision_analyze_file",
              out->status = VISION_ERR)
}

float vision_similarity(const float *a, const float *b, int dim)
{
    double dot = 0, na = 0, nb = 0;

    for (int i = 0; i < dim; i++) {
        dot += (double)a[i] * b[i];
        na += (double)a[i] * a[i];
        nb += (double)b[i] * b[i];
    }
    if (na <= 0 || nb <= 0)
        return 0;
    return (float)(dot / sqrt(na * nb));
}

int vision_analyze_burst(struct vision_worker *worker,
                         const uint8_t *const *frames, const size_t *lens,
                         int n, int action, struct vision_burst *out)
{
    memset(out, 0, sizeof(*out));
    out->status = VISION_ERR;
    try {
        return analyze_burst(worker, frames, lens, n, action, out);
    }
    CATCH_ALL(out->error, sizeof(out->error), "vision_analyze_burst",
              out->status = VISION_ERR)
}

void vision_burst_judge(struct vision_burst *burst, int action)
{
    burst->action = action;
    try {
        judge_motion(burst);
    } catch (...) {
        burst->turned = burst->live = 0;
    }
}

float vision_yaw(const float landmarks[10])
{
    return yaw_of(landmarks);
}

float vision_planar_residual(const float a[10], const float b[10])
{
    try {
        return residual_of(a, b);
    } catch (...) {
        return -1;
    }
}

const char *vision_quality_hint(int quality)
{
    switch (quality) {
    case VISION_QUALITY_FACE_TOO_SMALL: return "face_too_small";
    case VISION_QUALITY_TOO_DARK: return "too_dark";
    case VISION_QUALITY_LOW_CONTRAST: return "low_contrast";
    case VISION_QUALITY_BLURRY: return "blurry";
    case VISION_QUALITY_POOR_IMAGE: return "poor_image";
    default: return "";
    }
}

int vision_brisque(const struct vision_engine *engine)
{
    return !engine->brisque_model.empty();
}

float vision_signature_distance(const uint8_t *a, const uint8_t *b)
{
    return (float)sig_rms(a, b, SIG_W * SIG_H);
}

int vision_transcode(const uint8_t *data, size_t len, double scale,
                     int quality, uint8_t **out, size_t *outlen, char *err,
                     size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    try {
        return transcode(data, len, scale, quality, out, outlen, err, errlen);
    }
    CATCH_ALL(err, errlen, "vision_transcode", VISION_ERR)
}

struct vision_decoder *vision_decoder_new(int64_t max_pixels)
{
    try {
        return decoder_new(max_pixels);
    } catch (...) {
        return NULL;
    }
}

int vision_decode(struct vision_decoder *d, const uint8_t *jpeg, size_t len,
                  struct vision_result *out)
{
    result_clear(out);
    try {
        return decode(d, jpeg, len, out);
    }
    CATCH_ALL(out->error, sizeof(out->error), "vision_decode",
              out->status = VISION_ERR)
}

void vision_decoder_free(struct vision_decoder *d)
{
    if (d == NULL)
        return;
    if (d->worker.tj)
        tjDestroy(d->worker.tj);
    delete d;
}

int vision_edit(const uint8_t *data, size_t len,
                const struct vision_edit *e, uint8_t **out, size_t *outlen,
                char *err, size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    try {
        return edit(data, len, e, out, outlen, err, errlen);
    }
    CATCH_ALL(err, errlen, "vision_edit", VISION_ERR)
}

}
