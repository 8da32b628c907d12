/* The OpenCV side of vision.h: JPEG header checks and scaled decoding with
 * libturbojpeg, YuNet (or cascade) detection, five-point alignment, the
 * embedding network, face quality and the replay signature. This is the
 * only file that includes OpenCV, and every function exported to C catches
 * every exception: nothing unwinds into the C callers. */

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
};

struct vision_worker {
    const struct vision_engine *engine;
    cv::Ptr<cv::FaceDetectorYN> yunet;
    cv::CascadeClassifier cascade;
    cv::dnn::Net net;
    cv::Ptr<cv::FaceRecognizerSF> sface;
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
    if (engine_detector(e.get(), opt->models_dir, err, errlen) < 0 ||
        engine_recognizer(e.get(), opt->models_dir, opt->embed_mode, err,
                          errlen) < 0)
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

static void detect_yunet(struct vision_worker *w, const cv::Mat &small,
                         std::vector<struct face> &faces)
{
    cv::Mat rows;

    w->yunet->setInputSize(small.size());
    w->yunet->detect(small, rows);
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
static void detect(struct vision_worker *w, const cv::Mat &bgr,
                   cv::Mat &small, std::vector<struct face> &faces)
{
    double s = sqrt((double)w->engine->detect_pixels /
                    ((double)bgr.cols * bgr.rows));
    float sx, sy;

    if (s < 1.0) {
        cv::Size size(std::max(1, (int)lround(bgr.cols * s)),
                      std::max(1, (int)lround(bgr.rows * s)));
        cv::resize(bgr, small, size, 0, 0, cv::INTER_AREA);
    } else {
        small = bgr;
    }
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

static void quality(const cv::Mat &bgr, struct vision_result *out)
{
    cv::Mat gray, lap;
    cv::Scalar mean, sd;

    cv::cvtColor(bgr, gray, cv::COLOR_BGR2GRAY);
    cv::meanStdDev(gray, mean, sd);
    out->brightness = (float)mean[0];
    out->contrast = (float)sd[0];
    cv::Laplacian(gray, lap, CV_32F);
    cv::meanStdDev(lap, mean, sd);
    out->sharpness = (float)(sd[0] * sd[0]);
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
 * The pipeline after decoding
 * --------------------------------------------------------------------- */

static void analyze_face(struct vision_worker *w, const cv::Mat &bgr,
                         const struct face &f, struct vision_result *out)
{
    cv::Mat crop;

    crop.create(CROP, CROP, CV_8UC3);
    cv::warpAffine(bgr, crop, similarity(f.lm, face_template),
                   cv::Size(CROP, CROP), cv::INTER_LINEAR,
                   cv::BORDER_CONSTANT, cv::Scalar(0, 0, 0));
    embed(w, crop, out);
    quality(crop, out);
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
        quality(small, out);
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
    analyze_face(w, bgr, f, out);
    out->us_embed = since_us(t0);
}

static void result_clear(struct vision_result *out)
{
    memset(out, 0, sizeof(*out));
    out->status = VISION_ERR;
}

static int analyze(struct vision_worker *w, const uint8_t *jpeg, size_t len,
                   struct vision_result *out)
{
    cv::Mat bgr;

    out->status = decode_jpeg(w, jpeg, len, bgr, out);
    if (out->status != VISION_OK)
        return out->status;
    analyze_decoded(w, bgr, out);
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

}
