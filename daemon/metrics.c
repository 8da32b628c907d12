/* Storage for the counters and the close-code buckets. */
#include "metrics.h"

struct metrics metrics;

static const int close_codes[METRICS_CLOSE_OTHER] = {
    1000, 1001, 4400, 4401, 4403, 4408, 4409, 4413, 4429,
};

void metrics_count_close(int code)
{
    for (int i = 0; i < METRICS_CLOSE_OTHER; i++) {
        if (close_codes[i] == code) {
            metrics_add(closes[i], 1);
            return;
        }
    }
    metrics_add(closes[METRICS_CLOSE_OTHER], 1);
}

const char *metrics_close_label(int index)
{
    static const char *const labels[METRICS_CLOSES] = {
        "1000", "1001", "4400", "4401", "4403", "4408", "4409", "4413",
        "4429", "other",
    };
    return labels[index];
}
