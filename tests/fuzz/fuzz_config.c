/* libFuzzer target: the INI configuration parser. The input is the text
 * of a config file, read over the embedded defaults exactly as
 * config_load() reads a file; every unit parser and the SIGHUP policy
 * diff then see what came out. A config file is operator input, not a
 * learner's, but it is parsed before anything else runs and a crash there
 * takes the daemon down at start or on SIGHUP. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct config defaults;
    static int ready;
    struct config cfg;
    char err[CONFIG_ERRLEN], diff[1024];
    char *text = malloc(size + 1);
    int64_t ms;
    size_t bytes;

    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    if (!ready) {
        config_defaults(&defaults);
        ready = 1;
    }
    cfg = defaults;
    err[0] = '\0';
    if (config_load_string(&cfg, text, err, sizeof(err)) == CONFIG_OK)
        config_policy_diff(&defaults.policy, &cfg.policy, diff, sizeof(diff));
    /* The whole input as one value, as a key's right-hand side would be. */
    config_parse_duration(text, &ms);
    config_parse_size(text, &bytes);
    free(text);
    return 0;
}
