/* rng.h - seeded random numbers.
 *
 * Two kinds: a sequential generator (xoshiro256**) whose whole state fits in a checkpoint, and a
 * counter-based hash (keyed by seed and up to three counters) whose value depends only on its
 * key, so that results do not depend on how work is split across threads or ranks.
 */
#ifndef CCOE_RNG_H
#define CCOE_RNG_H

#include <stdint.h>

typedef struct ccoe_rng {
    uint64_t s[4];
} ccoe_rng;

/* Seeds the generator deterministically from one 64-bit seed. */
void ccoe_rng_seed(ccoe_rng *r, uint64_t seed);
/* Next 64 random bits. */
uint64_t ccoe_rng_u64(ccoe_rng *r);
/* Uniform in [0, 1) with 24 bits of precision. */
float ccoe_rng_uniform(ccoe_rng *r);
/* Uniform integer in [0, n) (n > 0), unbiased. */
uint64_t ccoe_rng_below(ccoe_rng *r, uint64_t n);
/* Standard normal (Box-Muller). */
float ccoe_rng_normal(ccoe_rng *r);

/* Counter-based: 64 random bits as a pure function of (seed, a, b, c). */
uint64_t ccoe_hash4(uint64_t seed, uint64_t a, uint64_t b, uint64_t c);
/* Counter-based standard normal from (seed, a, b, c). */
float ccoe_hash_normal(uint64_t seed, uint64_t a, uint64_t b, uint64_t c);

/* Fisher-Yates shuffle of idx[0..n) with r. */
void ccoe_rng_shuffle(ccoe_rng *r, uint32_t *idx, uint64_t n);

#endif
