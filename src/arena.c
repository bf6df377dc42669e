/* arena.c - aligned bump allocation for parameters, gradients, optimizer state, activations. */
#include "arena.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t ccoe_align_up(size_t bytes) { return (bytes + CCOE_ALIGN - 1) & ~(size_t)(CCOE_ALIGN - 1); }

void *ccoe_aligned_calloc(size_t bytes)
{
    void *p = NULL;
    size_t n = ccoe_align_up(bytes ? bytes : 1);
    if (posix_memalign(&p, CCOE_ALIGN, n) != 0)
        return NULL;
    memset(p, 0, n);
    return p;
}

void ccoe_arena_count(ccoe_arena *a)
{
    a->base = NULL;
    a->cap = 0;
    a->used = 0;
}

/* The "Key: N kB" value of /proc/meminfo in bytes, or -1. */
static double meminfo_bytes(const char *key)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    char line[256];
    double v = -1;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0 && line[n] == ':') {
            v = strtod(line + n + 1, NULL) * 1024.0;
            break;
        }
    fclose(f);
    return v;
}

/* One number from a cgroup v2 file ("max" and absent files: -1). */
static double cgroup_value(const char *file)
{
    FILE *f = fopen(file, "r");
    if (!f)
        return -1;
    char buf[64] = "";
    double v = -1;
    if (fgets(buf, sizeof buf, f) && strncmp(buf, "max", 3) != 0)
        v = strtod(buf, NULL);
    fclose(f);
    return v;
}

double ccoe_memory_available(void)
{
    double avail = meminfo_bytes("MemAvailable");
    double swap = meminfo_bytes("SwapFree");
    if (avail >= 0 && swap > 0)
        avail += swap;
    double limit = cgroup_value("/sys/fs/cgroup/memory.max");
    double used = cgroup_value("/sys/fs/cgroup/memory.current");
    if (limit > 0 && used >= 0 && (avail < 0 || limit - used < avail))
        avail = limit > used ? limit - used : 0;
    return avail;
}

ccoe_status ccoe_arena_alloc(ccoe_arena *a, size_t bytes, const char *what, ccoe_error *err)
{
    /* the buffer is zeroed at once, so memory the system cannot give would end in the OOM
     * killer rather than a failed allocation: check large requests first */
    if (bytes >= ((size_t)256 << 20)) {
        double avail = ccoe_memory_available();
        if (avail >= 0 && (double)bytes > avail)
            return ccoe_error_set(err, CCOE_ERR_NOMEM,
                                  "cannot allocate %.1f MiB for %s: only %.1f MiB of memory is "
                                  "available: reduce the model or batch size",
                                  (double)bytes / (1024.0 * 1024.0), what,
                                  avail / (1024.0 * 1024.0));
    }
    a->base = ccoe_aligned_calloc(bytes);
    if (!a->base)
        return ccoe_error_set(err, CCOE_ERR_NOMEM,
                              "cannot allocate %.1f MiB for %s: reduce the model or batch size",
                              (double)bytes / (1024.0 * 1024.0), what);
    a->cap = ccoe_align_up(bytes ? bytes : 1);
    a->used = 0;
    return CCOE_OK;
}

void *ccoe_arena_take(ccoe_arena *a, size_t bytes)
{
    size_t n = ccoe_align_up(bytes);
    if (!a->base) {
        a->used += n;
        return NULL;
    }
    if (a->used + n > a->cap)
        return NULL;
    void *p = a->base + a->used;
    a->used += n;
    return p;
}

float *ccoe_arena_floats(ccoe_arena *a, size_t n) { return ccoe_arena_take(a, n * sizeof(float)); }

void ccoe_arena_free(ccoe_arena *a)
{
    free(a->base);
    a->base = NULL;
    a->cap = 0;
    a->used = 0;
}
