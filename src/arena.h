/* arena.h - one aligned block per kind of memory, carved into tensors.
 *
 * Sizes are computed from the config before the first step: a layout pass counts bytes
 * (ccoe_arena_init with a NULL block only counts), then one block is allocated and carved the
 * same way. Nothing is freed individually; there is no allocation inside the training step.
 */
#ifndef CCOE_ARENA_H
#define CCOE_ARENA_H

#include <stddef.h>

#include "status.h"

#define CCOE_ALIGN 64

typedef struct ccoe_arena {
    unsigned char *base; /* NULL while counting */
    size_t cap;          /* bytes in base */
    size_t used;         /* bytes carved so far (counting or real) */
} ccoe_arena;

/* Starts a counting pass: ccoe_arena_take returns NULL but advances used. */
void ccoe_arena_count(ccoe_arena *a);

/* Allocates one zeroed, CCOE_ALIGN-aligned block of bytes (rounded up) and resets used. */
ccoe_status ccoe_arena_alloc(ccoe_arena *a, size_t bytes, const char *what, ccoe_error *err);

/* Bytes this process can still get: MemAvailable + SwapFree, or less under a cgroup v2 memory
 * limit; -1 if unknown. ccoe_arena_alloc refuses large requests above it. */
double ccoe_memory_available(void);

/* Carves bytes (aligned to CCOE_ALIGN); returns NULL while counting. A real arena that runs out
 * is an internal error (the layout pass and the carve pass disagree): returns NULL and the caller
 * asserts. */
void *ccoe_arena_take(ccoe_arena *a, size_t bytes);

/* Convenience: carves n floats. */
float *ccoe_arena_floats(ccoe_arena *a, size_t n);

/* Frees the block (safe on a zeroed or counted arena). */
void ccoe_arena_free(ccoe_arena *a);

/* Rounds bytes up to CCOE_ALIGN. */
size_t ccoe_align_up(size_t bytes);

/* Allocates an aligned zeroed buffer outside any arena (setup only); NULL on failure. */
void *ccoe_aligned_calloc(size_t bytes);

#endif
