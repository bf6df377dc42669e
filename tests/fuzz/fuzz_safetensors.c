/* fuzz_safetensors.c - libFuzzer harness for the safetensors reader (src/safetensors.h).
 *
 * The input is a whole file, opened strictly and with CCOE_ST_ALLOW_UNCHECKED; an opened file
 * is then read through every accessor (names, shapes, data, metadata). When the input spells
 * the whole-file checksum field, a copy with the right checksum is opened too, so mutations
 * get past the CRC into the code behind it. The file lives in a memfd (no disk I/O).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <zlib.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int memfd = -1;
static char memfd_path[64];

static void put(const uint8_t *data, size_t size)
{
    if (memfd < 0) {
        memfd = memfd_create("ccoe-fuzz-st", 0);
        if (memfd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(memfd_path, sizeof memfd_path, "/proc/self/fd/%d", memfd);
    }
    if (ftruncate(memfd, 0) != 0 || (size && pwrite(memfd, data, size, 0) != (ssize_t)size)) {
        perror("memfd write");
        abort();
    }
}

/* Touches everything an open file hands out; a bad pointer or length shows up under ASan. */
static void walk(const ccoe_st_file *f)
{
    volatile float sink = 0;
    size_t n = ccoe_st_count(f);
    for (size_t i = 0; i <= n; i++) {
        const char *name = ccoe_st_name(f, i);
        if (!name)
            continue;
        int ndim = 0;
        int64_t shape[CCOE_ST_MAX_DIMS] = {0};
        const float *d = ccoe_st_find(f, name, &ndim, shape);
        if (!d || ndim < 0 || ndim > CCOE_ST_MAX_DIMS)
            abort(); /* a listed tensor must be found, with a sane rank */
        int64_t numel = 1;
        for (int k = 0; k < ndim; k++)
            numel *= shape[k];
        if (numel > 0) {
            sink += d[0] + d[numel - 1];
            if (numel <= (1 << 16)) {
                float *copy = malloc((size_t)numel * sizeof *copy);
                ccoe_error err;
                if (copy && ccoe_st_read_into(f, name, copy, ndim, shape, &err) != CCOE_OK)
                    abort(); /* the shape it reported must be the shape it accepts */
                free(copy);
            }
        }
    }
    ccoe_st_find(f, "no such tensor", NULL, NULL);
    size_t nm = ccoe_st_meta_count(f);
    for (size_t i = 0; i <= nm; i++) {
        const char *k = ccoe_st_meta_key(f, i);
        if (k && !ccoe_st_meta(f, k))
            abort(); /* a listed key must have a value */
        if (k)
            (void)ccoe_st_is_checksum_key(k);
    }
    (void)ccoe_st_checked(f);
    (void)sink;
}

static void open_all(void)
{
    static const unsigned flags[] = {0, CCOE_ST_ALLOW_UNCHECKED};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        ccoe_st_file *f = NULL;
        ccoe_error err;
        if (ccoe_st_open_flags(memfd_path, flags[i], &f, &err) == CCOE_OK) {
            walk(f);
            ccoe_st_close(f);
        } else if (f || !err.msg[0]) {
            abort(); /* a failure returns no file and says why */
        }
    }
}

/* If data spells "ccoe.file_crc32":"XXXXXXXX" (as the writer does), a copy with the CRC the
 * reader expects: the file's CRC-32 with those 8 digits read as '0'. NULL otherwise. */
static uint8_t *with_crc(const uint8_t *data, size_t size)
{
    static const char field[] = "\"ccoe.file_crc32\":\"";
    const size_t flen = sizeof field - 1;
    const uint8_t *q = size >= 8 ? memmem(data + 8, size - 8, field, flen) : NULL;
    if (!q || (size_t)(q - data) + flen + 8 > size)
        return NULL;
    uint8_t *copy = malloc(size);
    if (!copy)
        abort();
    memcpy(copy, data, size);
    uint8_t *digits = copy + (q - data) + flen;
    memset(digits, '0', 8);
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, copy, (uInt)size);
    char hex[9];
    snprintf(hex, sizeof hex, "%08lx", crc & 0xffffffffUL);
    memcpy(digits, hex, 8);
    return copy;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > ((size_t)1 << 30))
        return 0;
    put(data, size);
    open_all();
    uint8_t *fixed = with_crc(data, size);
    if (fixed && memcmp(fixed, data, size) != 0) {
        put(fixed, size);
        open_all();
    }
    free(fixed);
    return 0;
}
