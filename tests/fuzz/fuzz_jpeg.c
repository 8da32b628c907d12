/* libFuzzer target: a snapshot's or an enrolment's JPEG bytes through
 * the steps of vision_analyze() that read them: the header guard (magic,
 * dimensions, pixel count), the reduced-scale libjpeg-turbo decode, the
 * resize for the detector, the replay signature and the no-face quality
 * measures. The networks are not loaded: what they see is a resized BGR
 * image the decoder made, never the bytes. One decoder serves every
 * input, as one worker serves every snapshot, so a handle left broken by
 * a bad JPEG shows up on the next one. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vision/vision.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct vision_decoder *dec;
    static uint8_t zero_sig[VISION_SIG_BYTES];
    static int verbose = -1;
    struct vision_result *r;

    if (dec == NULL && (dec = vision_decoder_new(0)) == NULL)
        abort();
    r = malloc(sizeof(*r));
    if (r == NULL)
        return 0;
    if (verbose < 0)
        verbose = getenv("FUZZ_JPEG_VERBOSE") != NULL;
    vision_decode(dec, data, size, r);
    /* FUZZ_JPEG_VERBOSE=1: what became of each input, to check seeds. */
    if (verbose)
        fprintf(stderr, "fuzz_jpeg: status=%d %dx%d brightness=%.1f %s\n",
                r->status, r->width, r->height, r->brightness, r->error);
    if (r->status == VISION_OK) {
        if (r->width <= 0 || r->height <= 0)
            abort();    /* decoded, yet no size: the guard was skipped */
        vision_signature_distance(r->signature, zero_sig);
    } else if (r->status == VISION_ERR) {
        /* The library itself failed (out of memory, an exception). */
        abort();
    }
    free(r);
    return 0;
}
