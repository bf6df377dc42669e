/* arena.c - aligned bump allocation for parameters, gradients, optimizer state, activations. */
#include "arena.h"

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

ccoe_status ccoe_arena_alloc(ccoe_arena *a, size_t bytes, const char *what, ccoe_error *err)
{
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
