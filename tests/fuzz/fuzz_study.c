/* fuzz_study.c - libFuzzer harness for the study file parser (ccoe_study_check, src/study.h).
 *
 * The input is a study file, written to a scratch directory next to configs/default.ini (the
 * base the shipped study files name: `base = default.ini`) and checked: [study] keys, budget,
 * variants, every variant's overrides and the run list, without training or reading data
 * (CCOE_FUZZ_VERBOSE=1 prints why a check failed).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "study.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Copies the source tree's configs/default.ini (the base the shipped study files name) into
 * the scratch directory. */
static void copy_base(void)
{
    static const char src[] = CCOE_SOURCE_DIR "/configs/default.ini";
    FILE *f = fopen(src, "rb");
    char buf[65536];
    size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
    if (!f || ferror(f) || n == sizeof buf) {
        fprintf(stderr, "fuzz_study: cannot read %s\n", src);
        abort();
    }
    fclose(f);
    fuzz_write("default.ini", buf, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    static int ready;
    if (!ready) {
        copy_base();
        ready = 1;
    }
    fuzz_write("study.ini", data, size);
    char path[512];
    snprintf(path, sizeof path, "%s/study.ini", fuzz_dir());
    ccoe_error err;
    if (ccoe_study_check(path, NULL, &err) != CCOE_OK) {
        if (!err.msg[0])
            abort(); /* a failure says why */
        if (getenv("CCOE_FUZZ_VERBOSE"))
            fprintf(stderr, "fuzz_study: %s\n", err.msg);
    }
    return 0;
}
