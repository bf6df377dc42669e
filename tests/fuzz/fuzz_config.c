/* fuzz_config.c - libFuzzer harness for the config parser (src/config.h).
 *
 * The input is INI text applied on top of the defaults with ccoe_config_load_string, then
 * validated. A config that validates must survive the round trip the checkpoint relies on:
 * ccoe_config_to_ini's text loads back to a config that prints the same and hashes the same.
 * A load that fails must leave the config unchanged (the loaders are all-or-nothing).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz_common.h"
#include "session.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    char *text = fuzz_strndup(data, size);
    ccoe_config c, before;
    ccoe_error err;
    ccoe_config_defaults(&c);
    before = c;
    ccoe_status st = ccoe_config_load_string(&c, text, "fuzz", &err);
    if (st != CCOE_OK) {
        if (memcmp(&c, &before, sizeof c) != 0 || !err.msg[0])
            abort(); /* a failed load changed the config, or did not say why */
    } else if (ccoe_session_validate(&c, &err) == CCOE_OK) {
        char *ini = ccoe_config_to_ini(&c);
        if (!ini)
            abort();
        ccoe_config back;
        ccoe_config_defaults(&back);
        if (ccoe_config_load_string(&back, ini, "round trip", &err) != CCOE_OK) {
            fprintf(stderr, "round trip does not load: %s\n%s\n", err.msg, ini);
            abort();
        }
        char *again = ccoe_config_to_ini(&back);
        if (!again || strcmp(ini, again) != 0 || ccoe_config_hash(&back) != ccoe_config_hash(&c)) {
            fprintf(stderr, "round trip differs:\n%s\n---\n%s\n", ini, again ? again : "(null)");
            abort();
        }
        free(again);
        free(ini);
    }
    free(text);
    return 0;
}
